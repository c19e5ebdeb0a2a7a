"""Datasets for pretraining and evaluation: where images come from, how they are held, and the DataModules.

Sources: ``torchvision_sets`` (CIFAR-10/100, STL-10), ``idx`` (Fashion-MNIST's IDX files), ``folders``
(your image folders, decoded once and cached), ``synthetic`` (toy images), all behind ``sources.load_split``.
Storage: one interface, ``storage.Storage`` (train loader, kNN/probe loaders, evaluation splits, classes, size),
named by each dataset's ``DatasetInfo.storage``: ``memory.InMemoryStorage`` (``info.ImageTensors``, a split
decoded as uint8 ``(N, C, H, W)``; ``splits`` takes subsets and held-out splits of it) or
``streamed.StreamedStorage`` (shards prepared by ``prepare``, read with litdata). Loading: ``loader`` (seeded,
resumable batches), ``samplers`` (P x K). ``evaluation`` gives the train and test images a probe is measured on.
DataModules: ``module.SSLDataModule`` (pretraining) and ``pk.PKDataModule`` (P x K batches for supervised
Siamese training), both over a storage. Each module imports on its own; the names below are imported on first use.

Example:
    >>> from ssl_siamese.data import SSLDataModule, load_split
    >>> load_split("synthetic", "train").images.shape
    torch.Size([2048, 3, 32, 32])
    >>> dm = SSLDataModule("synthetic", batch_size=64)
"""

from __future__ import annotations

from ssl_siamese._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(["DATASETS", "DatasetInfo", "DataNotFoundError", "ImageTensors", "IMAGENET_MEAN",
                     "IMAGENET_STD", "FASHION_MNIST_CLASSES", "MIN_IMAGE_SIZE", "DEFAULT_VAL_FRACTION",
                     "MAX_HELD_OUT", "check_dataset"], "ssl_siamese.data.info"),
    **dict.fromkeys(["load_torchvision", "can_connect"], "ssl_siamese.data.torchvision_sets"),
    **dict.fromkeys(["read_idx", "load_fashion_mnist", "fashion_mnist_search_paths", "FASHION_MNIST_ENV",
                     "FASHION_MNIST_SYSTEM_DIR"], "ssl_siamese.data.idx"),
    **dict.fromkeys(["make_synthetic", "SYNTHETIC_SIZES"], "ssl_siamese.data.synthetic"),
    **dict.fromkeys(["load_folder", "default_cache_dir", "folder_split_dir", "CACHE_ENV"],
                    "ssl_siamese.data.folders"),
    **dict.fromkeys(["load_split"], "ssl_siamese.data.sources"),
    **dict.fromkeys(["random_subset", "hold_out_split", "split_held_out", "keep_classes", "align_classes"],
                    "ssl_siamese.data.splits"),
    **dict.fromkeys(["evaluation_splits", "EvaluationSplits"], "ssl_siamese.data.evaluation"),
    **dict.fromkeys(["Storage", "ImageDataModule", "open_storage", "storage_class"], "ssl_siamese.data.storage"),
    **dict.fromkeys(["InMemoryStorage", "UInt8ImageDataset"], "ssl_siamese.data.memory"),
    **dict.fromkeys(["StreamedStorage"], "ssl_siamese.data.streamed"),
    **dict.fromkeys(["SSLDataModule"], "ssl_siamese.data.module"),
    **dict.fromkeys(["IMAGE_EXTENSIONS"], "ssl_siamese.data.images"),  # where folder sources look
    "pad_images": "ssl_siamese.data.padded",  # a batch of images of different sizes, with their true sizes
    **dict.fromkeys(["PKDataModule", "near_duplicate_report", "NEAR_DUPLICATE_MODES", "resolve_classes"],
                    "ssl_siamese.data.pk"),
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
