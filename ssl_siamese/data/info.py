"""Names, constants and the in-memory form of the datasets: what every data module shares.

Example:
    >>> DATASETS["cifar10"].image_size
    32
    >>> split = ImageTensors(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.tensor([0, 1, 0, 1]), ["a", "b"])
    >>> len(split.subset(torch.tensor([0, 2])))
    2
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor

logger = logging.getLogger("ssl_siamese")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot"]
MIN_IMAGE_SIZE = 16  # smaller: random crops of a few pixels, a 1x1 or 2x2 feature map (see SSLDataModule)
DEFAULT_VAL_FRACTION = 0.1
MAX_HELD_OUT = 10_000


@dataclass(frozen=True)
class DatasetInfo:
    """Constants of a named dataset, known without loading it, and where it is read from.

    ``source`` (``"module:function"``, imported on use) reads one split into memory: called with a
    :class:`SplitRequest`, it returns :class:`ImageTensors` (see :func:`~ssl_siamese.data.sources.load_split`).
    ``storage`` (``"module:Class"``) is the :class:`~ssl_siamese.data.storage.Storage` that serves the dataset;
    the in-memory one reads its splits through ``source``, the streamed one needs none.
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int
    channels: int
    num_classes: int | None
    train_split: str = "train"
    bank_split: str = "train"
    query_split: str = "test"
    source: str | None = None
    storage: str = "ssl_siamese.data.memory:InMemoryStorage"


TORCHVISION_SOURCE = "ssl_siamese.data.sources:torchvision_split"


@dataclass(frozen=True)
class SplitRequest:
    """What a ``DatasetInfo.source`` function is asked for: ``split`` of ``dataset``, found in (or downloaded to,
    when ``download``) ``data_dir``; ``image_size`` and ``cache_dir`` for sources that decode files (folders)."""

    dataset: str
    split: str
    data_dir: Path
    download: bool = True
    image_size: int | None = None
    cache_dir: str | Path | None = None


DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 32, 3, 10, source=TORCHVISION_SOURCE),
    "cifar100": DatasetInfo((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 32, 3, 100, source=TORCHVISION_SOURCE),
    "stl10": DatasetInfo((0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713), 96, 3, 10,
                         train_split="train+unlabeled", source=TORCHVISION_SOURCE),
    "fashion_mnist": DatasetInfo((0.2860,) * 3, (0.3530,) * 3, 28, 1, 10,
                                 source="ssl_siamese.data.sources:fashion_mnist_split"),
    "synthetic": DatasetInfo((0.5,) * 3, (0.25,) * 3, 32, 3, 10, source="ssl_siamese.data.sources:synthetic_split"),
    "folder": DatasetInfo(IMAGENET_MEAN, IMAGENET_STD, 64, 3, None, source="ssl_siamese.data.sources:folder_split"),
    "stream": DatasetInfo(IMAGENET_MEAN, IMAGENET_STD, 224, 3, None, query_split="val",  # prepared shards
                          storage="ssl_siamese.data.streamed:StreamedStorage"),
}


@dataclass
class ImageTensors:
    """One split of a dataset, fully decoded.

    ``images`` is uint8 ``(N, C, H, W)`` with C in {1, 3}; ``labels`` is int64 ``(N,)``, -1 where
    unlabelled; ``classes`` names the labels (empty when there are none).

    Example:
        >>> split = ImageTensors(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.tensor([0, 1, 0, 1]), ["a", "b"])
        >>> len(split.subset(torch.tensor([0, 2])))
        2
    """

    images: Tensor
    labels: Tensor
    classes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def has_labels(self) -> bool:
        return bool(self.classes) and bool((self.labels >= 0).any())

    def subset(self, index: Tensor) -> ImageTensors:
        """The images at ``index`` (same classes)."""
        return ImageTensors(self.images[index], self.labels[index], list(self.classes))


class DataNotFoundError(FileNotFoundError):
    """The dataset's files are not where we looked and could not be downloaded; the message says how to fix it."""


def check_dataset(dataset: str) -> DatasetInfo:
    if dataset not in DATASETS:
        raise ValueError(f"Unknown dataset {dataset!r}. Valid names: {', '.join(DATASETS)}.")
    return DATASETS[dataset]

