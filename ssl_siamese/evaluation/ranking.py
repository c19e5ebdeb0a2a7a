"""Ranking metrics for search: Recall@K, MRR@K and nDCG@K (binary relevance), as BEIR and MS MARCO define them.

A query's ranking is a row of document indices, best first (``-1`` pads a short row); its relevant
documents are a set of indices. Recall@K = |relevant in top K| / |relevant|; MRR@K = 1 / rank of the first
relevant document in the top K (0 if none); nDCG@K = DCG@K / ideal DCG@K with gains 1 / log2(rank + 1).

Example:
    >>> ranking_metrics(torch.tensor([[3, 0, 2], [1, 2, 0]]), [{0}, {0, 2}], ks=(1, 3), mrr_k=3, ndcg_k=3)
    {'recall@1': 0.0, 'recall@3': 1.0, 'mrr@3': 0.5, 'ndcg@3': 0.662...}
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch
from torch import Tensor


def ranking_metrics(ranked: Tensor, relevant: Sequence[Collection[int]], ks: tuple[int, ...] = (1, 10),
                    mrr_k: int = 10, ndcg_k: int = 10) -> dict[str, float]:
    """Mean Recall@k for each of ``ks``, MRR@``mrr_k`` and nDCG@``ndcg_k`` over the queries (rows of ``ranked``).

    Raises ``ValueError`` when the rows and ``relevant`` differ in number, a query has no relevant document,
    or the ranking is shallower than a cut-off asked for.
    """
    ranked = torch.as_tensor(ranked).long().cpu()
    if ranked.dim() != 2 or len(ranked) != len(relevant):
        raise ValueError(f"ranked must be (queries, depth) with one row per relevant set; got "
                         f"{tuple(ranked.shape)} and {len(relevant)} relevant sets")
    depth = max(*ks, mrr_k, ndcg_k)
    if ranked.shape[1] < depth:
        raise ValueError(f"the rankings hold {ranked.shape[1]} documents per query; the metrics need {depth}")
    if any(len(r) == 0 for r in relevant):
        raise ValueError("every query needs at least one relevant document")
    hits = torch.tensor([[int(doc) in rel for doc in row[:depth].tolist()] for row, rel in zip(ranked, relevant)],
                        dtype=torch.float64).reshape(len(ranked), depth)
    n_relevant = torch.tensor([len(r) for r in relevant], dtype=torch.float64)
    metrics = {f"recall@{k}": (hits[:, :k].sum(1) / n_relevant).mean().item() for k in ks}
    ranks = torch.arange(1, depth + 1, dtype=torch.float64)
    first = torch.where(hits[:, :mrr_k].any(1), hits[:, :mrr_k].argmax(1).double() + 1, torch.inf)
    metrics[f"mrr@{mrr_k}"] = (1.0 / first).mean().item()
    gains = 1.0 / torch.log2(ranks[:ndcg_k] + 1)
    ideal = torch.stack([gains[:int(min(n, ndcg_k))].sum() for n in n_relevant])
    metrics[f"ndcg@{ndcg_k}"] = ((hits[:, :ndcg_k] * gains).sum(1) / ideal).mean().item()
    return metrics
