"""Where a DataModule's images are kept, behind one interface: held in memory, or streamed from shards.

:class:`Storage` is what :class:`~ssl_siamese.data.module.SSLDataModule` and
:class:`~ssl_siamese.data.pk.PKDataModule` ask for data: the classes, the number of training images, the
training loader (seeded, sharded over ranks, resumable mid-epoch), the kNN/probe loaders ``[bank, queries]``
and the labelled splits an evaluation recipe measures on. Two implementations:
:class:`~ssl_siamese.data.memory.InMemoryStorage` (a named dataset or an image folder decoded into uint8 tensors)
and :class:`~ssl_siamese.data.streamed.StreamedStorage` (a shard folder prepared by ``python -m
ssl_siamese.data.prepare``, read with litdata). A dataset's row in ``DATASETS`` (``DatasetInfo.storage``) names
its storage; :func:`open_storage` builds it from the data options (the DataModule's hyper-parameters).

Example:
    >>> storage = open_storage({"dataset": "synthetic", "data_dir": "./data", "batch_size": 64})
    >>> storage.setup()
    >>> storage.num_train, storage.num_classes
    (2048, 10)
    >>> images, labels = next(iter(storage.train_loader()))
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from ssl_siamese.data.info import DatasetInfo, ImageTensors, check_dataset


@dataclass
class EvaluationSplits:
    """What :func:`~ssl_siamese.data.evaluation.evaluation_splits` returns: the two splits, the dataset read and
    which images are the test ones."""

    train: ImageTensors
    test: ImageTensors
    dataset: str
    test_split: str


class Storage(ABC):
    """One dataset's images for training and evaluation, read from ``options`` (the data hyper-parameters).

    ``options`` holds at least ``dataset`` and ``data_dir``; a storage reads the others it knows with defaults
    (``batch_size``, ``num_workers``, ``seed``, ``drop_last``, ``pin_memory``, ``image_size``, subsets, ...).
    Implement the abstract members; ``train_data``, ``bank_data`` and ``query_data`` are the images held in memory,
    where a storage holds them (else None).

    Example:
        >>> class Mine(Storage): ...          # see InMemoryStorage and StreamedStorage
    """

    streamed: bool = False
    ready: bool = False  # set by setup
    train_data: ImageTensors | None = None
    bank_data: ImageTensors | None = None
    query_data: ImageTensors | None = None

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.options = options
        self.info: DatasetInfo = check_dataset(options["dataset"])

    def option(self, name: str, default: Any = None) -> Any:
        """``options[name]``, or ``default`` when the options lack it (or hold None)."""
        value = self.options.get(name)
        return default if value is None else value

    @property
    def image_size(self) -> int:
        """The side length the model works at."""
        return int(self.option("image_size", self.info.image_size))

    @property
    def pin_memory(self) -> bool:
        return bool(self.option("pin_memory", True)) and torch.cuda.is_available()

    @property
    @abstractmethod
    def num_classes(self) -> int | None:
        """Labelled classes (None when unlabelled); may be a guess before :meth:`setup`."""

    @property
    @abstractmethod
    def num_train(self) -> int:
        """Training images (after :meth:`setup`)."""

    @abstractmethod
    def prepare(self) -> None:
        """Download, decode and cache, or check, what :meth:`setup` needs; a clear error when it is not there."""

    @abstractmethod
    def setup(self) -> None:
        """Choose the training and evaluation images; cheap when called again."""

    @abstractmethod
    def train_loader(self, rank: int = 0, world_size: int = 1,
                     batches_done: Callable[[], int] | None = None) -> Any:
        """Shuffled training batches in an order fixed by the seed and the epoch, this rank's share, with
        ``state_dict``/``load_state_dict`` that resume after the ``batches_done()`` batches trained."""

    @abstractmethod
    def eval_loaders(self) -> list[DataLoader]:
        """``[bank, queries]`` for kNN and probe validation (unshuffled), or ``[]`` without labelled queries."""

    @abstractmethod
    def evaluation_splits(self, note: str = "") -> EvaluationSplits:
        """The labelled train and test images an evaluation recipe measures a backbone on, held in memory."""

    def before_transfer(self, batch: Any, device: torch.device) -> Any:
        """A training batch as the device gets it; the default leaves it as it is."""
        return batch


def resolve_dataset(dataset: str, data_dir: str | Path) -> str:
    """``dataset``, or ``"stream"`` for a ``folder`` that is a shard folder prepared by ``ssl_siamese.data.prepare``."""
    from ssl_siamese.data.streamed import looks_prepared  # litdata is imported only when a folder is checked

    return "stream" if dataset == "folder" and looks_prepared(data_dir) else dataset


def storage_class(dataset: str) -> type[Storage]:
    """The :class:`Storage` that ``DATASETS[dataset].storage`` names (``"module:Class"``), imported now."""
    module, _, name = check_dataset(dataset).storage.partition(":")
    return getattr(importlib.import_module(module), name)


def open_storage(options: Mapping[str, Any]) -> Storage:
    """The storage of ``options["dataset"]``, built from ``options`` (nothing is read yet)."""
    return storage_class(options["dataset"])(options)


def check_batches(batch_size: int, num_train: int, drop_last: bool) -> None:
    """Raise ValueError when ``drop_last`` and a batch larger than the training images would leave no batch."""
    if drop_last and batch_size > num_train:
        raise ValueError(
            f"batch_size {batch_size} is larger than the {num_train} training images, so drop_last=True would "
            f"give no batches; use a smaller --data.batch_size (at most {num_train}) or more data.")


class ImageDataModule(pl.LightningDataModule):
    """What the image DataModules share: a :class:`Storage` (``self.storage``, set by the subclass) and the
    constants the model is built with (``image_size``, ``channels``, ``mean``, ``std``)."""

    storage: Storage

    @property
    def info(self) -> DatasetInfo:
        return self.storage.info

    @property
    def image_size(self) -> int:
        """The side length the model works at."""
        return self.storage.image_size

    @property
    def channels(self) -> int:
        return self.info.channels

    @property
    def mean(self) -> tuple[float, float, float]:
        return self.info.mean

    @property
    def std(self) -> tuple[float, float, float]:
        return self.info.std

    def loader_position(self) -> dict[str, Any]:
        """This process's ``rank`` and ``world_size``, and ``batches_done``: the trainer's count of the batches
        finished this epoch (what a stateful loader's ``state_dict`` saves in checkpoints); defaults without a
        trainer."""
        trainer = self.trainer
        if trainer is None:
            return {"rank": 0, "world_size": 1, "batches_done": None}
        return {"rank": trainer.global_rank, "world_size": trainer.world_size,
                "batches_done": lambda: trainer.fit_loop.epoch_loop.batch_progress.current.processed}
