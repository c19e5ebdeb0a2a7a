"""Thumbnails of many images packed into a few JPEG sprite sheets, as ``data:`` URIs a page can hold.

One JPEG per image would carry its own headers and tables (about 600 bytes, more than a 32 px thumbnail's
pixels) and cost the browser one decode each; a sheet of ``columns x columns`` tiles pays that once for a
thousand images. Image ``i`` is tile ``i % per_sheet`` of sheet ``i // per_sheet``, row-major, ``size``
pixels square (decoded like training: shorter side resized, centre crop, transparency on white).

Example:
    >>> sheets, missing = thumbnail_sheets(["a.jpg", "b.png"], size=32)
    >>> sheets[0][:23], missing
    ('data:image/jpeg;base64,', [])
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ssl_siamese.data.images import decode_files

SHEET_COLUMNS = 32  # tiles per row and per column of a sheet: 1,024 images a sheet
MISSING_GREY = 200  # the tile of a file that could not be read


def thumbnail_sheets(files: Sequence[str | os.PathLike], size: int = 32, quality: int = 75,
                     columns: int = SHEET_COLUMNS) -> tuple[list[str], list[int]]:
    """``(sheets, missing)``: JPEG ``data:`` URIs of ``columns x columns`` tiles, and the indices of unreadable files.

    A sheet is decoded and encoded at a time, so memory stays at one sheet's images however many files.
    """
    from PIL import Image

    if size < 4 or not 1 <= quality <= 95:
        raise ValueError(f"Thumbnails need size >= 4 pixels and JPEG quality 1-95, got size={size}, "
                         f"quality={quality}.")
    per_sheet = columns * columns
    sheets, missing = [], []
    for start in range(0, len(files), per_sheet):
        chunk = [Path(file) for file in files[start:start + per_sheet]]
        rows = -(-len(chunk) // columns)
        sheet = np.full((rows * size, columns * size, 3), MISSING_GREY, dtype=np.uint8)
        for offset, array in enumerate(decode_files(chunk, size)):
            if array is None:
                missing.append(start + offset)
                continue
            row, column = divmod(offset, columns)
            sheet[row * size:(row + 1) * size, column * size:(column + 1) * size] = array.transpose(1, 2, 0)
        buffer = io.BytesIO()
        Image.fromarray(sheet).save(buffer, format="JPEG", quality=quality, optimize=True)
        sheets.append("data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"))
    return sheets, missing
