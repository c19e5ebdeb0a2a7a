"""Ranking metrics against brute force and scikit-learn, dense search, BM25 and reciprocal-rank fusion by hand."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from sklearn.metrics import ndcg_score

from ssl_siamese.evaluation.ranking import ranking_metrics
from ssl_siamese.recipes.text_siamese import evaluation_set
from ssl_siamese.text.pairs import TextPair
from ssl_siamese.text.retrieval import bm25_search, dense_search, reciprocal_rank_fusion


def brute_force(ranked: list[list[int]], relevant: list[set[int]], k: int) -> dict[str, float]:
    recall, rr, ndcg = [], [], []
    for row, rel in zip(ranked, relevant):
        top = row[:k]
        recall.append(len(rel & set(top)) / len(rel))
        rr.append(next((1 / (i + 1) for i, d in enumerate(top) if d in rel), 0.0))
        dcg = sum(1 / math.log2(i + 2) for i, d in enumerate(top) if d in rel)
        ndcg.append(dcg / sum(1 / math.log2(i + 2) for i in range(min(len(rel), k))))
    return {"recall": np.mean(recall), "mrr": np.mean(rr), "ndcg": np.mean(ndcg)}


def test_hand_worked_case():
    metrics = ranking_metrics(torch.tensor([[3, 0, 2], [1, 2, 0]]), [{0}, {0, 2}], ks=(1, 3), mrr_k=3, ndcg_k=3)
    g = 1 / math.log2(3)
    assert metrics["recall@1"] == 0.0 and metrics["recall@3"] == 1.0 and metrics["mrr@3"] == 0.5
    assert metrics["ndcg@3"] == pytest.approx((g + (g + 0.5) / (1 + g)) / 2)


def test_metrics_match_brute_force_and_sklearn_on_random_rankings():
    rng = random.Random(0)
    n_docs, n_queries = 40, 30
    scores = np.random.default_rng(0).random((n_queries, n_docs))  # distinct scores: no ties for sklearn
    ranked = [list(np.argsort(-row)) for row in scores]
    relevant = [set(rng.sample(range(n_docs), rng.randint(1, 4))) for _ in range(n_queries)]
    metrics = ranking_metrics(torch.tensor(ranked), relevant, ks=(1, 10), mrr_k=10, ndcg_k=10)
    for k in (1, 10):
        assert metrics[f"recall@{k}"] == pytest.approx(brute_force(ranked, relevant, k)["recall"])
    reference = brute_force(ranked, relevant, 10)
    assert metrics["mrr@10"] == pytest.approx(reference["mrr"])
    assert metrics["ndcg@10"] == pytest.approx(reference["ndcg"])
    truth = np.array([[d in rel for d in range(n_docs)] for rel in relevant], dtype=float)
    assert metrics["ndcg@10"] == pytest.approx(ndcg_score(truth, scores, k=10))


def test_metrics_refuse_what_cannot_be_measured():
    with pytest.raises(ValueError, match="need 10"):
        ranking_metrics(torch.zeros(2, 5, dtype=torch.long), [{0}, {1}])
    with pytest.raises(ValueError, match="at least one relevant"):
        ranking_metrics(torch.zeros(2, 10, dtype=torch.long), [{0}, set()])


def test_dense_search_is_the_brute_force_cosine_order_and_pads_small_corpora():
    g = torch.Generator().manual_seed(0)
    queries, docs = torch.randn(9, 8, generator=g), torch.randn(20, 8, generator=g)
    ranked = dense_search(queries, docs, k=5, chunk_size=4)
    for q, row in zip(queries, ranked):
        cosine = [float(q @ d / (q.norm() * d.norm())) for d in docs]
        assert row.tolist() == sorted(range(20), key=lambda i: -cosine[i])[:5]
    assert dense_search(queries, docs[:3], k=5)[:, 3:].eq(-1).all()


def test_bm25_ranks_the_document_sharing_rare_words_first_and_skips_zero_scores():
    docs = ["a strategy game about ancient warfare", "an audio player for music files", "a plain text editor"]
    ranked = bm25_search(["warfare game", "music player", "zebra"], docs, k=3)
    assert ranked[0, 0] == 0 and ranked[1, 0] == 1
    assert ranked[2].eq(-1).all()  # no query word in any document


def test_reciprocal_rank_fusion_by_hand():
    fused = reciprocal_rank_fusion([torch.tensor([[0, 1, 2]]), torch.tensor([[1, 2, -1]])], k=3, constant=60)
    # doc 1: 1/62 + 1/61, doc 0: 1/61, doc 2: 1/63 + 1/62
    assert fused.tolist() == [[1, 2, 0]]


def test_evaluation_set_dedupes_documents_and_keeps_each_querys_relevant_set():
    pairs = [TextPair("q1", "d1"), TextPair("q2", "d1"), TextPair("q1", "d2", negative="d3")]
    queries, documents, relevant = evaluation_set(pairs)
    assert queries == ["q1", "q2"] and documents == ["d1", "d2", "d3"]
    assert relevant == [{0, 1}, {0}]
