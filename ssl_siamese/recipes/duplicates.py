"""List the near-duplicate pairs of a corpus: texts embedded by a text model, or any embed recipe ``.npz``.

    python -m ssl_siamese.recipes.duplicates --model out/text_siamese/exported_models/text_encoder \\
        --data corpus.txt --threshold 0.95 --out duplicates.tsv      # .jsonl: --field text [--id_field id]
    python -m ssl_siamese.recipes.embed --backbone backbone.pt --data photos/ --out photos.npz
    python -m ssl_siamese.recipes.duplicates --embeddings photos.npz --threshold 0.97   # images (or texts)

Every pair with cosine similarity >= ``--threshold`` is found exactly
(:func:`ssl_siamese.duplicates.find_duplicates`, progress bar over blocks), printed most similar first
(``--show`` of them) and, with ``--out``, written as TSV: ``score``, ``i``, ``j``, ``id_i``, ``id_j`` (ids:
the texts, or the image paths of the embed recipe's ``.npz``).

Example:
    >>> summary = run_duplicates(data="corpus.txt", model="text_encoder/", threshold=0.9, out="pairs.tsv")
    >>> summary["num_pairs"], summary["pairs"][0]        # (12, (0.998, 4, 17, 'text a', 'text b'))
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

import numpy as np
from jsonargparse import Namespace

from ssl_siamese.cli.arguments import parse_args as parse_checked
from ssl_siamese.cli.arguments import recipe_parser
from ssl_siamese.duplicates import find_duplicates


def load_embeddings(path: str | Path) -> tuple[np.ndarray, list[str]]:
    """``(embeddings, ids)`` of an embed recipe ``.npz`` (``ids`` or ``paths``; row numbers when it has neither)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no embeddings file {path}; write one with python -m ssl_siamese.recipes.embed")
    with np.load(path, allow_pickle=False) as data:
        key = next((name for name in ("embeddings", "features") if name in data), None)
        if key is None:
            raise ValueError(f"{path} holds no 'embeddings' or 'features' array, only {sorted(data.files)}")
        embeddings = data[key]
        id_key = next((name for name in ("ids", "paths") if name in data), None)
        ids = data[id_key].tolist() if id_key else [str(i) for i in range(len(embeddings))]
    return embeddings, ids


def run_duplicates(data: str | Path | None = None, model: str | Path | None = None,
                   embeddings: str | Path | None = None, threshold: float = 0.95, out: str | Path | None = None,
                   field: str = "text", id_field: str | None = None, batch_size: int = 256,
                   device: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Find the pairs above ``threshold`` in ``embeddings`` (an ``.npz``) or in the texts of ``data`` embedded
    with ``model``; write ``out`` (TSV) when given. Returns ``num_items``, ``num_pairs`` and ``pairs``
    [(score, i, j, id_i, id_j), ...], most similar first."""
    if (embeddings is None) == (data is None):
        raise ValueError("give either --embeddings FILE.npz, or --data FILE (.txt/.jsonl) with --model")
    if embeddings is not None:
        vectors, ids = load_embeddings(embeddings)
    else:
        if model is None:
            raise ValueError("--data needs --model: a text model (the text_siamese recipe's exported folder or "
                             "checkpoint)")
        from ssl_siamese.text.embed_texts import embed_texts, load_text_model, read_texts

        texts, ids, _ = read_texts(data, field, id_field)
        vectors = embed_texts(load_text_model(model), texts, batch_size, device, progress).numpy()
    pairs = [(score, i, j, ids[i], ids[j]) for i, j, score in find_duplicates(vectors, threshold, progress=progress)]
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
            writer.writerow(["score", "i", "j", "id_i", "id_j"])
            writer.writerows([f"{score:.6f}", i, j, a, b] for score, i, j, a, b in pairs)
    return {"num_items": len(ids), "num_pairs": len(pairs), "pairs": pairs, "out": None if out is None else str(out)}


def parse_args(argv: list[str] | None = None) -> Namespace:
    parser = recipe_parser("python -m ssl_siamese.recipes.duplicates",
                           "List near-duplicate pairs (cosine >= threshold) of texts or of an embeddings .npz.")
    parser.add_argument("--data", default=None, help="Texts: a .txt file (one per line) or a .jsonl file.")
    parser.add_argument("--model", default=None, help="With --data: the text_siamese recipe's exported folder "
                                                      "(or checkpoint).")
    parser.add_argument("--embeddings", default=None, help="Instead of --data: an .npz of the embed recipe.")
    parser.add_argument("--threshold", type=float, default=0.95, help="Cosine similarity from which a pair is listed.")
    parser.add_argument("--out", default=None, help="Write all pairs here as TSV.")
    parser.add_argument("--show", type=int, default=20, help="Pairs printed (most similar first).")
    parser.add_argument("--field", default="text", help=".jsonl: the field holding the text.")
    parser.add_argument("--id_field", default=None, help=".jsonl: a field to use as ids (default: the text).")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--device", default=None, help="Default: the model's (CPU).")
    return parse_checked(parser, argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command-line entry point; user errors exit with a one-line message."""
    args = parse_args(argv)
    try:
        summary = run_duplicates(args.data, args.model, args.embeddings, args.threshold, args.out, args.field,
                                 args.id_field, args.batch_size, args.device)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"ssl_siamese.recipes.duplicates: error: {error}")
    print(f"{summary['num_pairs']} pairs with cosine >= {args.threshold} among {summary['num_items']} items"
          + (f" -> {summary['out']}" if summary["out"] else ""))
    for score, _, _, a, b in summary["pairs"][:args.show]:
        print(f"{score:.4f}\t{a[:70]}\t{b[:70]}")
    return summary


if __name__ == "__main__":
    main()
