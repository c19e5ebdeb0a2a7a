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

import sys
import tempfile
from argparse import Namespace
from pathlib import Path
from typing import Any, Optional

from ssl_siamese.cli.arguments import parse_args as parse_checked
from ssl_siamese.cli.arguments import recipe_parser
from ssl_siamese.explorer.page import load_embeddings, write_explorer
from ssl_siamese.explorer.projection import PROJECTIONS
from ssl_siamese.recipes._backbone import add_backbone_option

PROG = "python -m ssl_siamese.recipes.explore"


def _threshold(text: str) -> float | str | None:
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


def parse_args(argv: list[str] | None = None) -> Namespace:
    parser = recipe_parser(PROG, "Write a self-contained HTML page to explore embeddings.")
    source = parser.add_argument_group("what to show (--embeddings, or --backbone with --data)")
    source.add_argument("--embeddings", metavar="NPZ", help="The .npz written by ssl_siamese.recipes.embed.")
    source.add_argument("--images", metavar="FOLDER",
                        help="With --embeddings: the folder its paths are relative to (for thumbnails).")
    add_backbone_option(source, more=": embed --data first", required=False)
    source.add_argument("--data", nargs="+", help="With --backbone: image folders, files or quoted glob patterns.")
    source.add_argument("--save_embeddings", metavar="NPZ", help="With --backbone: keep the embeddings here.")
    source.add_argument("--batch_size", type=int, default=256)
    source.add_argument("--device", default=None, help="Default: cuda when available, else cpu.")
    page = parser.add_argument_group("the page")
    page.add_argument("--out", default="explore.html", help="The HTML file to write.")
    page.add_argument("--k", type=int, default=10, help="Nearest neighbours listed for each image.")
    page.add_argument("--duplicates", default="auto", metavar="auto|COSINE|off",
                      help="Near-duplicate pairs: 'auto' reads the cosine threshold off the embeddings' nearest-"
                           "neighbour similarities; a number fixes it; 'off' lists none.")
    page.add_argument("--max_pairs", type=int, default=2000,
                      help="At most this many duplicate pairs stored in the page (the most similar).")
    page.add_argument("--projection", choices=PROJECTIONS, default="pca",
                      help="The 2-D map: pca (fast) or tsne (scikit-learn; minutes for tens of thousands).")
    page.add_argument("--thumbnail", type=Optional[int], default=None, metavar="PIXELS",
                      help="Thumbnail side (default 64 up to 5,000 images, 48 up to 15,000, else 32; 0: none).")
    page.add_argument("--quality", type=int, default=75, help="JPEG quality of the thumbnails (1-95).")
    page.add_argument("--title", default=None, help="Page title (default: the embeddings' name).")
    args = parse_checked(parser, argv)
    if (args.embeddings is None) == (args.backbone is None):
        parser.error("give --embeddings NPZ, or --backbone PATH with --data FOLDER (one of the two)")
    if args.backbone is not None and not args.data:
        parser.error("--backbone needs --data: the image folders, files or glob patterns to embed")
    if args.embeddings is not None and (args.data or args.save_embeddings):
        parser.error("--data and --save_embeddings go with --backbone; with --embeddings, --images names the folder")
    try:
        args.duplicates = _threshold(args.duplicates)
    except ValueError as error:
        parser.error(str(error))
    return args


def run_explore(args: Namespace) -> dict[str, Any]:
    """Embed when asked (``--backbone``), then write the page; the summary of ``write_explorer``."""
    options = {"k": args.k, "duplicate_threshold": args.duplicates, "max_pairs": args.max_pairs,
               "projection": args.projection, "thumbnail": args.thumbnail, "quality": args.quality}
    if args.embeddings is not None:
        title = args.title or f"Embeddings: {Path(args.embeddings).name}"
        return write_explorer(load_embeddings(args.embeddings), args.out, image_root=args.images, title=title,
                              **options)
    from ssl_siamese.recipes.embed import run_embed

    with tempfile.TemporaryDirectory() as folder:
        npz = args.save_embeddings or Path(folder) / "embeddings.npz"
        embedded = run_embed(args.backbone, args.data, npz, args.batch_size, args.device)
        title = args.title or f"{Path(args.backbone).name} on {embedded['root']}"
        return write_explorer(load_embeddings(npz), args.out, image_root=embedded["root"], title=title, **options)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command-line entry point; user errors exit with a one-line message."""
    args = parse_args(argv)
    try:
        summary = run_explore(args)
    except (FileNotFoundError, ValueError, ImportError) as error:
        sys.exit(f"ssl_siamese.recipes.explore: error: {error}")
    duplicates = summary["duplicate_pairs"]
    print(f"Explorer page for {summary['points']} images ({summary['bytes'] / 1e6:.1f} MB, thumbnails "
          f"{summary['thumbnail'] or 'none'}{' px' if summary['thumbnail'] else ''}"
          + ("" if duplicates is None else f", {duplicates} near-duplicate pairs at cosine >= "
                                              f"{summary['duplicate_threshold']:.6f}") + f") -> {summary['out']}")
    return summary


if __name__ == "__main__":
    main()
