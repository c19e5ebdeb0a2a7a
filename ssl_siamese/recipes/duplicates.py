"""List the near-duplicate pairs of a corpus: texts embedded by a text model, or any embed recipe ``.npz``.

    python -m ssl_siamese.recipes.duplicates --model out/text_siamese/exported_models/text_encoder \\
        --data corpus.txt --threshold 0.95 --out duplicates.tsv      # .jsonl: --field text [--id_field id]
    python -m ssl_siamese.recipes.embed --backbone backbone.pt --data photos/ --out photos.npz
    python -m ssl_siamese.recipes.duplicates --embeddings photos.npz --threshold 0.97   # images (or texts)

Every pair with cosine similarity >= ``--threshold`` is found exactly
(:func:`ssl_siamese.search.duplicates.find_duplicates`, progress bar over blocks), printed most similar first
(``--show`` of them) and, with ``--out``, written as TSV: ``score``, ``i``, ``j``, ``id_i``, ``id_j`` (ids:
the texts, or the image paths of the embed recipe's ``.npz``).

Example:
    >>> summary = run_duplicates(data="corpus.txt", model="text_encoder/", threshold=0.9, out="pairs.tsv")
    >>> summary["num_pairs"], summary["pairs"][0]        # (12, (0.998, 4, 17, 'text a', 'text b'))
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
from jsonargparse import Namespace

from ssl_siamese.cli.arguments import parse_args as parse_checked
from ssl_siamese.cli.recipe import Flag, call, function_parser, user_errors
from ssl_siamese.search.duplicates import find_duplicates


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
    [(score, i, j, id_i, id_j), ...], most similar first.

    Args:
        data: Texts: a .txt file (one per line) or a .jsonl file.
        model: With --data: the text_siamese recipe's exported folder (or checkpoint).
        embeddings: Instead of --data: an .npz of the embed recipe.
        threshold: Cosine similarity from which a pair is listed.
        out: Write all pairs here as TSV.
        field: .jsonl: the field holding the text.
        id_field: .jsonl: a field to use as ids (default: the text).
        batch_size: Texts per forward pass.
        device: Default: the model's (CPU).
        progress: Show a progress bar.

    Raises:
        FileNotFoundError: no ``embeddings`` or ``data`` file.
        ValueError: neither or both of ``embeddings`` and ``data``, ``data`` without ``model``, an unreadable file.
    """
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


PROG = "python -m ssl_siamese.recipes.duplicates"
DESCRIPTION = "List near-duplicate pairs (cosine >= threshold) of texts or of an embeddings .npz."
FLAGS: dict[str, Flag] = {}


def parse_args(argv: list[str] | None = None) -> Namespace:
    """The options of ``run_duplicates`` as flags, and ``--show`` (how many pairs ``main`` prints)."""
    parser = function_parser(run_duplicates, PROG, DESCRIPTION, FLAGS)
    parser.add_argument("--show", type=int, default=20, help="Pairs printed (most similar first).")
    return parse_checked(parser, argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command-line entry point; user errors exit with a one-line message."""
    args = parse_args(argv)
    with user_errors(PROG.removeprefix("python -m ")):
        summary = call(run_duplicates, args, FLAGS)
    print(f"{summary['num_pairs']} pairs with cosine >= {args.threshold} among {summary['num_items']} items"
          + (f" -> {summary['out']}" if summary["out"] else ""))
    for score, _, _, a, b in summary["pairs"][:args.show]:
        print(f"{score:.4f}\t{a[:70]}\t{b[:70]}")
    return summary


if __name__ == "__main__":
    main()
