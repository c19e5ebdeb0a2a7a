"""N-way K-shot evaluation of frozen features with nearest prototypes (Snell et al. 2017, cosine variant).

Each episode draws ``n_way`` classes, then ``k_shot`` support and ``n_query`` query samples of each,
without overlap. A class prototype is the mean of its L2-normalised support embeddings; each query takes
the class of the prototype with the highest cosine similarity. Rows with a negative label (unlabelled,
-1) are never drawn. The features should come from classes that were held out of training.

Example:
    >>> result = fewshot_episodes(features, labels, n_way=5, k_shot=1, n_query=15, episodes=600)
    >>> print(f"5-way 1-shot {100 * result.mean:.2f} +- {100 * result.ci95:.2f}")
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class FewShotResult:
    """Mean episode accuracy, its 95% confidence interval half-width and the per-episode accuracies.

    ``support_indices`` ``(episodes, n_way, k_shot)`` and ``query_indices`` ``(episodes, n_way, n_query)``
    index the input rows; row ``j`` of an episode is its class ``j``.
    """

    mean: float
    ci95: float
    accuracies: Tensor
    support_indices: Tensor
    query_indices: Tensor


def _class_index_table(labels: Tensor, per_class: int) -> tuple[Tensor, Tensor]:
    """Row indices of each class (label >= 0) with at least ``per_class`` samples, padded with -1: ``(C, max)``."""
    classes, counts = labels.unique(return_counts=True)
    keep = (counts >= per_class) & (classes >= 0)
    eligible = classes[keep]
    order = labels.argsort(stable=True)
    sorted_labels = labels[order]
    starts = torch.searchsorted(sorted_labels, eligible)
    sizes = counts[keep]
    width = int(sizes.max()) if len(sizes) else 0
    offsets = torch.arange(width)
    valid = offsets < sizes.unsqueeze(1)
    positions = (starts.unsqueeze(1) + offsets).clamp_max(len(labels) - 1)
    table = torch.where(valid, order[positions], torch.full_like(positions, -1))
    return table, valid


def max_queries(labels: Tensor, n_way: int, k_shot: int = 1) -> int:
    """The largest ``n_query`` for which ``n_way`` classes have ``k_shot + n_query`` samples; 0 when none does.

    That is the ``n_way``-th largest class size minus ``k_shot`` (negative labels are not counted).

    Example:
        >>> max_queries(torch.tensor([0] * 5 + [1] * 8 + [2] * 3), n_way=3)   # smallest class: 3 = 1 + 2
        2
    """
    labels = labels.detach().long().cpu()
    counts = labels[labels >= 0].unique(return_counts=True)[1].sort(descending=True).values
    return max(0, int(counts[n_way - 1]) - k_shot) if len(counts) >= n_way else 0


def fewshot_episodes(features: Tensor, labels: Tensor, n_way: int = 5, k_shot: int = 1, n_query: int = 15,
                     episodes: int = 600, seed: int = 0) -> FewShotResult:
    """Accuracy of nearest-prototype classification over ``episodes`` random episodes.

    ``ci95`` is ``1.96 * std / sqrt(episodes)`` with the population standard deviation, as in the usual
    few-shot protocol. Sampling uses its own generator seeded with ``seed`` (on the CPU), so results do
    not depend on the device or on global random state. Raises ``ValueError`` when fewer than ``n_way``
    classes have ``k_shot + n_query`` samples (:func:`max_queries` gives the largest ``n_query`` that
    fits). Negative labels (unlabelled rows) are ignored.
    """
    per_class = k_shot + n_query
    cpu_labels = labels.detach().long().cpu()
    table, valid = _class_index_table(cpu_labels, per_class)
    if len(table) < n_way:
        most = max_queries(cpu_labels, n_way, k_shot)
        allowed = (f"this data allows at most {most} queries per class" if most > 0 else
                   f"this data allows no {n_way}-way {k_shot}-shot episode at all")
        raise ValueError(f"{n_way}-way {k_shot}-shot episodes with {n_query} queries need {n_way} classes of "
                         f"at least {per_class} samples; only {len(table)} of "
                         f"{len(cpu_labels[cpu_labels >= 0].unique())} classes have that many ({allowed})")
    features = F.normalize(features.detach().float(), dim=1)
    generator = torch.Generator().manual_seed(seed)
    target = torch.arange(n_way, device=features.device).repeat_interleave(n_query)
    accuracies, supports, queries = [], [], []
    for _ in range(episodes):
        chosen = torch.randperm(len(table), generator=generator)[:n_way]
        keys = torch.rand(n_way, table.shape[1], generator=generator).masked_fill(~valid[chosen], 2.0)
        picks = table[chosen].gather(1, keys.argsort(dim=1)[:, :per_class])  # (n_way, k_shot + n_query)
        embeddings = features[picks.to(features.device)]
        prototypes = F.normalize(embeddings[:, :k_shot].mean(dim=1), dim=1)
        query = embeddings[:, k_shot:].reshape(n_way * n_query, -1)
        predicted = (query @ prototypes.T).argmax(dim=1)
        accuracies.append((predicted == target).float().mean())
        supports.append(picks[:, :k_shot])
        queries.append(picks[:, k_shot:])
    accuracies = torch.stack(accuracies).cpu()
    std = accuracies.double().std(correction=0).item()
    return FewShotResult(mean=accuracies.double().mean().item(), ci95=1.96 * std / math.sqrt(episodes),
                         accuracies=accuracies, support_indices=torch.stack(supports),
                         query_indices=torch.stack(queries))
