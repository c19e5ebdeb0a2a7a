"""Search a corpus of texts: dense (cosine of embeddings), BM25 (``bm25s``) and their reciprocal-rank fusion.

Each function returns a ``(queries, k)`` long tensor of document indices, best first (``-1`` where a corpus
has fewer than ``k`` documents), ready for :func:`ssl_siamese.evaluation.ranking.ranking_metrics`.

Example:
    >>> dense = dense_search(encoder.encode(queries), encoder.encode(corpus), k=100)
    >>> lexical = bm25_search(queries, corpus, k=100)
    >>> hybrid = reciprocal_rank_fusion([dense, lexical], k=10)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ssl_siamese.extras import require


def _pad(ranked: Tensor, k: int) -> Tensor:
    if ranked.shape[1] >= k:
        return ranked[:, :k]
    return torch.cat([ranked, ranked.new_full((len(ranked), k - ranked.shape[1]), -1)], dim=1)


def dense_search(queries: Tensor, documents: Tensor, k: int = 100, chunk_size: int = 1024) -> Tensor:
    """The ``k`` documents of highest cosine similarity to each query (exact, ``chunk_size`` queries at a time)."""
    documents = F.normalize(documents.float(), dim=1)
    queries = F.normalize(queries.float(), dim=1)
    depth = min(k, len(documents))
    ranked = [(chunk @ documents.T).topk(depth, dim=1).indices for chunk in queries.split(chunk_size)]
    return _pad(torch.cat(ranked) if ranked else torch.empty(0, depth, dtype=torch.long), k)


def bm25_search(queries: Sequence[str], documents: Sequence[str], k: int = 100, k1: float = 1.5,
                b: float = 0.75) -> Tensor:
    """BM25 (Lucene's variant, ``bm25s``) with English stop words removed; documents with score 0 are not ranked."""
    bm25s = require("bm25s", "The BM25 baseline")
    retriever = bm25s.BM25(k1=k1, b=b)
    retriever.index(bm25s.tokenize(list(documents), stopwords="en", show_progress=False), show_progress=False)
    depth = min(k, len(documents))
    ids, scores = retriever.retrieve(bm25s.tokenize(list(queries), stopwords="en", show_progress=False),
                                     k=depth, show_progress=False, n_threads=0)
    ranked = torch.from_numpy(np.where(scores > 0, ids, -1).astype(np.int64))
    return _pad(ranked, k)


def reciprocal_rank_fusion(rankings: Sequence[Tensor], k: int = 10, constant: float = 60.0) -> Tensor:
    """Fuse rankings by ``score(d) = sum_r 1 / (constant + rank_r(d))`` (ranks from 1; Cormack et al., 2009).

    Ties are broken by the first ranking's order. ``-1`` entries are ignored.
    """
    fused = []
    for rows in zip(*(r.tolist() for r in rankings)):
        scores: dict[int, float] = {}
        for row in rows:
            for rank, doc in enumerate(row, 1):
                if doc >= 0:
                    scores[doc] = scores.get(doc, 0.0) + 1.0 / (constant + rank)
        order = sorted(scores, key=lambda doc: -scores[doc])  # stable: first-seen order among equal scores
        fused.append((order + [-1] * k)[:k])
    return torch.tensor(fused, dtype=torch.long).reshape(len(fused), k)
