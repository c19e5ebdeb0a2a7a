"""The LightningDataModule of the pretraining recipes: uint8 images to the device, views made there.

Small datasets are held decoded in memory (fastest); a folder prepared by ``python -m
ssl_siamese.data.prepare`` is streamed from its shards (``dataset="stream"``, bounded memory, any size):
one class picks by dataset and logs which path it took.

Example:
    >>> dm = SSLDataModule("synthetic", batch_size=64)
    >>> dm.setup("fit")
    >>> images, labels = next(iter(dm.train_dataloader()))
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ssl_siamese.data.folders import folder_split_dir
from ssl_siamese.data.info import DEFAULT_VAL_FRACTION, MIN_IMAGE_SIZE, DataNotFoundError, ImageTensors, check_dataset, logger
from ssl_siamese.data.sources import load_split
from ssl_siamese.data.splits import align_classes, keep_classes, random_subset, split_held_out
from ssl_siamese.data.streamed import (
    DECODE_MODES,
    ShardFolder,
    StreamingTrainLoader,
    decode_on_device,
    eval_loader,
    looks_prepared,
)
from ssl_siamese.images import IMAGE_EXTENSIONS
from ssl_siamese.loader import ResumableBatchLoader


class UInt8ImageDataset(Dataset):
    """(image, label) pairs from uint8 tensors; nothing else happens per item."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index], self.labels[index]


class SSLDataModule(pl.LightningDataModule):
    """Serves raw uint8 images (B, C, H, W) and int64 labels; views are made on the device.

    Training batches come from the train split (shuffled, optionally a seeded ``train_subset``); the
    validation loaders are ``[kNN bank, queries]``: the train split unshuffled (optionally
    ``knn_bank_subset`` images) and the test split (optionally ``val_subset`` images). A labelled folder
    without ``test/`` or ``val/`` gets a seeded per-class validation split of ``val_fraction`` of its
    training images instead (logged; 0 turns it off, and then there is no validation). ``classes`` keeps
    only the images of those label indices in every split, e.g. to pretrain on classes 0-6 and keep 7-9
    unseen for a one-shot evaluation (the labels are used for that filter and for evaluation only).

    ``dataset="stream"`` reads a prepared shard folder (local or ``s3://``): training batches are
    ``(uint8 images padded to the batch's largest, labels, (h, w) sizes)`` decoded in ``num_workers``
    processes (or on the GPU with ``decode="device"``), the kNN bank is the train split (``knn_bank_subset``
    of it) and the queries the val split, resized and centre-cropped to ``image_size``. A ``folder`` that
    turns out to be a prepared shard folder is streamed too (logged).

    Example:
        >>> dm = SSLDataModule("fashion_mnist", data_dir="./data", batch_size=256, train_subset=2000)
        >>> dm.image_size, dm.channels, dm.num_classes
        (28, 1, 10)
    """

    def __init__(self, dataset: str = "cifar10", data_dir: str = "./data", batch_size: int = 512,
                 num_workers: int | None = None, image_size: int | None = None, train_subset: int | None = None,
                 knn_bank_subset: int | None = None, val_subset: int | None = None,
                 download: bool = True, cache_dir: str | None = None, seed: int = 0,
                 drop_last: bool = True, pin_memory: bool = True, classes: list[int] | None = None,
                 val_fraction: float = DEFAULT_VAL_FRACTION, decode: str = "workers") -> None:
        """Set the options; nothing is loaded until ``prepare_data``/``setup``.

        Args:
            dataset: cifar10, cifar100, stl10, fashion_mnist, synthetic, folder (your own images, decoded
                into memory), or stream (a folder prepared by ``python -m ssl_siamese.data.prepare``, streamed).
            data_dir: where the dataset is (downloaded to for torchvision datasets); for folder the image
                folder: train/ and test/ (or val/) with one subfolder per class each, one subfolder per
                class, or images at any depth (unlabelled).
            batch_size: images per training and evaluation batch (per device).
            num_workers: DataLoader worker processes (0: the main process): for the evaluation loaders, and
                for stream also the decoding of training images. Default: 0, and for stream the CPU count
                (at most 16).
            image_size: side length the model works at; folders are decoded to it (shorter side resized,
                centre crop). Default: the dataset's own (28 Fashion-MNIST, 32 CIFAR, 96 STL-10, 64 folders).
                At least 16.
            train_subset: train on this many images drawn with ``seed`` (all when unset).
            knn_bank_subset: kNN memory bank of this many training images (all when unset).
            val_subset: kNN/probe queries: this many validation images (all when unset).
            download: download torchvision datasets / Fashion-MNIST when missing (needs network access).
            cache_dir: folder for decoded image folders; default $SSL_SIAMESE_CACHE, else
                $XDG_CACHE_HOME/ssl_siamese, else ~/.cache/ssl_siamese.
            seed: seed of the training order and of every subset and held-out split.
            drop_last: drop the last incomplete training batch.
            pin_memory: pin host memory of batches when training on a GPU.
            classes: keep only the images of these label indices in every split, e.g. [0,1,2,3,4,5,6].
            val_fraction: for a labelled folder without test/ or val/: the fraction of training images
                (per class, at most 10,000 in all) held out with the seed for kNN and probe validation
                and not trained on; 0 trains on all of them, with no validation.
            decode: stream only: where JPEGs are decoded: "workers" (libjpeg-turbo in the DataLoader
                workers) or "device" (nvJPEG on the GPU; the workers only read bytes).
        """
        super().__init__()
        if dataset == "folder" and looks_prepared(data_dir):
            logger.warning("%s is a shard folder prepared by ssl_siamese.data.prepare: streaming it as "
                           "--data.dataset stream", data_dir)
            dataset = "stream"
        self.info = check_dataset(dataset)
        if decode not in DECODE_MODES:
            raise ValueError(f"--data.decode must be one of {', '.join(DECODE_MODES)}, not {decode!r}.")
        if dataset == "stream" and (train_subset is not None or classes is not None):
            raise ValueError("--data.train_subset and --data.classes are not available with --data.dataset stream: "
                             "prepare a folder of the images you want with python -m ssl_siamese.data.prepare.")
        if image_size is not None and image_size < MIN_IMAGE_SIZE:
            raise ValueError(
                f"--data.image_size {image_size} is too small: the smallest is {MIN_IMAGE_SIZE}. Random resized "
                f"crops keep as little as 8% of the area (about {max(1, round(0.08 ** 0.5 * image_size))} px "
                f"across at {image_size} px) and the backbones downsample by 8 (CIFAR stem, tiny_cnn) to 32, "
                f"leaving a feature map of at most {max(1, -(-image_size // 8))}x{max(1, -(-image_size // 8))}; "
                f"use at least {MIN_IMAGE_SIZE} (the datasets' own sizes are 28 for Fashion-MNIST, 32 for "
                f"CIFAR and 64 for folders).")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"--data.val_fraction must be in [0, 1), not {val_fraction}: it is the fraction of "
                             "training images held out for validation when a folder has no test/ or val/.")
        if dataset not in ("folder", "stream") and image_size is not None and image_size > 2 * self.info.image_size:
            logger.warning("--data.image_size %d is more than twice %s's %d px images: the views are upsampled, "
                           "costing %.0fx the compute of %d px for no extra detail", image_size, dataset,
                           self.info.image_size, (image_size / self.info.image_size) ** 2, self.info.image_size)
        self.save_hyperparameters()
        self.hparams.dataset = dataset
        if num_workers is None:
            self.hparams.num_workers = min(16, os.cpu_count() or 1) if dataset == "stream" else 0
        self.shards: ShardFolder | None = None
        self.bank_indices: list[int] | None = None
        self.query_indices: list[int] | None = None
        self._splits: dict[str, ImageTensors] = {}
        self._announced = False  # the held-out split was explained
        self._told_storage = self._stream_ready = False
        self.train_data: ImageTensors | None = None
        self.bank_data: ImageTensors | None = None
        self.query_data: ImageTensors | None = None

    # -- constants known before loading
    @property
    def image_size(self) -> int:
        """The side length the model works at."""
        return int(self.hparams.image_size or self.info.image_size)

    @property
    def channels(self) -> int:
        return self.info.channels

    @property
    def mean(self) -> tuple[float, float, float]:
        return self.info.mean

    @property
    def std(self) -> tuple[float, float, float]:
        return self.info.std

    @property
    def streamed(self) -> bool:
        """Whether the data is streamed from shards (else held in memory)."""
        return self.hparams.dataset == "stream"

    @property
    def num_classes(self) -> int | None:
        """Number of labelled classes (None when unlabelled); for folders a guess until ``setup``."""
        if self.streamed:
            return len(self._shard_folder().classes) or None
        if self.hparams.dataset != "folder":
            return self.info.num_classes
        if self.train_data is not None:
            return len(self.train_data.classes) or None
        root = folder_split_dir(Path(self.hparams.data_dir).expanduser(), "train")
        if root is None or not root.is_dir():
            return None
        entries = [e for e in root.iterdir() if not e.name.startswith(".")]
        if any(e.is_file() and e.suffix.lower() in IMAGE_EXTENSIONS for e in entries):
            return None
        return sum(e.is_dir() for e in entries) or None

    # -- loading
    def _load(self, split: str, required: bool = True) -> ImageTensors | None:
        if split not in self._splits:
            hp = self.hparams
            try:
                self._splits[split] = load_split(hp.dataset, split, hp.data_dir, hp.download,
                                                 hp.image_size, hp.cache_dir)
            except DataNotFoundError:
                if required:
                    raise
                return None
        return self._splits[split]

    def _query_split(self) -> str | None:
        if self.hparams.dataset == "folder":
            data_dir = Path(self.hparams.data_dir).expanduser()
            return "test" if folder_split_dir(data_dir, "test") is not None else None
        return self.info.query_split

    def _shard_folder(self) -> ShardFolder:
        if self.shards is None:
            self.shards = ShardFolder(self.hparams.data_dir)
        return self.shards

    def prepare_data(self) -> None:
        """Download (torchvision datasets) or decode and cache (folders) everything ``setup`` needs."""
        if self.streamed:
            self._shard_folder()  # a clear error now when the folder is missing or not prepared
            return
        for split in {self.info.train_split, self.info.bank_split}:
            self._load(split)
        if self._query_split() is not None:
            self._load(self._query_split())

    def setup(self, stage: str | None = None) -> None:
        if self.streamed:
            return self._setup_stream()
        hp = self.hparams
        train = keep_classes(self._load(self.info.train_split), hp.classes)
        query_split = self._query_split()
        held_out = None
        if query_split is None and train.has_labels:  # a labelled folder without test/ or val/
            train, held_out = self._hold_out(train)
        self.train_data = random_subset(train, hp.train_subset, hp.seed)
        if not self._told_storage:
            self._told_storage = True
            images = self.train_data.images
            rank_zero_info(f"ssl_siamese: {len(images)} training images of {hp.dataset} held in memory as uint8 "
                           f"{tuple(images.shape[1:])} ({images.numel() / 2**20:.0f} MiB); views made on the device")
        if hp.drop_last and hp.batch_size > len(self.train_data):
            raise ValueError(
                f"batch_size {hp.batch_size} is larger than the {len(self.train_data)} training images, so "
                f"drop_last=True would give no batches; use a smaller --data.batch_size (at most "
                f"{len(self.train_data)}) or more data.")
        self.bank_data = self.query_data = None
        if held_out is not None:
            bank, query = train, held_out
        else:
            bank = self._load(self.info.bank_split)
            if query_split is None or not bank.has_labels:
                return
            bank, query = keep_classes(bank, hp.classes), keep_classes(self._load(query_split), hp.classes)
            bank = bank.subset(torch.nonzero(bank.labels >= 0).flatten()) if (bank.labels < 0).any() else bank
            query = align_classes(query, bank.classes)
            query = query.subset(torch.nonzero(query.labels >= 0).flatten()) if (query.labels < 0).any() else query
        if len(query) == 0:
            return
        self.bank_data = random_subset(bank, hp.knn_bank_subset, hp.seed + 1)
        self.query_data = random_subset(query, hp.val_subset, hp.seed + 2)

    def _setup_stream(self) -> None:
        """Sizes and evaluation indices from ``dataset.json``; nothing is read into memory."""
        hp, shards = self.hparams, self._shard_folder()
        n_train = shards.num_images("train")
        if n_train == 0:
            raise DataNotFoundError(f"{shards.root} has no training images (dataset.json says splits "
                                    f"{shards.meta.get('splits')}); prepare it again from a folder with images.")
        if hp.drop_last and hp.batch_size > n_train:
            raise ValueError(f"batch_size {hp.batch_size} is larger than the {n_train} training images, so "
                             f"drop_last=True would give no batches; use a smaller --data.batch_size.")
        self.bank_indices = self.query_indices = None
        if shards.classes and shards.has_split("val"):
            self.bank_indices = self._seeded_indices(n_train, hp.knn_bank_subset, hp.seed + 1)
            self.query_indices = self._seeded_indices(shards.num_images("val"), hp.val_subset, hp.seed + 2)
        if not self._stream_ready:
            self._stream_ready = True
            where = "on the GPU (nvJPEG)" if hp.decode == "device" else f"in {hp.num_workers} DataLoader workers"
            evaluation = (f"kNN/probe: {len(self.bank_indices)} bank images vs {len(self.query_indices)} val images"
                          if self.bank_indices is not None and self.query_indices is not None
                          else "no labelled val split: no kNN/probe")
            rank_zero_info(f"ssl_siamese: streaming {n_train} training images from the shards in {shards.root} "
                           f"(decoded {where}, views made on the device at {self.image_size} px); {evaluation}")

    @staticmethod
    def _seeded_indices(n: int, size: int | None, seed: int) -> list[int]:
        if size is None or size >= n:
            return list(range(n))
        generator = torch.Generator().manual_seed(seed)
        return torch.randperm(n, generator=generator)[:size].sort().values.tolist()

    def _hold_out(self, train: ImageTensors) -> tuple[ImageTensors, ImageTensors | None]:
        """(rest, held-out) of ``train`` by :func:`split_held_out`, saying once what was done and why."""
        hp = self.hparams
        where = Path(hp.data_dir).expanduser().resolve()
        rest, held = split_held_out(train, hp.val_fraction, hp.seed)
        if not self._announced:
            self._announced = True
            if held is not None:
                logger.warning(
                    "no test/ or val/ folder in %s: holding out %d of %d training images (val_fraction %g per "
                    "class, seed %d) for kNN/probe validation; they are not trained on (--data.val_fraction 0 "
                    "trains on all, with no validation)", where, len(held), len(train), hp.val_fraction, hp.seed)
            else:
                reason = ("--data.val_fraction is 0" if hp.val_fraction == 0 else
                          f"val_fraction {hp.val_fraction:g} of {len(train)} images in {len(train.classes)} "
                          "classes rounds to no image per class")
                logger.warning(
                    "no test/ or val/ folder in %s and no held-out split (%s): there will be NO validation, "
                    "so no kNN accuracy, no probe validation and no embedding pictures; add images in "
                    "%s/val/<class>/ or raise --data.val_fraction", where, reason, where)
        return rest, held

    # -- loaders
    def _loader(self, data: ImageTensors, shuffle: bool, drop_last: bool) -> DataLoader:
        workers = self.hparams.num_workers
        return DataLoader(UInt8ImageDataset(data.images, data.labels), batch_size=self.hparams.batch_size,
                          shuffle=shuffle, drop_last=drop_last, num_workers=workers,
                          persistent_workers=workers > 0,
                          pin_memory=self.hparams.pin_memory and torch.cuda.is_available(),
                          # its own generator: each iterator draws a seed, and must not from training's RNG
                          generator=torch.Generator())

    def train_dataloader(self) -> ResumableBatchLoader | StreamingTrainLoader:
        """Shuffled batches in an order fixed by ``seed`` and the epoch, sharded over ranks, resumable mid-epoch."""
        trainer = self.trainer
        batches_done = None
        if trainer is not None:  # what Lightning has finished of this epoch, saved in checkpoints
            batches_done = lambda: trainer.fit_loop.epoch_loop.batch_progress.current.processed  # noqa: E731
        pin_memory = self.hparams.pin_memory and torch.cuda.is_available()
        if self.streamed:
            if not self._stream_ready:
                self.setup("fit")
            hp = self.hparams
            return StreamingTrainLoader(self._shard_folder(), hp.batch_size, hp.num_workers, hp.seed, hp.drop_last,
                                        hp.decode, pin_memory and hp.decode != "device", batches_done=batches_done)
        if self.train_data is None:
            self.setup("fit")
        return ResumableBatchLoader(
            self.train_data.images, self.train_data.labels, self.hparams.batch_size, shuffle=True,
            drop_last=self.hparams.drop_last, seed=self.hparams.seed,
            rank=trainer.global_rank if trainer is not None else 0,
            world_size=trainer.world_size if trainer is not None else 1, batches_done=batches_done,
            pin_memory=self.hparams.pin_memory and torch.cuda.is_available())

    def val_dataloader(self) -> list[DataLoader]:
        """``[bank_loader, query_loader]`` for kNN evaluation, or ``[]`` when the data has no labels."""
        if self.streamed:
            if not self._stream_ready:
                self.setup("validate")
            if self.bank_indices is None or self.query_indices is None:
                return []
            hp, pin = self.hparams, self.hparams.pin_memory and torch.cuda.is_available()
            return [eval_loader(self._shard_folder(), split, self.image_size, indices, hp.batch_size,
                                hp.num_workers, pin)
                    for split, indices in (("train", self.bank_indices), ("val", self.query_indices))]
        if self.train_data is None:
            self.setup("validate")
        if self.bank_data is None or self.query_data is None:
            return []
        return [self._loader(self.bank_data, shuffle=False, drop_last=False),
                self._loader(self.query_data, shuffle=False, drop_last=False)]

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """With ``decode="device"``: the training batch's JPEG bytes decoded on the GPU (nvJPEG) and padded."""
        if self.streamed and self.hparams.decode == "device" and isinstance(batch[0], list):
            device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
            images, sizes = decode_on_device(batch[0], device)
            return images, batch[1], sizes
        return batch
