"""P x K training batches on some classes, and held-out evaluation on other, unseen classes.

Metric learning is judged on classes the model never saw. :class:`PKDataModule` trains on ``train_classes``
of the train split with :class:`PKBatchSampler` (P classes x K images per batch) and keeps ``eval_classes``
of the evaluation split for few-shot, verification and retrieval metrics. Disjoint labels are not enough when
a dataset holds near-copies of one picture under two labels, so :func:`near_duplicate_report` compares
perceptual hashes across the split.

Example:
    >>> dm = PKDataModule("fashion_mnist", "./data", train_classes=range(7), eval_classes=range(7, 10), p=7, k=8)
    >>> dm.setup("fit")
    >>> images, labels = next(iter(dm.train_dataloader()))     # (56, 1, 28, 28) uint8, 7 classes x 8
    >>> report = near_duplicate_report(dm.train_data.images, dm.eval_data.images, threshold=0)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from ssl_siamese.augment import grayscale, to_float_rgb
from ssl_siamese.data import DATASETS, ImageTensors, UInt8ImageDataset, load_split
from ssl_siamese.samplers import PKBatchSampler, assert_no_class_overlap


def average_hash(images: Tensor, hash_size: int = 8) -> Tensor:
    """Average hash: grayscale, area-downsample to ``hash_size``², bit = pixel > the image's mean. ``(N, hash_size²)`` bool.

    Example:
        >>> average_hash(torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)).shape
        torch.Size([4, 64])
    """
    small = F.adaptive_avg_pool2d(grayscale(to_float_rgb(images)), hash_size).flatten(1)
    return small > small.mean(dim=1, keepdim=True)


@dataclass(frozen=True)
class NearDuplicateReport:
    """How many images of ``b`` have a near-duplicate in ``a`` (Hamming distance <= ``threshold``).

    ``pairs`` lists up to ``max_examples`` ``(index in a, index in b, distance, pixel difference)``, closest
    first, with the mean absolute pixel difference in [0, 255] to tell true copies (about 0) from look-alikes;
    ``min_distance`` is the smallest distance between any image of ``a`` and any of ``b``. Hashes are
    coarse: on Fashion-MNIST many different shoes share an 8x8 hash, so read the examples before trusting
    the count (``hash_size=16`` is stricter).
    """

    threshold: int
    num_a: int
    num_b: int
    duplicates_in_b: int
    pairs: list[tuple[int, int, int, float]]
    min_distance: int

    def __str__(self) -> str:
        examples = ", ".join(f"a[{i}]~b[{j}] (d={d}, pixels {diff:.1f})" for i, j, d, diff in self.pairs[:5])
        return (f"near-duplicates (average hash, Hamming <= {self.threshold}): {self.duplicates_in_b} of "
                f"{self.num_b} eval images match one of {self.num_a} train images; closest distance "
                f"{self.min_distance}; examples: {examples or 'none'}")


def near_duplicate_report(images_a: Tensor, images_b: Tensor, threshold: int = 0, hash_size: int = 8,
                          max_examples: int = 10, chunk_size: int = 512) -> NearDuplicateReport:
    """Compare average hashes of uint8 ``images_a`` (e.g. train) and ``images_b`` (e.g. eval), ``(N, C, H, W)``.

    Distances are counted exactly for every pair, ``chunk_size`` rows of ``b`` at a time.

    Example:
        >>> report = near_duplicate_report(train.images, test.images, threshold=2)
        >>> print(report)         # counts, closest distance, example index pairs
    """
    hash_a, hash_b = average_hash(images_a, hash_size).float(), average_hash(images_b, hash_size).float()
    bits = hash_a.shape[1]
    nearest, nearest_index = [], []
    for chunk in hash_b.split(chunk_size):
        # Hamming distance = number of differing bits = bits - agreements on ones - agreements on zeros.
        distance = bits - chunk @ hash_a.T - (1 - chunk) @ (1 - hash_a).T
        values, index = distance.min(dim=1)
        nearest.append(values.round().long())
        nearest_index.append(index)
    nearest, nearest_index = torch.cat(nearest), torch.cat(nearest_index)
    hits = (nearest <= threshold).nonzero().flatten()
    hits = hits[nearest[hits].argsort(stable=True)][:max_examples]
    pairs = [(int(nearest_index[j]), int(j), int(nearest[j]),
              (images_a[nearest_index[j]].float() - images_b[j].float()).abs().mean().item()) for j in hits]
    return NearDuplicateReport(threshold=threshold, num_a=len(images_a), num_b=len(images_b),
                               duplicates_in_b=int((nearest <= threshold).sum()), pairs=pairs,
                               min_distance=int(nearest.min()))


def _restrict(data: ImageTensors, classes: list[int], size: int | None, seed: int) -> ImageTensors:
    """The images of ``classes``; then at most ``size`` of them, chosen with ``seed``."""
    index = torch.isin(data.labels, torch.tensor(classes)).nonzero().flatten()
    if size is not None and size < len(index):
        chosen = torch.randperm(len(index), generator=torch.Generator().manual_seed(seed))[:size]
        index = index[chosen.sort().values]
    return data.subset(index)


class PKDataModule(pl.LightningDataModule):
    """P x K batches from ``train_classes`` of ``train_split``; ``eval_data`` from ``eval_classes`` of ``eval_split``.

    The two class sets must be disjoint (checked with ``assert_no_class_overlap``). There is no validation
    loader: evaluate ``eval_data`` after training (see ``ssl_siamese.recipes.siamese``).

    Args:
        dataset, data_dir, download: as for ``load_split``.
        train_classes, eval_classes: label values (e.g. ``range(7)`` and ``range(7, 10)``).
        p, k: classes per batch and images per class; a batch holds ``p * k`` images.
        batches_per_epoch: ``None``: about one pass over the training images.
        train_subset, eval_subset: at most this many images (seeded), or all.
        train_split, eval_split: which splits the two sides come from.
    """

    def __init__(self, dataset: str = "fashion_mnist", data_dir: str = "./data",
                 train_classes: Iterable[int] = range(7), eval_classes: Iterable[int] = range(7, 10),
                 p: int = 7, k: int = 8, batches_per_epoch: int | None = None,
                 train_subset: int | None = None, eval_subset: int | None = None,
                 train_split: str = "train", eval_split: str = "test", download: bool = True,
                 num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        if dataset not in DATASETS:
            raise ValueError(f"Unknown dataset {dataset!r}. Valid names: {', '.join(DATASETS)}.")
        self.info = DATASETS[dataset]
        self.train_classes, self.eval_classes = sorted(set(train_classes)), sorted(set(eval_classes))
        shared = set(self.train_classes) & set(self.eval_classes)
        if shared:
            raise ValueError(f"train_classes and eval_classes share {sorted(shared)}; they must be disjoint")
        self.save_hyperparameters(ignore=["train_classes", "eval_classes"])
        self.train_data: ImageTensors | None = None
        self.eval_data: ImageTensors | None = None

    @property
    def batch_size(self) -> int:
        return self.hparams.p * self.hparams.k

    @property
    def image_size(self) -> int:
        return self.info.image_size

    @property
    def mean(self) -> tuple[float, float, float]:
        return self.info.mean

    @property
    def std(self) -> tuple[float, float, float]:
        return self.info.std

    def setup(self, stage: str | None = None) -> None:
        if self.train_data is not None:
            return
        hp = self.hparams
        train = load_split(hp.dataset, hp.train_split, hp.data_dir, hp.download)
        held_out = train if hp.eval_split == hp.train_split else load_split(
            hp.dataset, hp.eval_split, hp.data_dir, hp.download)
        self.train_data = _restrict(train, self.train_classes, hp.train_subset, hp.seed)
        self.eval_data = _restrict(held_out, self.eval_classes, hp.eval_subset, hp.seed + 1)
        n_train = len(self.train_data)
        assert_no_class_overlap(torch.cat([self.train_data.labels, self.eval_data.labels]),
                                torch.arange(n_train), n_train + torch.arange(len(self.eval_data)))

    def train_dataloader(self) -> DataLoader:
        if self.train_data is None:
            self.setup("fit")
        hp = self.hparams
        sampler = PKBatchSampler(self.train_data.labels, p=hp.p, k=hp.k, num_batches=hp.batches_per_epoch,
                                 seed=hp.seed)
        return DataLoader(UInt8ImageDataset(self.train_data.images, self.train_data.labels),
                          batch_sampler=sampler, num_workers=hp.num_workers,
                          persistent_workers=hp.num_workers > 0)
