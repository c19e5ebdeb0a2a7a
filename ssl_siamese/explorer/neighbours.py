"""Each embedding's nearest other embeddings, and the near-duplicate pairs, by cosine similarity.

Both come from one exact search of the set against itself with :class:`ssl_siamese.search.embeddings.EmbeddingIndex`
(a chunked matrix product, or faiss's exact ``IndexFlatIP`` on large sets when faiss is installed). The
near-duplicate pairs are read off the neighbour lists; only the rows whose whole list lies above the
threshold (they may have more such partners than ``k``) are compared with every row again, so the pairs are
exact, not an approximation bounded by ``k``.

No fixed cosine means "duplicate": a small ConvNet's nearest neighbours are all above 0.98 (0.98 listed 7,444
pairs among 402 real images, one real duplicate in eight), a ResNet's spread wider. :func:`duplicate_threshold`
reads the threshold off the set itself: a near duplicate is far closer to its partner than images usually are
to their nearest neighbour, an outlier of the nearest-neighbour distances ``1 - cosine`` on a log scale
(median minus ``deviations`` robust standard deviations, MAD x 1.4826).

Example:
    >>> indices, similarities = nearest_neighbours(torch.randn(500, 64), k=10)   # (500, 10) each, self excluded
    >>> threshold, rule = duplicate_threshold(similarities)                      # cosine, and how it was chosen
    >>> pairs, total = near_duplicate_pairs(features, indices, similarities, threshold)
    >>> pairs.first, pairs.second, pairs.similarity   # i < j, most similar first
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ssl_siamese.search.embeddings import EmbeddingIndex

DUPLICATE_DEVIATIONS = 4.0  # robust standard deviations below the typical log nearest-neighbour distance
MIN_SPREAD = 0.1  # floor of that deviation (log units), so a set of equally spaced images lists none
SEARCH_CHUNK = 1024  # query rows per matrix product: 1024 x N float32 similarities (200 MB for N = 50,000)


class DuplicatePairs(NamedTuple):
    """Pairs ``(first[i], second[i])`` with ``first < second`` and their cosine ``similarity``, most similar first."""

    first: np.ndarray
    second: np.ndarray
    similarity: np.ndarray


def nearest_neighbours(features: Tensor | np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most cosine-similar *other* rows of each row: ``(indices int64, similarities float32)``, ``(N, k)``.

    ``k`` is capped at ``N - 1``. A row is left out of its own list even when exact copies of it tie with it.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}.")
    index = EmbeddingIndex(features, chunk_size=SEARCH_CHUNK)
    count = len(index)
    k = min(k, count - 1)
    if k < 1:
        return np.zeros((count, 0), dtype=np.int64), np.zeros((count, 0), dtype=np.float32)
    scores, indices = index.search(index.features, k + 1)
    is_self = indices == torch.arange(count).unsqueeze(1)
    drop = is_self.clone()
    drop[~is_self.any(1), -1] = True  # self tied out of the list by copies: drop the last instead
    keep = ~drop
    return indices[keep].view(count, k).numpy(), scores[keep].view(count, k).numpy()


def near_duplicate_pairs(features: Tensor | np.ndarray, indices: np.ndarray, similarities: np.ndarray,
                         threshold: float, max_pairs: int | None = None) -> tuple[DuplicatePairs, int]:
    """Every pair of rows with cosine similarity ``>= threshold``: ``(pairs, total)``.

    ``indices``/``similarities`` are :func:`nearest_neighbours` of ``features``. ``pairs`` holds the
    ``max_pairs`` most similar (all when None); ``total`` counts them all. A threshold that most rows pass
    with more than ``k`` partners (0.5 on a random network's features) compares those rows with every row
    and lists up to N^2/2 pairs: keep it near 1 for duplicates.
    """
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"A cosine-similarity threshold lies in [-1, 1], got {threshold}.")
    count = len(indices)
    rows = np.repeat(np.arange(count), indices.shape[1])
    found = {(min(i, j), max(i, j)): s for i, j, s in zip(rows.tolist(), indices.ravel().tolist(),
                                                          similarities.ravel().tolist()) if s >= threshold}
    full = np.flatnonzero(similarities[:, -1] >= threshold) if indices.shape[1] else np.zeros(0, dtype=np.int64)
    if len(full):  # these rows may have more partners above the threshold than their k neighbours
        normalised = F.normalize(torch.as_tensor(features).float(), dim=1)
        for chunk in torch.as_tensor(full).split(SEARCH_CHUNK):
            similarity = normalised[chunk] @ normalised.T
            similarity[torch.arange(len(chunk)), chunk] = -2.0  # not a pair with itself
            for a, b in (similarity >= threshold).nonzero().tolist():
                i, j = int(chunk[a]), b
                found.setdefault((min(i, j), max(i, j)), float(similarity[a, b]))
    ordered = sorted(found.items(), key=lambda item: (-item[1], item[0]))
    kept = ordered if max_pairs is None else ordered[:max_pairs]
    first = np.asarray([pair[0] for pair, _ in kept], dtype=np.int64)
    second = np.asarray([pair[1] for pair, _ in kept], dtype=np.int64)
    return DuplicatePairs(first, second, np.asarray([s for _, s in kept], dtype=np.float32)), len(ordered)


def duplicate_threshold(similarities: np.ndarray, deviations: float = DUPLICATE_DEVIATIONS) -> tuple[float, str]:
    """The cosine similarity at and above which a pair counts as a near duplicate in this set, and how it was chosen.

    ``similarities`` are :func:`nearest_neighbours`' ``(N, k)``. With ``d`` each image's distance ``1 - cosine``
    to its nearest neighbour, the threshold is the distance ``exp(median(log d) - deviations * 1.4826 *
    MAD(log d))``: pairs far closer than images of this set usually are to their nearest neighbour (exact
    copies, re-encodings), whatever the backbone's range of cosines.

    Example:
        >>> threshold, rule = duplicate_threshold(nearest_neighbours(features, k=10)[1])
    """
    if similarities.shape[1] == 0:
        return 1.0, "no pairs: fewer than two images"
    distance = np.clip(1.0 - similarities[:, 0].astype(np.float64), 1e-12, None)
    logs = np.log(distance)
    median = float(np.median(logs))
    spread = max(1.4826 * float(np.median(np.abs(logs - median))), MIN_SPREAD)
    limit = float(np.exp(median - deviations * spread))
    threshold = 1.0 - limit
    rule = (f"chosen from these embeddings: the typical distance (1 - cosine) of an image to its nearest neighbour "
            f"is {np.exp(median):.3g} (median); pairs {np.exp(median) / limit:.0f}x closer than that, {deviations:g} "
            f"robust deviations below it on a log scale, count as near duplicates: cosine >= {threshold:.6f}")
    return threshold, rule
