"""One split of a named dataset as uint8 tensors: the in-memory sources behind one entry point.

Example:
    >>> split = load_split("synthetic", "train")
    >>> split.images.shape, split.images.dtype
    (torch.Size([2048, 3, 32, 32]), torch.uint8)
"""

from __future__ import annotations

from pathlib import Path

from ssl_siamese.data.folders import folder_split_dir, load_folder
from ssl_siamese.data.idx import load_fashion_mnist
from ssl_siamese.data.info import DataNotFoundError, ImageTensors, check_dataset
from ssl_siamese.data.synthetic import SYNTHETIC_SIZES, make_synthetic
from ssl_siamese.data.torchvision_sets import load_torchvision


def load_split(dataset: str, split: str, data_dir: str | Path = "./data", download: bool = True,
               image_size: int | None = None, cache_dir: str | Path | None = None) -> ImageTensors:
    """Load one split of a named dataset as uint8 tensors.

    ``dataset``: cifar10, cifar100, stl10, fashion_mnist, folder, synthetic. ``split``: train or test
    (stl10 also unlabeled and train+unlabeled; folder also val). ``image_size`` resizes folders only.

    Example:
        >>> test = load_split("fashion_mnist", "test", data_dir="./data")  # doctest: +SKIP
        >>> test.images.shape
        torch.Size([10000, 1, 28, 28])
    """
    info = check_dataset(dataset)
    data_dir = Path(data_dir).expanduser().resolve()
    if dataset == "synthetic":
        if split not in SYNTHETIC_SIZES:
            raise ValueError(f"synthetic has splits 'train' and 'test', not {split!r}.")
        return make_synthetic(SYNTHETIC_SIZES[split], seed=0 if split == "train" else 1)
    if dataset == "fashion_mnist":
        return load_fashion_mnist(split, data_dir, download)
    if dataset == "folder":
        if split not in ("train", "test", "val"):
            raise ValueError(f"folder has splits 'train', 'test' and 'val', not {split!r}.")
        folder = folder_split_dir(data_dir, split)
        if folder is None:
            raise DataNotFoundError(f"No {split} split in {data_dir}: expected a subfolder {data_dir / 'test'} "
                                    f"or {data_dir / 'val'}.")
        return load_folder(folder, image_size or info.image_size, cache_dir)
    return load_torchvision(dataset, split, data_dir, download)

