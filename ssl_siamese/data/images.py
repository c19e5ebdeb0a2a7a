"""Read image files of any mode and size as uint8 RGB tensors, the same way for training and for inference.

Every file goes through :func:`read_image`: the first frame is taken, EXIF rotation applied, 16-bit and
float images scaled to 8 bits (not clipped), CMYK/grayscale/palette converted to RGB, and transparent
pixels composited onto ``background`` (white by default, :data:`DEFAULT_BACKGROUND`) *before* any
resizing, so the colour hidden under transparent pixels (black in many icons) never shows. With ``size``
the image goes through :func:`resize_center_crop`, the one evaluation geometry of the library: shorter side
to ``size`` (bilinear, antialiased), centre square. The folder datasets (:func:`ssl_siamese.data.load_folder`),
the streamed evaluation images, the ``embed`` recipe and ``load_backbone``'s transform all use it, so a
model sees the same pixels in training and in use.

Example:
    >>> image = read_image("icon.png", size=64)  # doctest: +SKIP
    >>> image.shape, image.dtype
    (torch.Size([3, 64, 64]), torch.uint8)
    >>> files, skipped = list_image_files("photos/")  # doctest: +SKIP
    >>> batch = torch.stack(read_images(files, size=64))  # doctest: +SKIP
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Literal, Sequence, Union

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF
from torch import Tensor

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
DEFAULT_BACKGROUND = (255, 255, 255)
GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma
"""The colour transparent pixels are composited onto: white, as most viewers and web pages show them."""
PROGRESS_EVERY = 5000
"""``decode_files`` reports progress every this many files, for folders at least that large."""
DECODER_VERSION = 3
"""Bumped whenever the pixels :func:`read_image` returns change, so decoded-image caches are rebuilt."""

Background = Union[int, Sequence[int]]
PathLike = Union[str, os.PathLike]


class ImageReadError(ValueError):
    """A file that exists could not be decoded as an image; the message names the file and the reason."""


def list_image_files(root: PathLike) -> tuple[list[Path], list[Path]]:
    """``(image files, skipped files)`` under ``root``, recursively, each sorted by path.

    Image files are those with an extension in :data:`IMAGE_EXTENSIONS` (any case); every other file
    (an SVG, notes, ...) is returned as skipped. Hidden files and folders (name starting with ``.``, so also
    the ``._name.png`` AppleDouble files macOS leaves beside each file) are ignored altogether; symbolic
    links to folders are followed.
    """
    images, skipped = [], []
    for current, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                path = Path(current) / name
                (images if path.suffix.lower() in IMAGE_EXTENSIONS else skipped).append(path)
    return images, skipped


def resize_center_crop(images: Tensor, size: int) -> Tensor:
    """The evaluation geometry: shorter side to ``size`` (bilinear, antialiased), then the centre ``size x size``.

    ``images``: one image ``(C, H, W)`` or a batch ``(B, C, H, W)``, uint8 (rounded back to uint8, as the
    decoded training images are) or float. A ``size x size`` image comes back unchanged. It is torchvision's
    ``Resize(size)`` + ``CenterCrop(size)``; training's evaluation images (folders, streamed shards),
    ``read_image(path, size)`` and ``ssl_siamese.search.embeddings.Preprocess`` all go through this function.

    Example:
        >>> resize_center_crop(torch.zeros(3, 1080, 1920, dtype=torch.uint8), 64).shape
        torch.Size([3, 64, 64])
    """
    return TF.center_crop(TF.resize(images, size, antialias=True), [size, size])


def _background_rgb(background: Background) -> np.ndarray:
    values = [background] * 3 if isinstance(background, (int, np.integer)) else list(background)
    if len(values) != 3 or not all(isinstance(v, (int, np.integer)) and 0 <= v <= 255 for v in values):
        raise ValueError(f"background must be a grey level 0-255 or an (R, G, B) triple of 0-255, not {background!r}")
    return np.asarray(values, dtype=np.float32)


def _to_8bit(image: "PIL.Image.Image") -> "PIL.Image.Image":  # noqa: F821
    """16-bit ('I;16*'), 32-bit integer ('I') and float ('F') images -> 8-bit 'L', scaled to the range.

    'I;16*' is scaled by 255/65535. 'I' (often a 16-bit PNG) likewise when its maximum exceeds 255,
    else kept. 'F' is taken as [0, 1] when its maximum is <= 1, as [0, 255] when <= 255, else as 16-bit.
    """
    from PIL import Image

    values = np.asarray(image, dtype=np.float64)
    top = float(values.max()) if values.size else 0.0
    if image.mode.startswith("I;16") or (image.mode in ("I", "F") and top > 255):
        values = values * (255.0 / 65535.0)
    elif image.mode == "F" and top <= 1.0:
        values = values * 255.0
    return Image.fromarray(values.clip(0, 255).round().astype(np.uint8), mode="L")


def _has_transparency(image: "PIL.Image.Image") -> bool:  # noqa: F821
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


def read_image(path: PathLike, size: int | None = None, background: Background = DEFAULT_BACKGROUND) -> Tensor:
    """Decode one image file to a uint8 RGB tensor ``(3, H, W)``; with ``size``, ``(3, size, size)``.

    Args:
        path: an image file Pillow can read (PNG, JPEG, WebP, GIF, BMP, TIFF, ...), any mode and bit depth.
        size: None keeps the image's own size; an int applies :func:`resize_center_crop` (shorter side to
            ``size``, centre square) to the decoded image, so ``read_image(path, size)`` equals
            ``resize_center_crop(read_image(path), size)`` exactly.
        background: grey level or ``(R, G, B)`` that transparent pixels are composited onto (default white).

    Raises:
        FileNotFoundError: no file at ``path``.
        ImageReadError: the file is not a readable image (truncated, another format, an SVG, ...).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if size is not None and (not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 1):
        raise ValueError(f"size must be a positive int or None, not {size!r}")
    back = _background_rgb(background)
    if not path.is_file():
        raise FileNotFoundError(f"No image file at {path}" + (" (it is a folder)" if path.is_dir() else ""))
    if path.suffix.lower() in (".svg", ".svgz"):
        raise ImageReadError(f"Cannot read {path}: SVG is a vector format this library does not render; "
                             "convert it to PNG first (e.g. `rsvg-convert -w 256 file.svg -o file.png`).")
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            if image.mode in ("I", "F") or image.mode.startswith("I;16"):
                image = _to_8bit(image)
            if _has_transparency(image):
                rgba = np.asarray(image.convert("RGBA"), dtype=np.float32)
                alpha = rgba[..., 3:] / 255.0
                rgb = rgba[..., :3] * alpha + back * (1.0 - alpha)
                image = Image.fromarray(rgb.round().astype(np.uint8), mode="RGB")
            else:
                image = image.convert("RGB")
            array = np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageReadError(f"Cannot read {path} as an image: {error}") from error
    decoded = torch.from_numpy(array.transpose(2, 0, 1).copy())  # full size: JPEG draft mode would change pixels
    return decoded if size is None else resize_center_crop(decoded, size)


def read_images(paths: Iterable[PathLike], size: int | None = None, background: Background = DEFAULT_BACKGROUND,
                errors: Literal["raise", "none"] = "raise", num_threads: int | None = None,
                progress: Callable[[int, int], None] | None = None) -> list[Tensor | None]:
    """:func:`read_image` on each path, in a thread pool (Pillow releases the GIL while decoding).

    Returns one ``(3, H, W)`` uint8 tensor per path, in order; with ``size`` they are all
    ``(3, size, size)`` and ``torch.stack`` makes a batch. ``errors="raise"`` raises on the first file that
    cannot be read; ``errors="none"`` puts None in its place instead. ``progress(done, total)`` is called
    after each file.
    """
    if errors not in ("raise", "none"):
        raise ValueError(f"errors must be 'raise' or 'none', not {errors!r}")
    paths = list(paths)
    _background_rgb(background)  # a bad background is an error even for an empty list

    def one(path: PathLike) -> Tensor | None:
        try:
            return read_image(path, size, background)
        except (ImageReadError, FileNotFoundError):
            if errors == "raise":
                raise
            return None

    workers = num_threads or min(8, os.cpu_count() or 1)
    results: list[Tensor | None] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for done, image in enumerate(pool.map(one, paths), start=1):
            results.append(image)
            if progress is not None:
                progress(done, len(paths))
    return results


def unreadable_reasons(paths: Iterable[PathLike], size: int | None = None, limit: int = 3) -> list[str]:
    """Why the files among the first ``limit`` of ``paths`` cannot be read at ``size``: :func:`read_image`'s
    messages, which name the file. For errors about files that :func:`decode_files` (or
    ``read_images(errors="none")``) gave None for.

    Example:
        >>> unreadable_reasons(["cut.png"])  # doctest: +SKIP
        ["Cannot read cut.png as an image: cannot identify image file 'cut.png'"]
    """
    reasons = []
    for path in list(paths)[:limit]:
        try:
            read_image(path, size, DEFAULT_BACKGROUND)
        except (ImageReadError, FileNotFoundError) as error:
            reasons.append(str(error))
    return reasons


def decode_files(files: list[Path], size: int, num_threads: int | None = None) -> list[np.ndarray | None]:
    """Decode with :func:`read_images` to ``(3, size, size)`` uint8 arrays (None for an unreadable file).

    The folder datasets and the ``embed`` recipe decode through it; a folder of ``PROGRESS_EVERY`` files or
    more prints its progress to stderr.
    """

    def progress(done: int, total: int) -> None:
        if total >= PROGRESS_EVERY and (done % PROGRESS_EVERY == 0 or done == total):
            print(f"ssl_siamese: decoded {done}/{total} images", file=sys.stderr, flush=True)

    decoded = read_images(files, size, errors="none", num_threads=num_threads, progress=progress)
    return [None if image is None else image.numpy() for image in decoded]


def to_float_rgb(images: Tensor) -> Tensor:
    """Check a ``(B, 1|3, H, W)`` batch, scale uint8 to [0, 1] float32 and expand gray to 3 channels."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"Expected images of shape (B, C, H, W) with C in {{1, 3}}, got {tuple(images.shape)}.")
    images = images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def grayscale(images: Tensor) -> Tensor:
    """Luma of a ``(B, 3, H, W)`` batch as ``(B, 1, H, W)``."""
    r, g, b = images.unbind(1)
    return (r * GRAY_WEIGHTS[0]).add_(g, alpha=GRAY_WEIGHTS[1]).add_(b, alpha=GRAY_WEIGHTS[2]).unsqueeze(1)
