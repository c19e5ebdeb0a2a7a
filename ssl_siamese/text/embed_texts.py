"""Embed the texts of a file (one per line, or a JSONL field) with a trained text encoder, into an ``.npz``
that :class:`~ssl_siamese.search.embeddings.EmbeddingIndex` loads.

The model is a folder that the text_siamese recipe exported (``<out>/exported_models/text_encoder``:
built-in, hashed bag or sentence-transformers) or its Lightning checkpoint (``.ckpt``). The ``.npz``
holds ``embeddings`` ``(N, D)`` float32 (not normalised), ``ids`` (the texts themselves, or a JSONL
``--id_field``) and ``lines`` (1-based line numbers in the file). Blank lines and records without the
field are skipped.

Example:
    >>> summary = run_embed_text("out/text_siamese/exported_models/text_encoder", "sentences.txt", "texts.npz")
    >>> index = EmbeddingIndex.load("texts.npz")
    >>> scores, indices = index.search(load_text_model(model_path).encode(["image viewer"]), k=5)
    >>> [index.ids[i] for i in indices[0]]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ssl_siamese.text.encoder import TextEncoder

TEXT_SUFFIXES = (".txt", ".jsonl")


def is_text_file(path: str | Path) -> bool:
    """True for the files :func:`read_texts` reads (``.txt``, ``.jsonl``)."""
    return Path(path).suffix.lower() in TEXT_SUFFIXES


def read_texts(path: str | Path, field: str = "text", id_field: str | None = None) -> tuple[list[str], list[str],
                                                                                                   list[int]]:
    """``(texts, ids, line numbers)`` of a ``.txt`` file (one text per line) or a ``.jsonl`` file (``field``).

    ``ids`` are the texts, or the JSONL ``id_field`` values. Blank lines and JSONL records whose ``field``
    is missing or empty are skipped.

    Raises:
        FileNotFoundError: no such file. ValueError: another suffix, a line that is not JSON, or no text at all.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no text file {path}: give a .txt file (one text per line) or a .jsonl file")
    if not is_text_file(path):
        raise ValueError(f"{path}: unknown text file type {path.suffix!r}; use .txt (one text per line) or .jsonl")
    texts, ids, lines = [], [], []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            if path.suffix.lower() == ".txt":
                text, key = line.rstrip("\r\n"), None
            else:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}:{number}: not a JSON object: {error}") from error
                text = str(record.get(field) or "")
                key = None if id_field is None else str(record.get(id_field, ""))
                if not text.strip():
                    continue
            texts.append(text)
            ids.append(text if key is None else key)
            lines.append(number)
    if not texts:
        hint = f" (no record has a non-empty {field!r}: choose it with --field)" if path.suffix == ".jsonl" else ""
        raise ValueError(f"{path} holds no text{hint}")
    return texts, ids, lines


def load_text_model(path: str | Path) -> TextEncoder:
    """The text encoder in an exported folder (:func:`~ssl_siamese.text.export.load_text_encoder`) or a
    text_siamese Lightning checkpoint (``.ckpt``)."""
    path = Path(path).expanduser()
    if path.is_dir():
        from ssl_siamese.text.export import load_text_encoder

        return load_text_encoder(path)
    if path.is_file() and path.suffix == ".ckpt":
        from ssl_siamese.text.module import TextSiamese

        return TextSiamese.load_from_checkpoint(path, map_location="cpu").encoder
    raise FileNotFoundError(f"{path} is neither a folder exported by the text_siamese recipe "
                            "(<out>/exported_models/text_encoder) nor its Lightning checkpoint (.ckpt)")


@torch.no_grad()
def embed_texts(encoder: TextEncoder, texts: list[str], batch_size: int = 256, device: str | None = None,
                progress: bool = True) -> torch.Tensor:
    """``(N, D)`` float32 embeddings on the CPU, ``batch_size`` texts at a time, with a progress bar."""
    if device is not None:
        encoder = encoder.to(device)
    starts = range(0, len(texts), batch_size)
    chunks = [encoder.encode(texts[s:s + batch_size], batch_size=batch_size)
              for s in tqdm(starts, desc="embedding", unit="batch", disable=not progress, leave=False)]
    return torch.cat(chunks) if chunks else torch.empty(0, encoder.dim)


def run_embed_text(model: str | Path, data: str | Path, out: str | Path = "embeddings.npz", field: str = "text",
                   id_field: str | None = None, batch_size: int = 256, device: str | None = None,
                   progress: bool = True) -> dict[str, Any]:
    """Embed the texts of ``data`` with the text model at ``model`` and write ``out``; returns a summary
    (``out``, ``num_texts``, ``feature_dim``)."""
    texts, ids, lines = read_texts(data, field, id_field)
    encoder = load_text_model(model)
    embeddings = embed_texts(encoder, texts, batch_size, device, progress)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as handle:  # a handle keeps the name as given (numpy would append .npz)
        np.savez(handle, embeddings=embeddings.numpy(), ids=np.asarray(ids, dtype=str),
                 lines=np.asarray(lines, dtype=np.int64))
    return {"out": str(out), "num_texts": len(texts), "feature_dim": int(embeddings.shape[1])}
