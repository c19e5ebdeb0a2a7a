"""Encoding one file for the shards (runs in litdata's worker processes).

Example:
    >>> data = encode_file("photo.png", Encoding(short_side=256))  # doctest: +SKIP
    >>> data[:2]  # JPEG
    b'\\xff\\xd8'
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ssl_siamese.data.prepare.listing import Job
from ssl_siamese.data.images import ImageReadError, read_image


@dataclass(frozen=True)
class Encoding:
    """How images are stored: JPEG at ``quality`` (or PNG when ``lossless``), short side capped at ``short_side``."""

    short_side: int | None = 256
    quality: int = 90
    lossless: bool = False


def _original_jpeg_fits(path: str, short_side: int | None) -> bool:
    """True for a readable RGB or grayscale JPEG, not EXIF-rotated, whose short side is within the cap."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            fits = (image.format == "JPEG" and image.mode in ("RGB", "L")
                    and (short_side is None or min(image.size) <= short_side)
                    and image.getexif().get(0x0112, 1) == 1)  # orientation: stored bytes decode upright
        if fits:
            read_image(path, size=8)  # decodes at 1/8 scale: a truncated or corrupt file raises here
        return fits
    except (ImageReadError, OSError, SyntaxError, ValueError):
        return False  # the full decode below says why


def encode_file(path: str, encoding: Encoding) -> bytes:
    """The bytes stored for one file: its own bytes when :func:`_original_jpeg_fits`, else decoded by
    :func:`read_image`, the short side resized down to the cap (bicubic, never up) and encoded.

    Raises:
        ImageReadError, FileNotFoundError: the file is not a readable image.
    """
    from PIL import Image

    if not encoding.lossless and _original_jpeg_fits(path, encoding.short_side):
        return Path(path).read_bytes()
    image = Image.fromarray(read_image(path).permute(1, 2, 0).numpy())
    cap = encoding.short_side
    if cap is not None and min(image.size) > cap:
        scale = cap / min(image.size)
        size = tuple(cap if side == min(image.size) else max(cap, round(side * scale)) for side in image.size)
        image = image.resize(size, Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    if encoding.lossless:
        image.save(buffer, format="PNG")
    else:
        image.save(buffer, format="JPEG", quality=encoding.quality)
    return buffer.getvalue()


class _SampleWriter:
    """litdata ``optimize``'s ``fn``: position in the split's job list -> sample dict, or None when unreadable.

    An unreadable file is noted as ``<skip_dir>/<index>.txt`` ("relative path<TAB>reason"), so the main
    process can list it after the workers are done.
    """

    def __init__(self, jobs: list[Job], encoding: Encoding, skip_dir: str) -> None:
        self.jobs, self.encoding, self.skip_dir = jobs, encoding, skip_dir

    def __call__(self, position: int) -> dict[str, Any] | None:
        job = self.jobs[position]
        try:
            data = encode_file(job.path, self.encoding)
        except (ImageReadError, OSError, ValueError) as error:
            reason = " ".join(str(error).replace(job.path, job.relative).split())
            Path(self.skip_dir, f"{job.index}.txt").write_text(f"{job.relative}\t{reason}\n", encoding="utf-8")
            return None
        return {"image": data, "label": job.label, "index": job.index}

