"""Image folders decoded once into uint8 tensors at one size, cached on disk outside the folder.

Example:
    >>> split = load_folder("photos/", image_size=64)  # doctest: +SKIP
    >>> split.images.shape  # (N, 3, 64, 64)
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pytorch_lightning.utilities import rank_zero_info

from ssl_siamese.data.info import DataNotFoundError, ImageTensors, logger
from ssl_siamese.data.images import (DECODER_VERSION, IMAGE_EXTENSIONS, decode_files, list_image_files,
                                     unreadable_reasons)

CACHE_ENV = "SSL_SIAMESE_CACHE"


def default_cache_dir() -> Path:
    """Where decoded image folders are cached: ``$SSL_SIAMESE_CACHE``, else ``$XDG_CACHE_HOME/ssl_siamese``,
    else ``~/.cache/ssl_siamese`` (never inside the user's data folder)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "ssl_siamese"


def _cache_key(root: Path, size: int, files: list[Path]) -> str:
    listing = []
    for path in files:
        stat = path.stat()
        listing.append((path.relative_to(root).as_posix(), stat.st_size, stat.st_mtime_ns))
    text = json.dumps([str(root), size, DECODER_VERSION, sorted(listing)])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _save_atomically(payload: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(handle)
    try:
        torch.save(payload, temp)
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.remove(temp)


def load_folder(root: str | Path, image_size: int = 64, cache_dir: str | Path | None = None,
                num_threads: int | None = None) -> ImageTensors:
    """Decode every image under ``root`` (recursively) into uint8 ``(N, 3, S, S)``, cached on disk.

    Files are listed and decoded by :mod:`ssl_siamese.data.images` (transparent pixels composited onto white).
    Labelled by first-level subfolder when every image lies in one (ImageFolder layout), else
    unlabelled. Unreadable and non-image files (an SVG, notes) are skipped; every run warns with their
    count and first names, also when the images come from the cache. The cache lives in ``cache_dir``
    (default :func:`default_cache_dir`, outside ``root``), one file per folder and size, rebuilt when a
    file under ``root`` changes; its path is logged.

    Example:
        >>> split = load_folder("photos/", image_size=64)  # doctest: +SKIP
        >>> split.images.shape  # (N, 3, 64, 64)
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DataNotFoundError(f"Image folder {root} does not exist. Pass an existing folder with "
                                f"--data.data_dir PATH (images in it or in one subfolder per class).")
    files, others = list_image_files(root)
    if not files:
        raise DataNotFoundError(f"No image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) found under {root}"
                                f"{f' (only {len(others)} other files)' if others else ' (it is empty)'}. "
                                "Point --data.data_dir at a folder that holds images (any depth).")

    cache_root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    prefix = f"folder-{root.name}-{hashlib.sha256(str(root).encode()).hexdigest()[:8]}-{image_size}px-"
    cache_file = cache_root / f"{prefix}{_cache_key(root, image_size, files + others)}.pt"
    if cache_file.is_file():
        try:
            cached = torch.load(cache_file, weights_only=True)
            split = ImageTensors(cached["images"], cached["labels"], list(cached["classes"]))
            report_skipped(root, list(cached["skipped"]))
            rank_zero_info(f"ssl_siamese: {len(split)} images of {root} read from the decoded-image cache "
                           f"{cache_file}")
            return split
        except Exception as error:  # noqa: BLE001 - a bad cache is rebuilt
            logger.warning("ignoring unreadable cache %s: %s", cache_file, error)

    _warn_if_too_big_for_memory(root, len(files), image_size)
    decoded = decode_files(files, image_size, num_threads)
    kept = [(path, array) for path, array in zip(files, decoded) if array is not None]
    skipped = sorted([path for path, array in zip(files, decoded) if array is None] + others)
    skipped_names = [path.relative_to(root).as_posix() for path in skipped]
    if not kept:
        raise ValueError(f"None of the {len(files)} image files under {root} could be read. "
                         + " ".join(f"{reason}." for reason in unreadable_reasons(files))
                         + (" ..." if len(files) > 3 else ""))

    relative = [path.relative_to(root).parts for path, _ in kept]
    if all(len(parts) > 1 for parts in relative):
        classes = sorted({parts[0] for parts in relative})
        index = {name: i for i, name in enumerate(classes)}
        labels = torch.tensor([index[parts[0]] for parts in relative], dtype=torch.int64)
    else:
        classes, labels = [], torch.full((len(kept),), -1, dtype=torch.int64)
    images = torch.from_numpy(np.stack([array for _, array in kept]))
    try:
        for stale in cache_root.glob("folder-*.pt"):  # this folder at this size before it changed
            if stale.name.startswith(prefix) and stale != cache_file:
                stale.unlink(missing_ok=True)
        _save_atomically({"images": images, "labels": labels, "classes": classes, "skipped": skipped_names},
                         cache_file)
    except OSError as error:
        logger.warning("could not write the decoded-image cache %s (%s); the folder will be decoded again "
                       "next time (set %s or --data.cache_dir to a writable folder)", cache_file, error, CACHE_ENV)
    else:
        rank_zero_info(f"ssl_siamese: decoded {len(kept)} images of {root} at {image_size} px into the cache "
                       f"{cache_file} (set {CACHE_ENV} or --data.cache_dir to cache elsewhere)")
    report_skipped(root, skipped_names)
    return ImageTensors(images, labels, classes)


def _warn_if_too_big_for_memory(root: Path, count: int, image_size: int) -> None:
    """Warn before decoding when the images would take more than half of this machine's memory."""
    needed = count * 3 * image_size * image_size
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not on this platform
        return
    if needed > memory / 2:
        logger.warning("%d images of %s at %d px take %.1f GiB as uint8, more than half of this machine's %.1f GiB; "
                       "stream it instead (python -m ssl_siamese.data.prepare FOLDER SHARDS, then --data.dataset stream "
                       "--data.data_dir SHARDS: memory stays bounded), or use a smaller --data.image_size", count, root, image_size,
                       needed / 2**30, memory / 2**30)


def report_skipped(root: Path, skipped: list[str]) -> None:
    """Warn about the files of ``root`` that were skipped (not images, or unreadable), on every run."""
    if skipped:
        logger.warning("skipped %d files under %s that are not readable images (first few: %s); the "
                       "image types read are %s", len(skipped), root, ", ".join(skipped[:5]),
                       " ".join(sorted(IMAGE_EXTENSIONS)))


def folder_split_dir(data_dir: Path, split: str) -> Path | None:
    """The folder of a split: train = data_dir/train or data_dir; test/val = data_dir/test or data_dir/val."""
    if split == "train":
        if (data_dir / "train").is_dir():
            return data_dir / "train"
        held_out = [name for name in ("test", "val") if (data_dir / name).is_dir()]
        if held_out:  # otherwise the held-out images would be read as a training class
            raise DataNotFoundError(f"{data_dir} has a {held_out[0]}/ folder but no train/ folder; put the "
                                    f"training images in {data_dir / 'train'} (one subfolder per class).")
        return data_dir
    for name in ("test", "val") if split in ("test", "val") else ():
        if (data_dir / name).is_dir():
            return data_dir / name
    return None


