"""Write the embedding explorer page: one self-contained HTML file for an embeddings file or a backbone + images.

    python -m ssl_siamese.recipes.explore --embeddings embeddings.npz --images photos/ --out explore.html
    python -m ssl_siamese.recipes.explore --backbone out/simclr/exported_models/backbone.pt --data photos/ \
        --out explore.html [--save_embeddings embeddings.npz]

``--embeddings`` is the ``.npz`` of ``ssl_siamese.recipes.embed``; ``--images`` is the folder its paths are
relative to (the ``--data`` folder given to embed), for the thumbnails (without it the page shows dots and
names only). ``--backbone`` + ``--data`` embed the images first, as the embed recipe does (``--backbone`` takes
what embed takes: an exported ``.pt`` file or folder, a Lightning checkpoint, ...). The page opens
offline in any browser: a zoomable map (PCA, or ``--projection tsne``), thumbnails coloured by label, a
click shows an image's ``--k`` nearest neighbours with their cosine similarity and distance, a search box
finds file names, and near-duplicate pairs are listed: ``--duplicates auto`` (the default) reads the cosine
threshold off the embeddings' own nearest-neighbour similarities (the page says how, and a slider moves it),
a number fixes it, ``off`` lists none. See :mod:`ssl_siamese.explorer.page`.

Example:
    >>> main(["--embeddings", "embeddings.npz", "--images", "photos", "--out", "explore.html"])["points"]
    1200
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jsonargparse import Namespace

from ssl_siamese.cli.arguments import parse_args as parse_checked
from ssl_siamese.cli.recipe import Flag, function_parser, recipe_main
from ssl_siamese.explorer.page import load_embeddings, write_explorer
from ssl_siamese.explorer.projection import PROJECTIONS
from ssl_siamese.recipes._backbone import BACKBONE_FORMS

def _threshold(text: float | str | None) -> float | str | None:
    """``--duplicates``: "auto", a cosine similarity in [-1, 1], or None for 'off'."""
    if str(text).lower() in ("off", "none", "no"):
        return None
    if str(text).lower() == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"--duplicates: expected 'auto', a cosine similarity in [-1, 1] or 'off', got {text!r}") \
            from None
    if not -1.0 <= value <= 1.0:
        raise ValueError(f"--duplicates: a cosine similarity lies in [-1, 1], got {value}")
    return value


def run_explore(embeddings: str | Path | None = None, images: str | Path | None = None,
                backbone: str | Path | None = None, data: Sequence[str | Path] | None = None,
                save_embeddings: str | Path | None = None, batch_size: int = 256, device: str | None = None,
                out: str | Path = "explore.html", k: int = 10, duplicates: float | str | None = "auto",
                max_pairs: int = 2000, projection: str = "pca", thumbnail: int | None = None, quality: int = 75,
                title: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Embed when asked (``backbone`` with ``data``), then write the page; the summary of ``write_explorer``.

    Args:
        embeddings: The .npz written by ssl_siamese.recipes.embed (or give --backbone with --data).
        images: With --embeddings: the folder its paths are relative to (for thumbnails).
        backbone: Instead of --embeddings: an exported backbone, a Lightning checkpoint or a W&B model artifact
            to embed --data with first.
        data: With --backbone: image folders, files or quoted glob patterns.
        save_embeddings: With --backbone: keep the embeddings in this .npz.
        batch_size: Images per forward pass when embedding.
        device: Default: cuda when available, else cpu.
        out: The HTML file to write.
        k: Nearest neighbours listed for each image.
        duplicates: Near-duplicate pairs: 'auto' reads the cosine threshold off the embeddings' nearest-neighbour
            similarities; a number in [-1, 1] fixes it; 'off' lists none.
        max_pairs: At most this many duplicate pairs stored in the page (the most similar).
        projection: The 2-D map: pca (fast) or tsne (scikit-learn; minutes for tens of thousands).
        thumbnail: Thumbnail side in pixels (default 64 up to 5,000 images, 48 up to 15,000, else 32; 0: none).
        quality: JPEG quality of the thumbnails (1-95).
        title: Page title (default: the embeddings' name).
        progress: Show a progress bar while embedding.

    Raises:
        ValueError: neither or both of ``embeddings`` and ``backbone``, ``backbone`` without ``data``, ``data``
            or ``save_embeddings`` with ``embeddings``, or a ``duplicates`` that is not auto, off or a cosine.
        FileNotFoundError: no ``embeddings`` file, no ``backbone``, or no images in ``data``.
    """
    if (embeddings is None) == (backbone is None):
        raise ValueError("give --embeddings NPZ, or --backbone PATH with --data FOLDER (one of the two)")
    if backbone is not None and not data:
        raise ValueError("--backbone needs --data: the image folders, files or glob patterns to embed")
    if embeddings is not None and (data or save_embeddings):
        raise ValueError("--data and --save_embeddings go with --backbone; with --embeddings, --images names the "
                         "folder")
    options = {"k": k, "duplicate_threshold": _threshold(duplicates), "max_pairs": max_pairs,
               "projection": projection, "thumbnail": thumbnail, "quality": quality}
    if embeddings is not None:
        title = title or f"Embeddings: {Path(embeddings).name}"
        return write_explorer(load_embeddings(embeddings), out, image_root=images, title=title, **options)
    from ssl_siamese.recipes.embed import run_embed

    with tempfile.TemporaryDirectory() as folder:
        npz = save_embeddings or Path(folder) / "embeddings.npz"
        embedded = run_embed(backbone, data, npz, batch_size, device, progress=progress)
        title = title or f"{Path(backbone).name} on {embedded['root']}"
        return write_explorer(load_embeddings(npz), out, image_root=embedded["root"], title=title, **options)


PROG = "python -m ssl_siamese.recipes.explore"
DESCRIPTION = "Write a self-contained HTML page to explore embeddings."
FLAGS = {
    "embeddings": Flag(metavar="NPZ"),
    "images": Flag(metavar="FOLDER"),
    "backbone": Flag(aliases=("--ckpt",), metavar="PATH",
                     help=f"{BACKBONE_FORMS[0].upper()}{BACKBONE_FORMS[1:]}: embed --data first."),
    "data": Flag(nargs="+", type=str),
    "save_embeddings": Flag(metavar="NPZ"),
    "duplicates": Flag(type=str, metavar="auto|COSINE|off"),
    "projection": Flag(choices=PROJECTIONS),
    "thumbnail": Flag(metavar="PIXELS"),
}


def parse_args(argv: list[str] | None = None) -> Namespace:
    """The options of ``run_explore``, as flags (``--ckpt`` is ``--backbone``)."""
    return parse_checked(function_parser(run_explore, PROG, DESCRIPTION, FLAGS), argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command-line entry point; user errors exit with a one-line message."""
    summary = recipe_main(run_explore, PROG, DESCRIPTION, FLAGS, argv)
    duplicates = summary["duplicate_pairs"]
    print(f"Explorer page for {summary['points']} images ({summary['bytes'] / 1e6:.1f} MB, thumbnails "
          f"{summary['thumbnail'] or 'none'}{' px' if summary['thumbnail'] else ''}"
          + ("" if duplicates is None else f", {duplicates} near-duplicate pairs at cosine >= "
                                              f"{summary['duplicate_threshold']:.6f}") + f") -> {summary['out']}")
    return summary


if __name__ == "__main__":
    main()
