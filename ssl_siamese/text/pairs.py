"""Text pairs and triplets from JSONL, CSV or TSV files, and the collate that tokenizes them on the fly.

Each record has ``query`` and ``positive`` and optionally ``negative`` (a hard negative), ``score`` (a
similarity for regression losses) and ``group`` (e.g. a source or a topic: the split keeps a group on one
side). JSONL: one object per line with those keys. CSV/TSV: a header row naming those columns.

Example:
    >>> pairs = read_pairs("train.jsonl")             # [TextPair(query=..., positive=..., ...), ...]
    >>> loader = DataLoader(pairs, batch_size=64, shuffle=True, collate_fn=PairCollate(encoder.tokenizer))
    >>> batch = next(iter(loader))     # {"query": {...}, "positive": {...}[, "negative"][, "score"], "keys": {...}}
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ssl_siamese.text.encoder import Tokenize
from ssl_siamese.text.losses import text_keys

FIELDS = ("query", "positive", "negative", "score", "group")
FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv"}


@dataclass(frozen=True)
class TextPair:
    """A query and its positive text, with an optional hard negative, score and group."""

    query: str
    positive: str
    negative: str | None = None
    score: float | None = None
    group: str | None = None


def _pair(record: dict[str, Any], where: str) -> TextPair:
    missing = [key for key in ("query", "positive") if not str(record.get(key) or "").strip()]
    if missing:
        raise ValueError(f"{where}: missing or empty {', '.join(missing)}; every record needs query and positive "
                         f"(optional: negative, score, group); got keys {sorted(record)}")
    score = record.get("score")
    try:
        score = None if score in (None, "") else float(score)
    except ValueError as error:
        raise ValueError(f"{where}: score {score!r} is not a number") from error
    negative = record.get("negative") or None
    group = record.get("group")
    return TextPair(str(record["query"]), str(record["positive"]), None if negative is None else str(negative),
                    score, None if group in (None, "") else str(group))


def read_pairs(path: str | Path) -> list[TextPair]:
    """All records of a ``.jsonl`` / ``.csv`` / ``.tsv`` file as :class:`TextPair`; errors name the line.

    Raises ``ValueError`` when a record lacks query or positive, or when only some records have a negative
    or a score (a batch must be all one kind); ``FileNotFoundError`` when the file is missing.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no pair file {path}")
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"{path}: unknown pair file type {path.suffix!r}; use .jsonl, .csv or .tsv")
    pairs = []
    with path.open(encoding="utf-8", newline="") as handle:
        if kind == "jsonl":
            for number, line in enumerate(handle, 1):
                if line.strip():
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as error:
                        raise ValueError(f"{path}:{number}: not a JSON object: {error}") from error
                    pairs.append(_pair(record, f"{path}:{number}"))
        else:
            reader = csv.DictReader(handle, delimiter="\t" if kind == "tsv" else ",")
            for number, record in enumerate(reader, 2):
                pairs.append(_pair(record, f"{path}:{number}"))
    if not pairs:
        raise ValueError(f"{path} holds no pairs")
    for key in ("negative", "score"):
        have = sum(getattr(pair, key) is not None for pair in pairs)
        if 0 < have < len(pairs):
            raise ValueError(f"{path}: {have} of {len(pairs)} records have a {key}; give it for all or none")
    return pairs


class PairCollate:
    """A list of :class:`TextPair` -> tokenized ``query``, ``positive`` (and ``negative``) dicts, ``score`` tensor,
    and ``keys``: each text's :func:`~ssl_siamese.text.losses.text_keys` (the loss finds duplicate texts by them)."""

    def __init__(self, tokenize: Tokenize) -> None:
        self.tokenize = tokenize

    def __call__(self, pairs: Sequence[TextPair]) -> dict[str, Any]:
        batch: dict[str, Any] = {"query": self.tokenize([p.query for p in pairs]),
                                 "positive": self.tokenize([p.positive for p in pairs])}
        if pairs[0].negative is not None:
            batch["negative"] = self.tokenize([p.negative for p in pairs])
        if pairs[0].score is not None:
            batch["score"] = torch.tensor([p.score for p in pairs], dtype=torch.float32)
        batch["keys"] = {field: text_keys([getattr(p, field) for p in pairs]) for field in ("query", "positive", "negative")
                         if field in batch}
        return batch
