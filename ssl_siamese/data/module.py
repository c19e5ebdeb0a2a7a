"""The LightningDataModule of the pretraining recipes: uint8 images to the device, views made there.

Small datasets are held decoded in memory (fastest); a folder prepared by ``python -m
ssl_siamese.data.prepare`` is streamed from its shards (``dataset="stream"``, bounded memory, any size). Which
one is the dataset's :class:`~ssl_siamese.data.storage.Storage` (``self.storage``): this class checks the
options and hands every question about the data to it.

Example:
    >>> dm = SSLDataModule("synthetic", batch_size=64)
    >>> dm.setup("fit")
    >>> images, labels = next(iter(dm.train_dataloader()))
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch.utils.data import DataLoader

from ssl_siamese.data.info import DEFAULT_VAL_FRACTION, MIN_IMAGE_SIZE, ImageTensors, check_dataset, logger
from ssl_siamese.data.loader import ResumableBatchLoader
from ssl_siamese.data.memory import UInt8ImageDataset
from ssl_siamese.data.storage import ImageDataModule, check_batches, open_storage, resolve_dataset
from ssl_siamese.data.streamed import DECODE_MODES, ShardFolder, StreamingTrainLoader

__all__ = ["SSLDataModule", "UInt8ImageDataset"]


class SSLDataModule(ImageDataModule):
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
        if resolve_dataset(dataset, data_dir) != dataset:
            logger.warning("%s is a shard folder prepared by ssl_siamese.data.prepare: streaming it as "
                           "--data.dataset stream", data_dir)
            dataset = "stream"
        info = check_dataset(dataset)
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
        if dataset not in ("folder", "stream") and image_size is not None and image_size > 2 * info.image_size:
            logger.warning("--data.image_size %d is more than twice %s's %d px images: the views are upsampled, "
                           "costing %.0fx the compute of %d px for no extra detail", image_size, dataset,
                           info.image_size, (image_size / info.image_size) ** 2, info.image_size)
        self.save_hyperparameters()
        self.hparams.dataset = dataset
        if num_workers is None:
            self.hparams.num_workers = min(16, os.cpu_count() or 1) if dataset == "stream" else 0
        self.storage = open_storage(self.hparams)  # reads the hyper-parameters as they are now, and later

    # -- the storage's answers, under the names the recipes, callbacks and tests read
    @property
    def streamed(self) -> bool:
        """Whether the data is streamed from shards (else held in memory)."""
        return self.storage.streamed

    @property
    def num_classes(self) -> int | None:
        """Number of labelled classes (None when unlabelled); for folders a guess until ``setup``."""
        return self.storage.num_classes

    @property
    def train_data(self) -> ImageTensors | None:
        """The training images held in memory (after ``setup``; None when streamed)."""
        return self.storage.train_data

    @property
    def bank_data(self) -> ImageTensors | None:
        """The kNN bank held in memory (None when streamed or without labelled queries)."""
        return self.storage.bank_data

    @property
    def query_data(self) -> ImageTensors | None:
        """The kNN/probe queries held in memory (None when streamed or without labelled queries)."""
        return self.storage.query_data

    @property
    def shards(self) -> ShardFolder | None:
        """The shard folder read (``dataset="stream"``), else None."""
        return self.storage.shards if self.streamed else None

    # -- Lightning's hooks
    def prepare_data(self) -> None:
        """Download (torchvision datasets), decode and cache (folders) or check (shards) what ``setup`` needs."""
        self.storage.prepare()

    def setup(self, stage: str | None = None) -> None:
        self.storage.setup()
        check_batches(self.hparams.batch_size, self.storage.num_train, self.hparams.drop_last)

    def train_dataloader(self) -> ResumableBatchLoader | StreamingTrainLoader:
        """Shuffled batches in an order fixed by ``seed`` and the epoch, sharded over ranks, resumable mid-epoch."""
        if not self.storage.ready:
            self.setup("fit")
        return self.storage.train_loader(**self.loader_position())

    def val_dataloader(self) -> list[DataLoader]:
        """``[bank_loader, query_loader]`` for kNN evaluation, or ``[]`` when the data has no labels."""
        if not self.storage.ready:
            self.setup("validate")
        return self.storage.eval_loaders()

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """With ``decode="device"``: the training batch's JPEG bytes decoded on the GPU (nvJPEG) and padded."""
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        return self.storage.before_transfer(batch, device)
