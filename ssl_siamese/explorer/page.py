"""Write the embedding explorer: one self-contained HTML page (no server, no network) for an embeddings file.

The page (``explorer.html``, shipped beside this module) draws the 2-D map of :mod:`.projection` on a
``<canvas>``, dots when zoomed out and the images' thumbnails (:mod:`.thumbnails`) when few points are in
view; it pans (drag) and zooms (wheel, buttons). Clicking a point shows its image and its ``k`` nearest
neighbours with their cosine similarity and distance (``1 - similarity``), computed here by
:mod:`.neighbours` and stored in the page; a box searches file names; a list holds the near-duplicate pairs
above a cosine threshold read off the set's own nearest-neighbour similarities
(:func:`.neighbours.duplicate_threshold`, or given), which a slider on the page moves: the page stores the
pairs down to the typical nearest-neighbour similarity (at most ``max_pairs``, the most similar). The numbers travel as base64 little-endian typed arrays in one JSON block;
50,000 points are drawn 0.7-2.8 s after opening on 2 busy cores (``benchmarks/explorer_page.py``,
BENCHMARKS.md). A page of 50,000 images is about 27 MB: 19.5 MB of 32 px thumbnails (:func:`thumbnail_size`;
about 390 bytes each in base64, sprite sheets of JPEG quality 75), 5.3 MB of neighbours (10 indices and
similarities each), 1.2 MB of names, 0.8 MB of coordinates and labels.

Example:
    >>> embeddings = load_embeddings("embeddings.npz")          # written by ssl_siamese.recipes.embed
    >>> summary = write_explorer(embeddings, "explore.html", image_root="photos/")
    >>> summary["points"], summary["duplicate_pairs"]
    (1200, 3)
"""

from __future__ import annotations

import base64
import html
import json
import sys
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ssl_siamese.explorer.neighbours import duplicate_threshold, near_duplicate_pairs, nearest_neighbours
from ssl_siamese.explorer.projection import map_2d
from ssl_siamese.explorer.thumbnails import SHEET_COLUMNS, thumbnail_sheets

TEMPLATE = "explorer.html"
DATA_MARKER = "/*EXPLORER_DATA*/"
TITLE_MARKER = "<!--EXPLORER_TITLE-->"
THUMBNAIL_SIZES = ((5_000, 64), (15_000, 48))  # (up to this many points, pixels); more points: 32 px
SMALLEST_THUMBNAIL = 32


class Embeddings(NamedTuple):
    """What the page shows: ``features (N, D)``, ``paths`` (N names), ``labels`` (N ints, -1 unknown) and ``classes``."""

    features: np.ndarray
    paths: list[str]
    labels: np.ndarray | None = None
    classes: list[str] | None = None


def load_embeddings(path: str | Path) -> Embeddings:
    """Read the ``.npz`` of ``ssl_siamese.recipes.embed`` (``embeddings``, ``paths``, optional ``labels``,
    ``classes``) or of ``EmbeddingIndex.save`` (``features``, optional ``ids``, ``labels``), without pickles."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No embeddings file at {path.resolve()}; write one with "
                                "`python -m ssl_siamese.recipes.embed --backbone B --data FOLDER --out FILE.npz`.")
    with np.load(path, allow_pickle=False) as data:
        key = next((name for name in ("embeddings", "features") if name in data), None)
        if key is None:
            raise ValueError(f"{path} holds no 'embeddings' (the embed recipe) or 'features' (EmbeddingIndex.save) "
                             f"array, only {sorted(data.files)}.")
        features = data[key].astype(np.float32)
        names = next((data[name].tolist() for name in ("paths", "ids") if name in data), None)
        labels = data["labels"].astype(np.int64) if "labels" in data else None
        classes = data["classes"].tolist() if "classes" in data else None
    if features.ndim != 2 or len(features) == 0:
        raise ValueError(f"{path}: expected embeddings of shape (N, D) with N >= 1, got {features.shape}.")
    paths = [str(name) for name in names] if names is not None else [f"#{i}" for i in range(len(features))]
    return Embeddings(features, paths, labels, classes)


def thumbnail_size(count: int) -> int:
    """The default thumbnail side for ``count`` points: 64 px up to 5,000, 48 px up to 15,000, else 32 px."""
    return next((size for limit, size in THUMBNAIL_SIZES if count <= limit), SMALLEST_THUMBNAIL)


def _base64(array: np.ndarray, dtype: str) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()).decode()


def duplicate_data(features: np.ndarray, indices: np.ndarray, similarities: np.ndarray, threshold: float | str,
                   max_pairs: int) -> dict[str, Any]:
    """The page's near-duplicate pairs: at ``threshold`` (a cosine, or ``"auto"``: :func:`duplicate_threshold`)
    and below it, down to ``floor``, so the page's slider can lower it.

    ``floor`` is the typical (median) nearest-neighbour similarity, raised until at most ``max_pairs`` pairs
    lie above it; every pair at or above ``floor`` is stored, most similar first. ``total`` counts the pairs at
    ``threshold`` (exact, also when more than ``max_pairs``).
    """
    if threshold == "auto":
        threshold, rule = duplicate_threshold(similarities)
    else:
        threshold, rule = float(threshold), f"given: cosine >= {float(threshold):g}"
    ranked = np.sort(similarities.ravel())[::-1]  # each pair is in one or two neighbour lists
    typical = float(np.median(similarities[:, 0])) if ranked.size else 1.0
    floor = min(threshold, max(typical, float(ranked[min(ranked.size, 2 * max_pairs) - 1]) if ranked.size else 1.0))
    pairs, stored_total = near_duplicate_pairs(features, indices, similarities, floor, max_pairs)
    if stored_total > len(pairs.first):  # capped: the stored list is complete down to its last pair
        floor = float(pairs.similarity[-1]) if len(pairs.first) else threshold
    total = int((pairs.similarity >= threshold).sum()) if threshold >= floor else \
        near_duplicate_pairs(features, indices, similarities, threshold, 0)[1]
    return {"threshold": round(threshold, 6), "rule": rule, "typical": round(typical, 6), "floor": round(floor, 6),
            "total": total, "first": pairs.first.tolist(), "second": pairs.second.tolist(),
            "similarity": [round(float(s), 6) for s in pairs.similarity]}


def explorer_data(embeddings: Embeddings, image_root: str | Path | None = None, k: int = 10,
                  duplicate_threshold: float | str | None = "auto", max_pairs: int = 2000, projection: str = "pca",
                  thumbnail: int | None = None, quality: int = 75, title: str = "Embedding explorer") -> dict:
    """The page's data (JSON-ready): map coordinates, labels, names, neighbours, duplicate pairs, thumbnails.

    ``image_root`` is the folder the paths are relative to (the ``--data`` folder given to the embed
    recipe); without it the page has no thumbnails. ``thumbnail`` is the thumbnail side in pixels (None:
    :func:`thumbnail_size`; 0: none). ``duplicate_threshold``: ``"auto"`` reads it off the embeddings
    (:func:`duplicate_data`), a cosine fixes it, None lists no duplicate pairs.
    """
    features, paths, labels, classes = embeddings
    count = len(features)
    if len(paths) != count or (labels is not None and len(labels) != count):
        raise ValueError(f"{count} embeddings but {len(paths)} paths"
                         + ("" if labels is None else f" and {len(labels)} labels") + ".")
    indices, similarities = nearest_neighbours(features, k)
    data: dict[str, Any] = {
        "title": title, "count": count, "dim": int(features.shape[1]), "projection": projection,
        "xy": _base64(map_2d(features, projection), "float32"), "paths": paths,
        "labels": None if labels is None else _base64(labels, "int32"),
        "classes": None if labels is None else (classes or [str(c) for c in range(int(labels.max()) + 1)]),
        "k": int(indices.shape[1]), "neighbours": _base64(indices, "int32"),
        "similarities": _base64(similarities, "float32"), "duplicates": None, "thumbnails": None}
    if duplicate_threshold is not None:
        data["duplicates"] = duplicate_data(features, indices, similarities, duplicate_threshold, max_pairs)
    size = thumbnail_size(count) if thumbnail is None else thumbnail
    if image_root is not None and size > 0:
        root = Path(image_root)
        if not root.is_dir():
            raise FileNotFoundError(f"No image folder at {root.resolve()}; --images is the folder the embeddings' "
                                    "paths are relative to (the --data folder given to the embed recipe).")
        sheets, missing = thumbnail_sheets([root / name for name in paths], size, quality,
                                           SHEET_COLUMNS)
        if missing:
            print(f"ssl_siamese.explorer: {len(missing)} of {count} images could not be read under {root} (first: "
                  f"{paths[missing[0]]}); they show as grey tiles", file=sys.stderr)
        data["thumbnails"] = {"size": size, "columns": SHEET_COLUMNS, "sheets": sheets,
                              "missing": missing}
    return data


def render_page(data: dict) -> str:
    """The HTML page for :func:`explorer_data`'s ``data``: the template with the data and title filled in."""
    template = resources.files("ssl_siamese.explorer").joinpath(TEMPLATE).read_text(encoding="utf-8")
    payload = json.dumps(data, separators=(",", ":"), ensure_ascii=True).replace("</", "<\\/")
    return (template.replace(TITLE_MARKER, html.escape(str(data.get("title", "")))).replace(DATA_MARKER, payload))


def read_page_data(path: str | Path) -> dict:
    """The data block of a page written by :func:`write_explorer` (what :func:`explorer_data` returned)."""
    page = Path(path).read_text(encoding="utf-8")
    start = page.index('<script id="explorer-data" type="application/json">')
    start = page.index(">", start) + 1
    return json.loads(page[start:page.index("</script>", start)])


def write_explorer(embeddings: Embeddings, out: str | Path = "explore.html", **options: Any) -> dict[str, Any]:
    """Write the page for ``embeddings`` to ``out``; ``options`` are :func:`explorer_data`'s.

    Returns ``out``, ``points``, ``bytes``, ``thumbnail`` (pixels, 0 for none), ``missing_images``,
    ``duplicate_pairs`` (the total at the threshold; None when not searched) and ``duplicate_threshold``.
    """
    data = explorer_data(embeddings, **options)
    page = render_page(data)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    thumbnails, duplicates = data["thumbnails"], data["duplicates"]
    return {"out": str(out), "points": data["count"], "bytes": out.stat().st_size,
            "thumbnail": thumbnails["size"] if thumbnails else 0,
            "missing_images": len(thumbnails["missing"]) if thumbnails else 0,
            "duplicate_pairs": duplicates["total"] if duplicates else None,
            "duplicate_threshold": duplicates["threshold"] if duplicates else None}
