"""Label-aware sampling for supervised Siamese metric learning.

Triplet mining needs every batch to hold several classes with several samples each (P x K batches,
Hermans et al., 2017); pair losses need balanced positive and negative pairs; and metric-learning
evaluation needs classes that were never seen in training. torch and lightly offer none of these;
pytorch-metric-learning's ``MPerClassSampler`` gives P x K batches, but not the pairs or the class-disjoint
split, and is an extra dependency for these few lines.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Sampler


def _as_numpy_labels(labels: Sequence[int] | Tensor | np.ndarray) -> np.ndarray:
    array = labels.detach().cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
    if array.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {array.shape}")
    return array


def _group_by_class(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """-> (classes, order, starts, counts): class c's indices are ``order[starts[c]:starts[c] + counts[c]]``."""
    order = np.argsort(labels, kind="stable")
    classes, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
    return classes, order, starts, counts


class PKBatchSampler(Sampler[list[int]]):
    """Batches of ``p`` distinct classes x ``k`` samples per class, for triplet mining.

    Classes with fewer than 2 samples are never drawn (they could only be negatives, never anchors with a
    positive). A class with fewer than ``k`` samples gives each of its samples once, then the remainder
    drawn with replacement; otherwise the ``k`` samples are distinct. ``class_balanced=True`` picks the
    ``p`` classes uniformly, so rare classes are seen as often as common ones; ``False`` picks them in
    proportion to their size. Batches depend only on ``seed`` and the epoch: call ``set_epoch`` at the start
    of each epoch, as with ``DistributedSampler`` (Lightning only does so for ``batch_sampler.sampler``,
    so call it yourself, e.g. from ``on_train_epoch_start``, or use ``IndexedBatchLoader``).

    Under DDP pass ``rank`` and ``world_size``: every rank draws the same ``num_batches * world_size``
    batches from the shared seed and takes every ``world_size``-th one, so the ranks train on different
    P x K batches and together see what one process would draw for ``world_size`` times the batches.

    Example:
        >>> sampler = PKBatchSampler(dataset_labels, p=8, k=4)
        >>> loader = DataLoader(dataset, batch_sampler=sampler)  # batches of 32, 8 classes x 4
    """

    def __init__(self, labels: Sequence[int] | Tensor, p: int, k: int, num_batches: int | None = None,
                 seed: int = 0, class_balanced: bool = True, rank: int = 0, world_size: int = 1) -> None:
        super().__init__()
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if p < 1 or k < 2:
            raise ValueError(f"need p >= 1 and k >= 2 (one positive per anchor), got p={p}, k={k}")
        labels = _as_numpy_labels(labels)
        classes, order, starts, counts = _group_by_class(labels)
        eligible = counts >= 2
        if eligible.sum() < p:
            raise ValueError(f"only {int(eligible.sum())} classes have >= 2 samples, fewer than p={p}")
        self.members = [order[s:s + c] for s, c in zip(starts[eligible], counts[eligible])]
        self.classes = classes[eligible]
        self.p, self.k, self.seed, self.class_balanced = p, k, seed, class_balanced
        self.rank, self.world_size = rank, world_size
        per_rank = max(1, len(labels) // (p * k * world_size))  # about one pass over the data per epoch
        self.num_batches = per_rank if num_batches is None else num_batches
        if self.num_batches < 1:
            raise ValueError(f"num_batches must be >= 1, got {num_batches}")
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch's batches; the same ``(seed, epoch)`` always gives the same batches."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    def _draw(self, members: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if len(members) >= self.k:
            return rng.choice(members, size=self.k, replace=False)
        extra = rng.choice(members, size=self.k - len(members), replace=True)
        return np.concatenate([rng.permutation(members), extra])

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        sizes = np.array([len(m) for m in self.members], dtype=np.float64)
        weights = None if self.class_balanced else sizes / sizes.sum()
        for b in range(self.num_batches * self.world_size):
            chosen = rng.choice(len(self.members), size=self.p, replace=False, p=weights)
            batch = np.concatenate([self._draw(self.members[c], rng) for c in chosen])
            if b % self.world_size == self.rank:
                yield batch.tolist()


def balanced_pairs(labels: Sequence[int] | Tensor, num_pairs: int, seed: int = 0,
                   num_positive: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Index pairs ``(i, j, same)`` for pair losses: ``num_pairs // 2`` positive pairs, the rest negative.

    Positive pairs go round-robin over the classes with >= 2 samples (two distinct samples of one class);
    negative pairs take their first class round-robin over all classes and the second uniformly among the
    others. So every class appears about equally often, whatever its size. ``num_positive`` sets another
    share of positives (0: negatives only, which need no class with 2 samples). Positives need a class
    with >= 2 samples; negatives need >= 2 classes.

    Example:
        >>> i, j, same = balanced_pairs(dataset_labels, num_pairs=1000, seed=0)
        >>> loss = ContrastiveLoss()(model(x[i]), model(x[j]), same)
    """
    labels = _as_numpy_labels(labels)
    classes, order, starts, counts = _group_by_class(labels)
    num_positive = num_pairs // 2 if num_positive is None else num_positive
    if not 0 <= num_positive <= num_pairs:
        raise ValueError(f"num_positive must be in [0, num_pairs={num_pairs}], got {num_positive}")
    num_negative = num_pairs - num_positive
    if num_positive > 0 and not (counts >= 2).any():
        raise ValueError("positive pairs need a class with >= 2 samples; every class here has one "
                         "(pass num_positive=0 for negative pairs only)")
    if num_negative > 0 and len(classes) < 2:
        raise ValueError(f"negative pairs need >= 2 classes, got only class {classes.tolist()} "
                         "(pass num_positive=num_pairs for positive pairs only)")
    rng = np.random.default_rng(seed)

    eligible = np.flatnonzero(counts >= 2)
    pos_class = eligible[rng.permutation(len(eligible))][np.arange(num_positive) % max(1, len(eligible))]
    first = rng.integers(0, counts[pos_class])
    second = (first + rng.integers(1, counts[pos_class])) % counts[pos_class]  # distinct from first
    pos_i, pos_j = order[starts[pos_class] + first], order[starts[pos_class] + second]

    num_classes = len(classes)
    neg_a = rng.permutation(num_classes)[np.arange(num_negative) % num_classes]
    neg_b = (neg_a + rng.integers(1, max(2, num_classes), size=num_negative)) % num_classes  # another class
    neg_i = order[starts[neg_a] + rng.integers(0, counts[neg_a])]
    neg_j = order[starts[neg_b] + rng.integers(0, counts[neg_b])]

    i = torch.as_tensor(np.concatenate([pos_i, neg_i]), dtype=torch.long)
    j = torch.as_tensor(np.concatenate([pos_j, neg_j]), dtype=torch.long)
    same = torch.cat([torch.ones(num_positive, dtype=torch.bool), torch.zeros(num_negative, dtype=torch.bool)])
    shuffle = torch.as_tensor(rng.permutation(num_pairs), dtype=torch.long)
    return i[shuffle], j[shuffle], same[shuffle]


def class_disjoint_split(labels: Sequence[int] | Tensor,
                         held_out_classes: Iterable[int]) -> tuple[Tensor, Tensor]:
    """``(train_idx, test_idx)``: samples of ``held_out_classes`` go to test, all others to train.

    Metric learning is evaluated on classes never seen in training. Unknown held-out classes are an error.

    Example:
        >>> train_idx, test_idx = class_disjoint_split(dataset_labels, held_out_classes=range(50, 100))
        >>> assert_no_class_overlap(dataset_labels, train_idx, test_idx)
    """
    labels = _as_numpy_labels(labels)
    held_out = np.unique(np.asarray(list(held_out_classes), dtype=labels.dtype))
    missing = np.setdiff1d(held_out, labels)
    if len(missing):
        raise ValueError(f"held-out classes not in labels: {missing.tolist()}")
    is_test = np.isin(labels, held_out)
    return (torch.as_tensor(np.flatnonzero(~is_test), dtype=torch.long),
            torch.as_tensor(np.flatnonzero(is_test), dtype=torch.long))


def assert_no_class_overlap(labels: Sequence[int] | Tensor, train_idx: Sequence[int] | Tensor,
                            test_idx: Sequence[int] | Tensor) -> None:
    """Raises ``AssertionError`` naming the shared classes if train and test indices share a class."""
    labels = _as_numpy_labels(labels)
    train = np.unique(labels[_as_numpy_labels(train_idx).astype(np.int64)])
    test = np.unique(labels[_as_numpy_labels(test_idx).astype(np.int64)])
    shared = np.intersect1d(train, test)
    if len(shared):
        raise AssertionError(f"train and test share classes {shared.tolist()}")
