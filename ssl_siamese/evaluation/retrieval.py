"""Retrieval and verification metrics on frozen features: Recall@K, and the ROC, AUC and EER of pairs.

Recall@K follows the metric-learning protocol (CUB-200, Stanford Online Products): a query counts as
recalled when one of its K most cosine-similar gallery items has its label. Without a separate gallery
every item queries all the others (leave-one-out). Verification scores pairs (e.g. face or signature
pairs) and reads the whole ROC curve, computed exactly with tied scores grouped into one threshold
(the same points as ``sklearn.metrics.roc_curve(..., drop_intermediate=False)``). Ours rather than
torchmetrics' ``binary_roc``/``binary_eer``: torchmetrics passes scores outside [0, 1] (cosine similarities,
negative distances) through a sigmoid, so its thresholds are not in score units, and it computes in
float32; the EER threshold is what a user deploys. The tests check that AUC and EER agree with torchmetrics.

Example:
    >>> recall = recall_at_k(features, labels, ks=(1, 2, 4, 8))          # {1: 0.61, 2: 0.73, ...}
    >>> result = verification_roc(pair_scores(left, right), same)
    >>> print(result.auc, result.eer, result.eer_threshold)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def recall_at_k(query_features: Tensor, query_labels: Tensor, gallery_features: Tensor | None = None,
                gallery_labels: Tensor | None = None, ks: tuple[int, ...] = (1, 5, 10),
                chunk_size: int = 1024) -> dict[int, float]:
    """Fraction of queries with a same-label item among their ``k`` nearest gallery items (cosine).

    With ``gallery_features=None`` the queries are their own gallery and each query's own entry is
    excluded. Queries are processed ``chunk_size`` at a time; a ``k`` larger than the gallery counts
    the whole gallery.
    """
    if (gallery_features is None) != (gallery_labels is None):
        raise ValueError("give both gallery_features and gallery_labels, or neither")
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    leave_one_out = gallery_features is None
    queries = F.normalize(query_features.detach().float(), dim=1)
    gallery = queries if leave_one_out else F.normalize(gallery_features.detach().float(), dim=1)
    gallery_labels = query_labels if leave_one_out else gallery_labels
    gallery_labels = gallery_labels.to(gallery.device)
    query_labels = query_labels.to(queries.device)
    depth = min(max(ks), len(gallery) - int(leave_one_out))
    if depth < 1:
        raise ValueError("the gallery is empty" + (" after leaving each query out" if leave_one_out else ""))
    first_hit = []  # rank of the first same-label item among the top ``depth``, or ``depth`` if none
    for start in range(0, len(queries), chunk_size):
        chunk = queries[start:start + chunk_size]
        similarity = chunk @ gallery.T
        if leave_one_out:
            rows = torch.arange(len(chunk), device=similarity.device)
            similarity[rows, rows + start] = float("-inf")
        neighbours = similarity.topk(depth, dim=1).indices
        hits = gallery_labels[neighbours] == query_labels[start:start + chunk_size].unsqueeze(1)
        rank = hits.int().argmax(dim=1)  # the first maximum: the first hit, or 0 when there is none
        first_hit.append(rank.masked_fill(~hits.any(dim=1), depth))
    first_hit = torch.cat(first_hit)
    return {k: (first_hit < min(k, depth)).sum().item() / len(first_hit) for k in ks}


def pair_scores(features_a: Tensor, features_b: Tensor) -> Tensor:
    """Cosine similarity of each row of ``features_a`` with the same row of ``features_b``: ``(N,)``."""
    return (F.normalize(features_a.float(), dim=1) * F.normalize(features_b.float(), dim=1)).sum(dim=1)


@dataclass(frozen=True)
class VerificationResult:
    """Area under the ROC curve, equal error rate and its threshold, and the curve itself.

    ``fpr``, ``tpr`` and ``thresholds`` run from the point ``(0, 0)`` at threshold ``+inf`` to
    ``(1, 1)``; a pair is accepted as "same" when its score is ``>=`` the threshold.
    """

    auc: float
    eer: float
    eer_threshold: float
    fpr: Tensor
    tpr: Tensor
    thresholds: Tensor


def _roc_points(scores: Tensor, same: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Cumulative false and true positive rates at each distinct score, highest first (float64, CPU)."""
    order = scores.argsort(descending=True, stable=True)
    scores, same = scores[order], same[order]
    true_positives = same.double().cumsum(0)
    false_positives = (~same).double().cumsum(0)
    last_of_value = torch.ones_like(same)
    last_of_value[:-1] = scores[1:] != scores[:-1]  # a tied group is one threshold: keep its last row
    zero = torch.zeros(1, dtype=torch.float64)
    fpr = torch.cat([zero, false_positives[last_of_value] / false_positives[-1]])
    tpr = torch.cat([zero, true_positives[last_of_value] / true_positives[-1]])
    thresholds = torch.cat([torch.full((1,), float("inf"), dtype=torch.float64), scores[last_of_value]])
    return fpr, tpr, thresholds


def verification_roc(scores: Tensor, same: Tensor) -> VerificationResult:
    """ROC curve, AUC (trapezoid rule) and EER of pair ``scores`` (higher = more alike) against ``same``.

    The EER is where the false positive rate equals the false negative rate ``1 - tpr``: linearly
    interpolated between the two neighbouring ROC points that bracket the crossing, and
    ``eer_threshold`` is interpolated in the same way (at a crossing next to the ``+inf`` start point,
    the threshold of the other point).
    """
    scores = scores.detach().double().cpu().flatten()
    same = same.detach().bool().cpu().flatten()
    if scores.shape != same.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and same {tuple(same.shape)} differ in size")
    if same.all() or not same.any():
        raise ValueError("verification needs both same and different pairs")
    fpr, tpr, thresholds = _roc_points(scores, same)
    gap = fpr - (1.0 - tpr)  # non-decreasing from -1 at (0, 0) to +1 at (1, 1)
    right = int((gap >= 0).nonzero()[0])
    if gap[right] == 0:
        eer, eer_threshold = fpr[right].item(), thresholds[right].item()
    else:
        left = right - 1
        weight = (-gap[left] / (gap[right] - gap[left])).item()
        eer = (fpr[left] + weight * (fpr[right] - fpr[left])).item()
        if torch.isinf(thresholds[left]):
            eer_threshold = thresholds[right].item()
        else:
            eer_threshold = (thresholds[left] + weight * (thresholds[right] - thresholds[left])).item()
    auc = torch.trapezoid(tpr, fpr).item()
    return VerificationResult(auc=auc, eer=eer, eer_threshold=eer_threshold, fpr=fpr, tpr=tpr,
                              thresholds=thresholds)
