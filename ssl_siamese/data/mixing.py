"""How mixed the training batches are: distinct classes per batch, against a uniform shuffle's exact figure.

A contrastive method takes its negatives from the batch, so a batch must look like a uniform sample of the
data (issue 23: streamed batches from class-sorted shards held 1.25 of Imagenette's 10 classes). For a batch
of ``b`` images drawn without replacement from ``N`` images, ``n_c`` of them in class ``c``, class ``c`` is
missing with probability ``C(N - n_c, b) / C(N, b)``: the expected number of distinct classes is the sum
over classes of one minus that, and its variance follows from the same counts for pairs of classes.

Example:
    >>> uniform_distinct_classes([30, 30, 40], batch_size=8)  # (mean, standard deviation)  # doctest: +ELLIPSIS
    (2.88..., 0.32...)
    >>> distinct_classes_per_batch(datamodule.train_dataloader())    # doctest: +SKIP
    [3, 3, 2, 3, ...]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import combinations, islice
from math import comb
from typing import Any


def uniform_distinct_classes(counts: Sequence[int], batch_size: int) -> tuple[float, float]:
    """Mean and standard deviation of the number of distinct classes in a batch of ``batch_size`` drawn
    uniformly without replacement from ``counts[c]`` images of each class ``c`` (exact, no sampling)."""
    total = sum(counts)
    if not 0 < batch_size <= total:
        raise ValueError(f"batch_size must be between 1 and the {total} images, not {batch_size}.")
    draws = comb(total, batch_size)
    missing = [comb(total - n, batch_size) / draws for n in counts]
    mean = len(counts) - sum(missing)
    variance = sum(p * (1 - p) for p in missing) + 2 * sum(
        comb(total - counts[c] - counts[d], batch_size) / draws - missing[c] * missing[d]
        for c, d in combinations(range(len(counts)), 2))
    return mean, max(variance, 0.0) ** 0.5


def distinct_classes_per_batch(batches: Iterable[Any], limit: int | None = None) -> list[int]:
    """The number of distinct labels in each batch (labels are a batch's second item, as every training
    loader of :class:`~ssl_siamese.data.SSLDataModule` gives them), for at most ``limit`` batches."""
    return [len(set(batch[1].tolist())) for batch in islice(batches, limit)]
