"""One split of a named dataset as uint8 tensors: the in-memory sources behind one entry point.

Each dataset's row in ``DATASETS`` names its source (``DatasetInfo.source``, ``"module:function"``): a function
that takes a :class:`~ssl_siamese.data.info.SplitRequest` and returns the split as
:class:`~ssl_siamese.data.info.ImageTensors`. The built-in ones are below, over ``torchvision_sets``, ``idx``,
``folders`` and ``synthetic``.

Example:
    >>> split = load_split("synthetic", "train")
    >>> split.images.shape, split.images.dtype
    (torch.Size([2048, 3, 32, 32]), torch.uint8)
"""

from __future__ import annotations

import importlib
from pathlib import Path

from ssl_siamese.data.info import DataNotFoundError, ImageTensors, SplitRequest, check_dataset


def load_split(dataset: str, split: str, data_dir: str | Path = "./data", download: bool = True,
               image_size: int | None = None, cache_dir: str | Path | None = None) -> ImageTensors:
    """Load one split of a named dataset as uint8 tensors, with the source its ``DATASETS`` row names.

    ``dataset``: cifar10, cifar100, stl10, fashion_mnist, folder, synthetic. ``split``: train or test
    (stl10 also unlabeled and train+unlabeled; folder also val). ``image_size`` resizes folders only.

    Example:
        >>> test = load_split("fashion_mnist", "test", data_dir="./data")  # doctest: +SKIP
        >>> test.images.shape
        torch.Size([10000, 1, 28, 28])
    """
    info = check_dataset(dataset)
    if info.source is None:
        raise ValueError(f"{dataset} is not read into memory split by split: its storage ({info.storage}) serves "
                         "it; for evaluation images use ssl_siamese.data.evaluation_splits.")
    module, _, name = info.source.partition(":")
    source = getattr(importlib.import_module(module), name)
    return source(SplitRequest(dataset, split, Path(data_dir).expanduser().resolve(), download, image_size,
                               cache_dir))


def synthetic_split(request: SplitRequest) -> ImageTensors:
    """Toy images of 10 classes (:func:`~ssl_siamese.data.synthetic.make_synthetic`), a fixed seed per split."""
    from ssl_siamese.data.synthetic import SYNTHETIC_SIZES, make_synthetic

    if request.split not in SYNTHETIC_SIZES:
        raise ValueError(f"synthetic has splits 'train' and 'test', not {request.split!r}.")
    return make_synthetic(SYNTHETIC_SIZES[request.split], seed=0 if request.split == "train" else 1)


def fashion_mnist_split(request: SplitRequest) -> ImageTensors:
    """Fashion-MNIST's IDX files (:func:`~ssl_siamese.data.idx.load_fashion_mnist`)."""
    from ssl_siamese.data.idx import load_fashion_mnist

    return load_fashion_mnist(request.split, request.data_dir, request.download)


def folder_split(request: SplitRequest) -> ImageTensors:
    """A split of an image folder (train/, test/ or val/), decoded once and cached
    (:func:`~ssl_siamese.data.folders.load_folder`)."""
    from ssl_siamese.data.folders import folder_split_dir, load_folder

    if request.split not in ("train", "test", "val"):
        raise ValueError(f"folder has splits 'train', 'test' and 'val', not {request.split!r}.")
    folder = folder_split_dir(request.data_dir, request.split)
    if folder is None:
        raise DataNotFoundError(f"No {request.split} split in {request.data_dir}: expected a subfolder "
                                f"{request.data_dir / 'test'} or {request.data_dir / 'val'}.")
    return load_folder(folder, request.image_size or check_dataset("folder").image_size, request.cache_dir)


def torchvision_split(request: SplitRequest) -> ImageTensors:
    """CIFAR-10/100 and STL-10 through torchvision (:func:`~ssl_siamese.data.torchvision_sets.load_torchvision`)."""
    from ssl_siamese.data.torchvision_sets import load_torchvision

    return load_torchvision(request.dataset, request.split, request.data_dir, request.download)
