"""P x K training batches on some classes, and held-out evaluation on other, unseen classes.

Metric learning is judged on classes the model never saw. :class:`PKDataModule` trains on ``train_classes``
of the train split with :class:`PKBatchSampler` (P classes x K images per batch) and keeps ``eval_classes``
of the evaluation split for few-shot, verification and retrieval metrics. Disjoint labels are not enough when
a dataset holds near-copies of one picture under two labels, so :func:`near_duplicate_report` finds them
across the split (perceptual hash to find candidates, pixel difference to confirm) and the data module
reports them, drops them from training, or fails.

Example:
    >>> dm = PKDataModule("fashion_mnist", "./data", train_classes=range(7), eval_classes=range(7, 10), p=7, k=8)
    >>> dm.setup("fit")                                        # drops training near-copies of eval images
    >>> images, labels = next(iter(dm.train_dataloader()))     # (56, 1, 28, 28) uint8, 7 classes x 8
    >>> print(dm.duplicate_report)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ssl_siamese.data.images import grayscale, to_float_rgb
from ssl_siamese.data.info import ImageTensors
from ssl_siamese.data.loader import IndexedBatchLoader
from ssl_siamese.data.memory import InMemoryStorage
from ssl_siamese.data.samplers import PKBatchSampler, assert_no_class_overlap
from ssl_siamese.data.storage import ImageDataModule, storage_class

NEAR_DUPLICATE_MODES = ("report", "drop", "fail")


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
    """Near-copies between images ``a`` (train) and ``b`` (eval): hash candidates confirmed by their pixels.

    A pair is a candidate when its average hashes differ in at most ``threshold`` bits, and a near-copy
    when also its mean absolute pixel difference is at most ``pixel_threshold`` (of 255). Hashes alone are
    far too coarse (on Fashion-MNIST many different shoes share an 8x8 hash): ``hash_matches_in_b`` counts
    the eval images the hash alone would flag. ``duplicates_in_b`` eval images have a near-copy among the
    ``a`` images ``duplicates_in_a``; ``pairs`` lists up to ``max_examples`` of the ``num_pairs`` near-copy
    pairs ``(index in a, index in b, hash distance, pixel difference)``, closest first.
    """

    threshold: int
    pixel_threshold: float
    num_a: int
    num_b: int
    hash_matches_in_b: int
    duplicates_in_b: int
    duplicates_in_a: list[int]
    num_pairs: int
    pairs: list[tuple[int, int, int, float]]

    def to_dict(self, index_a: Tensor | None = None, index_b: Tensor | None = None) -> dict[str, Any]:
        """Counts and the (capped) example pairs, for ``results.json``; not the full ``duplicates_in_a``.

        ``index_a`` / ``index_b`` map the positions in ``a`` / ``b`` to other indices (e.g. in the dataset).
        """
        def position(index: Tensor | None, n: int) -> int:
            return n if index is None else int(index[n])

        return {"hash_threshold": self.threshold, "pixel_threshold": self.pixel_threshold,
                "train_images": self.num_a, "eval_images": self.num_b,
                "hash_matches_in_eval": self.hash_matches_in_b, "eval_images_with_copy": self.duplicates_in_b,
                "train_copies": len(self.duplicates_in_a), "num_pairs": self.num_pairs,
                "pairs": [{"train": position(index_a, i), "eval": position(index_b, j), "hash_distance": d,
                           "pixel_difference": round(diff, 3)} for i, j, d, diff in self.pairs]}

    def __str__(self) -> str:
        examples = ", ".join(f"a[{i}]~b[{j}] (pixels {diff:.1f})" for i, j, _, diff in self.pairs[:5])
        return (f"near-duplicates (hash Hamming <= {self.threshold}, then mean pixel difference <= "
                f"{self.pixel_threshold:g} of 255): {self.duplicates_in_b} of {self.num_b} eval images have a "
                f"near-copy among {len(self.duplicates_in_a)} of {self.num_a} train images "
                f"({self.hash_matches_in_b} eval images match by hash alone); examples: {examples or 'none'}")


def _mean_abs_difference(x_a: Tensor, x_b: Tensor, index_a: Tensor, index_b: Tensor,
                         batch: int = 65536) -> Tensor:
    """``mean(|x_a[index_a[n]] - x_b[index_b[n]]|)`` over dim 1 for each pair ``n``, ``batch`` pairs at a time."""
    return torch.cat([(x_a[ia].float() - x_b[ib].float()).abs().mean(dim=1)
                      for ia, ib in zip(index_a.split(batch), index_b.split(batch))] or [torch.zeros(0)])


def _block_means(images: Tensor, block: int = 4) -> tuple[Tensor, float]:
    """Means over ``block`` x ``block`` tiles, flattened, and the share of the pixels the tiles cover."""
    tiles = F.avg_pool2d(images.float(), block).flatten(1)
    return tiles, tiles.shape[1] * block * block / images[0].numel()


def near_duplicate_report(images_a: Tensor, images_b: Tensor, threshold: int = 3, hash_size: int = 8,
                          pixel_threshold: float = 5.0, max_examples: int = 20,
                          chunk_size: int = 512) -> NearDuplicateReport:
    """Find near-copies between uint8 ``images_a`` (e.g. train) and ``images_b`` (e.g. eval), ``(N, C, H, W)``.

    Every pair whose average hashes differ in <= ``threshold`` bits (counted exactly, ``chunk_size`` rows of
    ``b`` at a time) is a candidate; its mean absolute pixel difference then decides. The defaults flag
    none of the 3000 Fashion-MNIST test images of classes 7-9 against the 42000 training images of classes
    0-6 (no pair of these differs by less than 9 of 255), and find copies with a few grey levels of noise.

    Example:
        >>> report = near_duplicate_report(train.images, test.images)
        >>> print(report)         # counts and example index pairs
    """
    if images_a.shape[1:] != images_b.shape[1:]:
        raise ValueError(f"images_a and images_b must share (C, H, W), got {tuple(images_a.shape[1:])} "
                         f"and {tuple(images_b.shape[1:])}")
    signs_a = average_hash(images_a, hash_size).float() * 2 - 1
    signs_b = average_hash(images_b, hash_size).float() * 2 - 1
    bits = signs_a.shape[1]
    candidates_a, candidates_b, candidate_distances = [], [], []
    for start, chunk in zip(range(0, len(signs_b), chunk_size), signs_b.split(chunk_size)):
        # With bits as +-1, agreements - disagreements = the dot product, so Hamming = (bits - dot) / 2.
        dot = chunk @ signs_a.T
        index_b, index_a = (dot >= bits - 2 * threshold).nonzero(as_tuple=True)
        candidates_a.append(index_a)
        candidates_b.append(index_b + start)
        candidate_distances.append(((bits - dot[index_b, index_a]) / 2).round().long())
    index_a, index_b, hamming = torch.cat(candidates_a), torch.cat(candidates_b), torch.cat(candidate_distances)

    # Tile means differ by no more than the pixels do (scaled by the share of pixels the tiles cover), so
    # a candidate whose tiles already differ by more than pixel_threshold is no copy; compare the rest.
    (tiles_a, covered), (tiles_b, _) = _block_means(images_a), _block_means(images_b)
    close = _mean_abs_difference(tiles_a, tiles_b, index_a, index_b) * covered <= pixel_threshold
    index_a, index_b, hamming = index_a[close], index_b[close], hamming[close]
    pixels = _mean_abs_difference(images_a.flatten(1), images_b.flatten(1), index_a, index_b)
    copy = pixels <= pixel_threshold
    index_a, index_b, hamming, pixels = index_a[copy], index_b[copy], hamming[copy], pixels[copy]
    pairs = [(int(index_a[n]), int(index_b[n]), int(hamming[n]), float(pixels[n]))
             for n in pixels.argsort(stable=True)[:max_examples]]
    return NearDuplicateReport(
        threshold=threshold, pixel_threshold=pixel_threshold, num_a=len(images_a), num_b=len(images_b),
        hash_matches_in_b=len(torch.cat(candidates_b).unique()), duplicates_in_b=len(index_b.unique()),
        duplicates_in_a=index_a.unique().tolist(), num_pairs=len(pixels), pairs=pairs)


def _restrict(data: ImageTensors, classes: list[int], size: int | None, seed: int) -> Tensor:
    """Indices of the images of ``classes``; then at most ``size`` of them, chosen with ``seed``."""
    index = torch.isin(data.labels, torch.tensor(classes)).nonzero().flatten()
    if size is not None and size < len(index):
        chosen = torch.randperm(len(index), generator=torch.Generator().manual_seed(seed))[:size]
        index = index[chosen.sort().values]
    return index


def resolve_classes(selection: Iterable[int | str], names: list[str], option: str = "classes") -> list[int]:
    """Label indices of ``selection``, sorted: integers are indices, strings are class names.

    A name matches exactly, else ignoring case (when that is unambiguous). Raises ``ValueError`` (prefixed
    with ``option``) for an index out of ``range(len(names))`` or an unknown name.

    Example:
        >>> resolve_classes(["Sneaker", 8, "ankle boot"], fashion_mnist_names, "eval_classes")
        [7, 8, 9]
    """
    lowered: dict[str, list[int]] = {}
    for index, name in enumerate(names):
        lowered.setdefault(name.lower(), []).append(index)
    chosen = set()
    for item in selection:
        if isinstance(item, str) and item.strip().lstrip("-").isdigit():
            item = int(item)
        if isinstance(item, str):
            if item in names:
                chosen.add(names.index(item))
            elif len(lowered.get(item.lower(), [])) == 1:
                chosen.add(lowered[item.lower()][0])
            else:
                raise ValueError(f"{option}: no class named {item!r}")
        elif not 0 <= int(item) < len(names):
            raise ValueError(f"{option}: index {item} is out of range: the data has {len(names)} classes, "
                             f"0-{len(names) - 1}")
        else:
            chosen.add(int(item))
    return sorted(chosen)


def _relabel(data: ImageTensors, names: list[str]) -> ImageTensors:
    """``data`` with its labels re-indexed into ``names`` (which holds all of ``data.classes``)."""
    if data.classes == names:
        return data
    mapping = torch.tensor([names.index(name) for name in data.classes] + [-1], dtype=torch.int64)
    labels = torch.where(data.labels >= 0, mapping[data.labels.clamp_min(0)], data.labels)
    return ImageTensors(data.images, labels, list(names))


class PKDataModule(ImageDataModule):
    """P x K batches from ``train_classes`` of ``train_split``; ``eval_data`` from ``eval_classes`` of ``eval_split``.

    Classes are label indices or class names. ``setup`` checks the selection before anything trains (indices
    in range, names known, the two sets disjoint, at least 2 classes each, at least 2 images of every class
    on its side) and raises ``ValueError`` with :meth:`class_table` (index, name and image counts of every
    class) when it is wrong. A ``folder`` whose ``train/`` and ``test/`` hold different sub-folders gets one
    index per name over both; a folder without ``test/`` or ``val/`` takes its eval images from the training
    folder (the classes are disjoint anyway; ``eval_split_used`` says which split it was). ``setup`` looks for
    near-copies across the split with :func:`near_duplicate_report`: ``duplicate_report`` (positions in
    ``train_data`` before any drop) and ``near_duplicates``, a JSON-ready summary with the pairs' indices in
    their splits and the number of dropped images. There is no validation loader: evaluate ``eval_data``
    after training (see ``ssl_siamese.recipes.siamese``).

    Args:
        dataset, data_dir, download: as for ``load_split``.
        train_classes, eval_classes: label indices or class names (e.g. ``range(7)`` and ``["Sneaker", 8, 9]``);
            after ``setup`` both are sorted lists of indices, and ``class_names`` names every index.
        p, k: classes per batch and images per class; a batch holds ``p * k`` images. ``p=None``: every train
            class, at most 16.
        batches_per_epoch: batches per epoch on each rank; ``None``: about one pass over the training images.
        train_subset, eval_subset: at most this many images (seeded), or all.
        train_split, eval_split: which splits the two sides come from.
        class_balanced: ``PKBatchSampler`` picks the ``p`` classes uniformly (``True``) or in proportion to
            their size (``False``).
        near_duplicates: what to do with training images that are near-copies of eval images: ``report``
            (keep them), ``drop`` (remove them from ``train_data``; the eval set stays as it is), ``fail``
            (raise ``ValueError``).
        hash_size: side of the average hash used to find candidates.
    """

    def __init__(self, dataset: str = "fashion_mnist", data_dir: str = "./data",
                 train_classes: Iterable[int | str] = range(7), eval_classes: Iterable[int | str] = range(7, 10),
                 p: int | None = 7, k: int = 8, batches_per_epoch: int | None = None,
                 train_subset: int | None = None, eval_subset: int | None = None,
                 train_split: str = "train", eval_split: str = "test", download: bool = True,
                 seed: int = 0, class_balanced: bool = True,
                 near_duplicates: str = "drop", hash_size: int = 8) -> None:
        super().__init__()
        if not issubclass(storage_class(dataset), InMemoryStorage):
            raise ValueError(f"PKDataModule holds its images in memory (P x K batches are drawn by label), so "
                             f"{dataset!r} cannot be used: pass the image folder with dataset='folder'.")
        if near_duplicates not in NEAR_DUPLICATE_MODES:
            raise ValueError(f"near_duplicates must be one of {', '.join(NEAR_DUPLICATE_MODES)}, "
                             f"got {near_duplicates!r}")
        self.train_classes: list[int | str] = list(dict.fromkeys(train_classes))  # indices after setup
        self.eval_classes: list[int | str] = list(dict.fromkeys(eval_classes))
        self.class_names: list[str] = []
        self.eval_split_used = eval_split
        self._split_counts: tuple[Tensor, Tensor] | None = None  # images per class in the two splits
        self.save_hyperparameters(ignore=["train_classes", "eval_classes"])
        self.storage = InMemoryStorage(self.hparams)  # the two splits, loaded once
        self.train_data: ImageTensors | None = None
        self.eval_data: ImageTensors | None = None
        self.train_index: Tensor | None = None  # position of each train_data / eval_data image in its split
        self.eval_index: Tensor | None = None
        self.duplicate_report: NearDuplicateReport | None = None
        self.near_duplicates: dict[str, Any] = {}

    @property
    def p(self) -> int:
        """Classes per batch: ``p``, or with ``p=None`` every train class (at most 16; known after ``setup``)."""
        return self.hparams.p or min(16, len(self.train_classes))

    @property
    def batch_size(self) -> int:
        return self.p * self.hparams.k

    def setup(self, stage: str | None = None) -> None:
        if self.train_data is not None:
            return
        hp = self.hparams
        train = self.storage.split(hp.train_split)
        held_out = self.storage.split(hp.eval_split, required=hp.dataset != "folder")
        if held_out is None:  # a folder without test/ or val/
            held_out, self.eval_split_used = train, hp.train_split
        train, held_out = self._select_classes(train, held_out)
        self.train_index = _restrict(train, self.train_classes, hp.train_subset, hp.seed)
        self.eval_index = _restrict(held_out, self.eval_classes, hp.eval_subset, hp.seed + 1)
        self.train_data, self.eval_data = train.subset(self.train_index), held_out.subset(self.eval_index)
        self._check_near_duplicates()
        self._check_class_sizes()
        n_train = len(self.train_data)
        assert_no_class_overlap(torch.cat([self.train_data.labels, self.eval_data.labels]),
                                torch.arange(n_train), n_train + torch.arange(len(self.eval_data)))

    def _select_classes(self, train: ImageTensors, held_out: ImageTensors) -> tuple[ImageTensors, ImageTensors]:
        """One class index per name over both splits; resolve and check the two selections."""
        if not train.classes:
            raise ValueError(f"The {self.hparams.train_split} split of {self.hparams.dataset} has no class labels; "
                             "supervised Siamese training needs one sub-folder per class.")
        names = list(train.classes)
        if held_out.classes != names:  # e.g. a folder whose test/ lacks (or adds) a class sub-folder
            names = sorted(set(names) | set(held_out.classes))
            train, held_out = _relabel(train, names), _relabel(held_out, names)
        self.class_names = names
        self._split_counts = tuple(torch.bincount(data.labels[data.labels >= 0], minlength=len(names))
                                   for data in (train, held_out))
        try:
            train_classes = resolve_classes(self.train_classes, names, "train_classes")
            eval_classes = resolve_classes(self.eval_classes, names, "eval_classes")
            shared = sorted(set(train_classes) & set(eval_classes))
            if shared:
                raise ValueError("train_classes and eval_classes share " + ", ".join(
                    f"{c} {names[c]}" for c in shared) + "; they must be disjoint")
            for option, chosen in (("train_classes", train_classes), ("eval_classes", eval_classes)):
                if len(chosen) < 2:
                    raise ValueError(f"{option} needs at least 2 classes (triplets and N-way episodes need "
                                     f"negatives), got {len(chosen)}")
            if self.hparams.p is not None and self.hparams.p > len(train_classes):
                raise ValueError(f"p={self.hparams.p} classes per batch, but train_classes holds only "
                                 f"{len(train_classes)}")
        except ValueError as error:
            raise ValueError(f"{error}.\n{self.class_table()}") from None
        self.train_classes, self.eval_classes = train_classes, eval_classes
        return train, held_out

    def _check_class_sizes(self) -> None:
        """Every selected class needs 2 images on its side: a positive pair to train, a support and a query."""
        problems = []
        for side, data, classes, why in (
                ("train", self.train_data, self.train_classes, "P x K batches need 2 per class"),
                ("eval", self.eval_data, self.eval_classes, "1-shot episodes need a support and a query")):
            split = self.hparams.train_split if side == "train" else self.eval_split_used
            if self.hparams[f"{side}_subset"] is not None:
                why += f", counted in the {side}_subset drawn"
            counts = torch.bincount(data.labels, minlength=len(self.class_names))
            problems += [f"{side} class {c} {self.class_names[c]} has "
                         f"{'no image' if counts[c] == 0 else 'only 1 image'} in the {split} split ({why})"
                         for c in classes if counts[c] < 2]
        if problems:
            raise ValueError("; ".join(problems) + ".\n" + self.class_table())

    def class_table(self) -> str:
        """Index, name and images per class in the two splits, with each selected class's side (after ``setup``)."""
        train_counts, eval_counts = self._split_counts
        chosen = {**{c: "train" for c in self.train_classes}, **{c: "eval" for c in self.eval_classes}}
        width = max(len(name) for name in self.class_names)
        lines = [f"classes (index, name, images in the {self.hparams.train_split} / {self.eval_split_used} split, "
                 f"selected as):"]
        lines += [f"  {c:>3} {name:<{width}}  {int(train_counts[c]):>6} train / {int(eval_counts[c]):>5} eval"
                  f"  {chosen.get(c, '-')}" for c, name in enumerate(self.class_names)]
        return "\n".join(lines)

    def _check_near_duplicates(self) -> None:
        report = near_duplicate_report(self.train_data.images, self.eval_data.images,
                                       hash_size=self.hparams.hash_size)
        mode = self.hparams.near_duplicates
        self.duplicate_report = report
        self.near_duplicates = {"mode": mode, "dropped_train_images": 0,
                                **report.to_dict(self.train_index, self.eval_index)}
        if mode == "fail" and report.duplicates_in_a:
            raise ValueError(f"{report}. Remove them, or pass near_duplicates='drop' to leave them out of "
                             "training.")
        if mode == "drop" and report.duplicates_in_a:
            keep = torch.ones(len(self.train_data), dtype=torch.bool)
            keep[report.duplicates_in_a] = False
            self.train_data = self.train_data.subset(keep.nonzero().flatten())
            self.train_index = self.train_index[keep]
            self.near_duplicates["dropped_train_images"] = len(report.duplicates_in_a)

    def train_dataloader(self) -> IndexedBatchLoader:
        """P x K batches, new each epoch, resumable mid-epoch; under DDP each rank trains on its own share."""
        if self.train_data is None:
            self.setup("fit")
        hp, position = self.hparams, self.loader_position()
        sampler = PKBatchSampler(self.train_data.labels, p=self.p, k=hp.k, num_batches=hp.batches_per_epoch,
                                 seed=hp.seed, class_balanced=hp.class_balanced, rank=position["rank"],
                                 world_size=position["world_size"])
        return IndexedBatchLoader(self.train_data.images, self.train_data.labels, sampler,
                                  pin_memory=self.storage.pin_memory, batches_done=position["batches_done"])
