"""In-memory storage: a named dataset or an image folder decoded once into uint8 tensors (fastest for small data).

Training batches are single indexing operations of the ``(N, C, H, W)`` uint8 tensor
(:class:`~ssl_siamese.data.loader.ResumableBatchLoader`); the kNN bank is the train split (or, for a labelled
folder without ``test/`` or ``val/``, the images left after a seeded per-class held-out split) and the queries
the test split (or that held-out split).

Example:
    >>> storage = InMemoryStorage({"dataset": "synthetic", "data_dir": "./data", "batch_size": 64})
    >>> storage.setup()
    >>> len(storage.train_data), len(storage.query_data)
    (2048, 512)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ssl_siamese.data.folders import folder_split_dir
from ssl_siamese.data.info import DEFAULT_VAL_FRACTION, DataNotFoundError, ImageTensors, logger
from ssl_siamese.data.loader import ResumableBatchLoader
from ssl_siamese.data.sources import load_split
from ssl_siamese.data.splits import align_classes, keep_classes, random_subset, split_held_out
from ssl_siamese.data.storage import EvaluationSplits, Storage
from ssl_siamese.data.images import IMAGE_EXTENSIONS


class UInt8ImageDataset(Dataset):
    """(image, label) pairs from uint8 tensors; nothing else happens per item."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index], self.labels[index]


def _labelled(data: ImageTensors) -> ImageTensors:
    """The images of ``data`` that have a label."""
    return data.subset(torch.nonzero(data.labels >= 0).flatten()) if (data.labels < 0).any() else data


class InMemoryStorage(Storage):
    """A dataset's splits decoded into memory (:func:`~ssl_siamese.data.sources.load_split`, cached per split).

    Options read: ``dataset``, ``data_dir``, ``download``, ``image_size``, ``cache_dir``, ``seed``, ``classes``,
    ``train_subset``, ``knn_bank_subset``, ``val_subset``, ``val_fraction``, ``batch_size``, ``drop_last``,
    ``num_workers``, ``pin_memory`` (see :class:`~ssl_siamese.data.module.SSLDataModule`).
    """

    def __init__(self, options: Mapping[str, Any]) -> None:
        super().__init__(options)
        self._splits: dict[str, ImageTensors] = {}
        self._announced = False  # the held-out split was explained
        self._told_storage = False

    @property
    def data_dir(self) -> Path:
        return Path(self.option("data_dir", "./data")).expanduser()

    # -- what the interface answers
    @property
    def num_classes(self) -> int | None:
        if self.options["dataset"] != "folder":
            return self.info.num_classes
        if self.train_data is not None:
            return len(self.train_data.classes) or None
        root = folder_split_dir(self.data_dir, "train")
        if root is None or not root.is_dir():
            return None
        entries = [e for e in root.iterdir() if not e.name.startswith(".")]
        if any(e.is_file() and e.suffix.lower() in IMAGE_EXTENSIONS for e in entries):
            return None
        return sum(e.is_dir() for e in entries) or None

    @property
    def num_train(self) -> int:
        return len(self.train_data)

    def split(self, name: str, required: bool = True) -> ImageTensors | None:
        """The whole split ``name`` in memory (loaded once); None when it is missing and not ``required``."""
        if name not in self._splits:
            try:
                self._splits[name] = load_split(self.options["dataset"], name, self.option("data_dir", "./data"),
                                                self.option("download", True), self.options.get("image_size"),
                                                self.options.get("cache_dir"))
            except DataNotFoundError:
                if required:
                    raise
                return None
        return self._splits[name]

    def query_split(self) -> str | None:
        """The split the queries come from: the dataset's test split, a folder's test/ (or val/), or None."""
        if self.options["dataset"] == "folder":
            return "test" if folder_split_dir(self.data_dir, "test") is not None else None
        return self.info.query_split

    def prepare(self) -> None:
        for split in {self.info.train_split, self.info.bank_split}:
            self.split(split)
        if self.query_split() is not None:
            self.split(self.query_split())

    def setup(self) -> None:
        seed = self.option("seed", 0)
        train = keep_classes(self.split(self.info.train_split), self.options.get("classes"))
        query_split = self.query_split()
        held_out = None
        if query_split is None and train.has_labels:  # a labelled folder without test/ or val/
            train, held_out = self._hold_out(train)
        self.train_data = random_subset(train, self.options.get("train_subset"), seed)
        if not self._told_storage:
            self._told_storage = True
            images = self.train_data.images
            rank_zero_info(f"ssl_siamese: {len(images)} training images of {self.options['dataset']} held in memory "
                           f"as uint8 {tuple(images.shape[1:])} ({images.numel() / 2**20:.0f} MiB); views made on "
                           "the device")
        self.bank_data = self.query_data = None
        self.ready = True
        bank_query = (train, held_out) if held_out is not None else self._bank_and_queries(query_split)
        if bank_query is None or len(bank_query[1]) == 0:
            return
        self.bank_data = random_subset(bank_query[0], self.options.get("knn_bank_subset"), seed + 1)
        self.query_data = random_subset(bank_query[1], self.options.get("val_subset"), seed + 2)

    def _bank_and_queries(self, query_split: str | None) -> tuple[ImageTensors, ImageTensors] | None:
        """The labelled bank split and the queries of ``query_split`` over the same classes, or None."""
        classes = self.options.get("classes")
        bank = self.split(self.info.bank_split)
        if query_split is None or not bank.has_labels:
            return None
        bank = _labelled(keep_classes(bank, classes))
        query = align_classes(keep_classes(self.split(query_split), classes), bank.classes)
        return bank, _labelled(query)

    def _hold_out(self, train: ImageTensors) -> tuple[ImageTensors, ImageTensors | None]:
        """(rest, held-out) of ``train`` by :func:`split_held_out`, saying once what was done and why."""
        fraction, seed = self.option("val_fraction", DEFAULT_VAL_FRACTION), self.option("seed", 0)
        where = self.data_dir.resolve()
        rest, held = split_held_out(train, fraction, seed)
        if not self._announced:
            self._announced = True
            if held is not None:
                logger.warning(
                    "no test/ or val/ folder in %s: holding out %d of %d training images (val_fraction %g per "
                    "class, seed %d) for kNN/probe validation; they are not trained on (--data.val_fraction 0 "
                    "trains on all, with no validation)", where, len(held), len(train), fraction, seed)
            else:
                reason = ("--data.val_fraction is 0" if fraction == 0 else
                          f"val_fraction {fraction:g} of {len(train)} images in {len(train.classes)} "
                          "classes rounds to no image per class")
                logger.warning(
                    "no test/ or val/ folder in %s and no held-out split (%s): there will be NO validation, "
                    "so no kNN accuracy, no probe validation and no embedding pictures; add images in "
                    "%s/val/<class>/ or raise --data.val_fraction", where, reason, where)
        return rest, held

    # -- loaders
    def train_loader(self, rank: int = 0, world_size: int = 1,
                     batches_done: Callable[[], int] | None = None) -> ResumableBatchLoader:
        return ResumableBatchLoader(
            self.train_data.images, self.train_data.labels, self.option("batch_size", 512), shuffle=True,
            drop_last=self.option("drop_last", True), seed=self.option("seed", 0), rank=rank, world_size=world_size,
            batches_done=batches_done, pin_memory=self.pin_memory)

    def _loader(self, data: ImageTensors) -> DataLoader:
        workers = self.option("num_workers", 0)
        return DataLoader(UInt8ImageDataset(data.images, data.labels), batch_size=self.option("batch_size", 512),
                          shuffle=False, drop_last=False, num_workers=workers, persistent_workers=workers > 0,
                          pin_memory=self.pin_memory,
                          # its own generator: each iterator draws a seed, and must not from training's RNG
                          generator=torch.Generator())

    def eval_loaders(self) -> list[DataLoader]:
        if self.bank_data is None or self.query_data is None:
            return []
        return [self._loader(self.bank_data), self._loader(self.query_data)]

    def evaluation_splits(self, note: str = "") -> EvaluationSplits:
        """The train split and the test split (a folder's test/ matched by class name), or for a labelled folder
        without test/ or val/ the share of each class that pretraining held out (its ``val_fraction`` and
        ``seed``)."""
        dataset, where = self.options["dataset"], self.data_dir.resolve()
        fraction, seed = self.option("val_fraction", DEFAULT_VAL_FRACTION), self.option("seed", 0)
        train = self.split("train")
        test_dir = folder_split_dir(where, "test") if dataset == "folder" else None
        if dataset == "folder" and test_dir is None:
            if not train.has_labels:
                raise ValueError(f"{where} has no class sub-folders, so its images have no labels to evaluate "
                                 "with; put them in one sub-folder per class.")
            train, test = split_held_out(train, fraction, seed)
            if test is None:
                raise ValueError(f"{where} has no test/ or val/ folder, and val_fraction {fraction:g} of its "
                                 f"{len(train)} images in {len(train.classes)} classes holds out none to test on: "
                                 "pass the --data.val_fraction pretraining used (0.1 by default), or add a test/ "
                                 "folder.")
            return EvaluationSplits(train, test, dataset, f"the {len(test)} images held out of {where} "
                                    f"({fraction:g} of each class, data seed {seed}), which pretraining with the "
                                    "same --data.val_fraction and --data.seed validated on and did not train on")
        test = self.split("test")
        if dataset == "folder":
            return EvaluationSplits(train, align_classes(test, train.classes), dataset, f"the folder {test_dir}")
        return EvaluationSplits(train, test, dataset, f"the test split of {dataset}")
