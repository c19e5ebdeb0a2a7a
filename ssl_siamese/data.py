"""Datasets decoded once into uint8 tensors, and a LightningDataModule that serves them.

Images are decoded a single time into a ``(N, C, H, W)`` uint8 tensor (folders are cached on disk),
so the DataLoader only moves indices and bytes; the random views are made later on the device
(:mod:`ssl_siamese.augment`). Labels are kept for the kNN evaluation only.

Example:
    >>> split = load_split("synthetic", "train")
    >>> split.images.shape, split.images.dtype
    (torch.Size([2048, 3, 32, 32]), torch.uint8)
    >>> dm = SSLDataModule("synthetic", batch_size=64)
    >>> dm.setup("fit")
    >>> images, labels = next(iter(dm.train_dataloader()))
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ssl_siamese.images import DECODER_VERSION, IMAGE_EXTENSIONS, decode_files, list_image_files
from ssl_siamese.loader import ResumableBatchLoader

logger = logging.getLogger("ssl_siamese")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot"]
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_ENV = "SSL_SIAMESE_FASHION_MNIST"
CACHE_ENV = "SSL_SIAMESE_CACHE"
CONNECT_TIMEOUT_S = 3.0
MIN_IMAGE_SIZE = 16  # smaller: random crops of a few pixels, a 1x1 or 2x2 feature map (see SSLDataModule)
DEFAULT_VAL_FRACTION = 0.1
MAX_HELD_OUT = 10_000


@dataclass(frozen=True)
class DatasetInfo:
    """Constants of a named dataset, known without loading it."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int
    channels: int
    num_classes: int | None
    train_split: str = "train"
    bank_split: str = "train"
    query_split: str = "test"


DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 32, 3, 10),
    "cifar100": DatasetInfo((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 32, 3, 100),
    "stl10": DatasetInfo((0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713), 96, 3, 10,
                         train_split="train+unlabeled"),
    "fashion_mnist": DatasetInfo((0.2860,) * 3, (0.3530,) * 3, 28, 1, 10),
    "synthetic": DatasetInfo((0.5,) * 3, (0.25,) * 3, 32, 3, 10),
    "folder": DatasetInfo(IMAGENET_MEAN, IMAGENET_STD, 64, 3, None),
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


def _check_dataset(dataset: str) -> DatasetInfo:
    if dataset not in DATASETS:
        raise ValueError(f"Unknown dataset {dataset!r}. Valid names: {', '.join(DATASETS)}.")
    return DATASETS[dataset]


def _can_connect(url: str, timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the host of ``url`` opens within ``timeout`` s (global state untouched)."""
    from urllib.parse import urlparse

    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------- torchvision datasets

def _load_torchvision(dataset: str, split: str, data_dir: Path, download: bool) -> ImageTensors:
    """CIFAR-10/100 or STL-10 through torchvision, arrays converted straight to uint8 tensors."""
    from torchvision import datasets

    if dataset in ("cifar10", "cifar100"):
        if split not in ("train", "test"):
            raise ValueError(f"{dataset} has splits 'train' and 'test', not {split!r}.")
        cls = datasets.CIFAR10 if dataset == "cifar10" else datasets.CIFAR100
        kwargs: dict[str, Any] = {"train": split == "train"}
    else:
        splits = ("train", "test", "unlabeled", "train+unlabeled")
        if split not in splits:
            raise ValueError(f"stl10 has splits {', '.join(splits)}, not {split!r}.")
        cls, kwargs = datasets.STL10, {"split": split}

    try:
        data = cls(root=str(data_dir), download=False, **kwargs)
    except RuntimeError as missing:
        if not download:
            raise _torchvision_not_found(dataset, cls, data_dir, "download=False, so nothing was downloaded") \
                from missing
        url = cls.url
        if not _can_connect(url):
            raise _torchvision_not_found(
                dataset, cls, data_dir, f"tried to download {url} but its host is unreachable (offline?)") from None
        try:
            data = cls(root=str(data_dir), download=True, **kwargs)
        except Exception as error:  # noqa: BLE001 - any download/extract failure means "not found"
            raise _torchvision_not_found(
                dataset, cls, data_dir, f"tried to download {url} and it failed: {error}") from error

    if dataset == "stl10":
        images = torch.from_numpy(np.ascontiguousarray(data.data))              # already (N, 3, 96, 96)
        labels = torch.as_tensor(np.asarray(data.labels), dtype=torch.int64)
    else:
        images = torch.from_numpy(data.data).permute(0, 3, 1, 2).contiguous()   # (N, 32, 32, 3) -> NCHW
        labels = torch.as_tensor(data.targets, dtype=torch.int64)
    return ImageTensors(images, labels, list(data.classes))


def _torchvision_not_found(dataset: str, cls: type, data_dir: Path, what_happened: str) -> DataNotFoundError:
    folder = data_dir / cls.base_folder
    return DataNotFoundError(
        f"{dataset} not found in {data_dir} (looked for {folder}/); {what_happened}. To fix: put the "
        f"extracted files there (e.g. {folder}/ from {cls.url}), run once with network access and "
        f"--data.download true, or use your own images with --data.dataset folder --data.data_dir PATH.")


# --------------------------------------------------------------------------- Fashion-MNIST (IDX files)

_IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def fashion_mnist_search_paths(data_dir: str | Path) -> list[Path]:
    """Where Fashion-MNIST's IDX files are looked for, in order."""
    data_dir = Path(data_dir).expanduser().resolve()
    paths = [data_dir, data_dir / "fashion-mnist", data_dir / "FashionMNIST" / "raw", FASHION_MNIST_SYSTEM_DIR]
    if os.environ.get(FASHION_MNIST_ENV):  # an explicit setting wins over the system copy
        paths.insert(3, Path(os.environ[FASHION_MNIST_ENV]).expanduser().resolve())
    return paths


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def read_idx(path: str | Path, expected_ndim: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes (gzipped or not) into a numpy array, checking header and size.

    Example:
        >>> read_idx("t10k-labels-idx1-ubyte.gz", expected_ndim=1).shape  # doctest: +SKIP
        (10000,)
    """
    path = Path(path)
    opener: Callable[..., Any] = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as file:
            raw = file.read()
    except (EOFError, OSError, gzip.BadGzipFile) as error:
        raise ValueError(f"Cannot read IDX file {path}: {error} (truncated or corrupt? re-copy it)") from error
    header = 4 + 4 * expected_ndim
    magic = 0x0800 + expected_ndim  # 0x08 = unsigned byte, then the number of dimensions
    if len(raw) < header or int.from_bytes(raw[:4], "big") != magic:
        raise ValueError(f"{path} is not an IDX file of {expected_ndim}-d unsigned bytes "
                         f"(expected magic number {magic}); is it truncated or the wrong file?")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(expected_ndim))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise ValueError(f"{path} is truncated or corrupt: {len(raw)} bytes, expected {expected} "
                         f"for shape {shape}; re-copy or re-download it.")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _load_fashion_mnist(split: str, data_dir: Path, download: bool) -> ImageTensors:
    if split not in _IDX_FILES:
        raise ValueError(f"fashion_mnist has splits 'train' and 'test', not {split!r}.")
    image_stem, label_stem = _IDX_FILES[split]

    def locate() -> tuple[Path, Path] | None:
        for folder in fashion_mnist_search_paths(data_dir):
            image_file, label_file = _find_idx(folder, image_stem), _find_idx(folder, label_stem)
            if image_file and label_file:
                return image_file, label_file
        return None

    found = locate()
    attempt = "download=False, so nothing was downloaded"
    if found is None and download:
        from torchvision.datasets import FashionMNIST

        url = FashionMNIST.mirrors[0]
        if not _can_connect(url):
            attempt = f"tried to download from {url} but its host is unreachable (offline?)"
        else:
            try:
                FashionMNIST(root=str(data_dir), train=split == "train", download=True)
                found = locate()
            except Exception as error:  # noqa: BLE001
                attempt = f"tried to download from {url} and it failed: {error}"
    if found is None:
        looked = "\n  ".join(str(p) for p in fashion_mnist_search_paths(data_dir))
        raise DataNotFoundError(
            f"Fashion-MNIST ({image_stem}[.gz], {label_stem}[.gz]) not found; looked in:\n  {looked}\n"
            f"and {attempt}. To fix: copy the four IDX files (train-images-idx3-ubyte.gz, "
            f"train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) into "
            f"{data_dir}, install them with `sudo apt-get install dataset-fashion-mnist`, or set "
            f"{FASHION_MNIST_ENV}=/path/to/folder.")
    image_file, label_file = found
    images, labels = read_idx(image_file, 3), read_idx(label_file, 1)
    if len(images) != len(labels):
        raise ValueError(f"{image_file} has {len(images)} images but {label_file} has {len(labels)} labels.")
    return ImageTensors(torch.from_numpy(images.copy()).unsqueeze(1),
                        torch.from_numpy(labels.astype(np.int64)), list(FASHION_MNIST_CLASSES))


# --------------------------------------------------------------------------- synthetic

SYNTHETIC_SIZES = {"train": 2048, "test": 512}
_SYNTHETIC_COLOURS = torch.tensor([
    [0.9, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.2, 0.9], [0.9, 0.9, 0.1], [0.9, 0.1, 0.9],
    [0.1, 0.9, 0.9], [1.0, 0.5, 0.0], [0.5, 0.0, 1.0], [0.95, 0.95, 0.95], [0.4, 0.25, 0.1]])


def make_synthetic(n: int, seed: int, size: int = 32, num_classes: int = 10) -> ImageTensors:
    """Deterministic toy images: each class a coloured shape or texture at a random place, on noise.

    Example:
        >>> make_synthetic(20, seed=0).images.shape
        torch.Size([20, 3, 32, 32])
    """
    g = torch.Generator().manual_seed(seed)
    labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]
    coords = torch.arange(size, dtype=torch.float32)
    y, x = coords.view(1, size, 1), coords.view(1, 1, size)
    centre = size / 2 + (torch.rand(n, 2, generator=g) - 0.5) * size * 0.35
    radius = size * (0.2 + 0.12 * torch.rand(n, generator=g)).view(n, 1, 1)
    dy, dx = y - centre[:, 0].view(n, 1, 1), x - centre[:, 1].view(n, 1, 1)
    dist = (dx ** 2 + dy ** 2).sqrt()
    shapes = [
        dist < radius,                                               # disc
        (dx.abs() < radius) & (dy.abs() < radius),                   # square
        (dy < radius) & (dy > 2 * dx.abs() - radius),                # triangle
        (dist < radius) & (dist > radius * 0.55),                    # ring
        (dx.abs() < radius * 0.3) | (dy.abs() < radius * 0.3),       # cross
        dx.abs() + dy.abs() < radius,                                # diamond
        (y % 6 < 3).expand(n, size, size),                           # horizontal stripes
        (x % 6 < 3).expand(n, size, size),                           # vertical stripes
        ((x // 4 + y // 4) % 2 == 0).expand(n, size, size),          # checkerboard
        ((x + y) % 8 < 4).expand(n, size, size),                     # diagonal stripes
    ]
    mask = torch.zeros(n, size, size)
    for c in range(num_classes):
        chosen = labels == c
        mask[chosen] = shapes[c % len(shapes)][chosen].float()
    colour = (_SYNTHETIC_COLOURS[labels % len(_SYNTHETIC_COLOURS)]
              + 0.08 * torch.randn(n, 3, generator=g)).view(n, 3, 1, 1)
    background = (0.15 + 0.2 * torch.rand(n, 3, generator=g)).view(n, 3, 1, 1)
    mask = mask.unsqueeze(1)
    images = colour * mask + background * (1 - mask) + 0.06 * torch.randn(n, 3, size, size, generator=g)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    return ImageTensors(images, labels.to(torch.int64), [f"class_{c}" for c in range(num_classes)])


# --------------------------------------------------------------------------- image folders

def default_cache_dir() -> Path:
    """Where decoded image folders are cached: ``$SSL_SIAMESE_CACHE``, else ``$XDG_CACHE_HOME/ssl_siamese``,
    else ``~/.cache/ssl_siamese`` (never inside the user's data folder)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "ssl_siamese"


def _cache_key(root: Path, size: int, files: list[Path]) -> str:
    listing = []
    for path in files:
        stat = path.stat()
        listing.append((path.relative_to(root).as_posix(), stat.st_size, stat.st_mtime_ns))
    text = json.dumps([str(root), size, DECODER_VERSION, sorted(listing)])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _save_atomically(payload: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(handle)
    try:
        torch.save(payload, temp)
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.remove(temp)


def load_folder(root: str | Path, image_size: int = 64, cache_dir: str | Path | None = None,
                num_threads: int | None = None) -> ImageTensors:
    """Decode every image under ``root`` (recursively) into uint8 ``(N, 3, S, S)``, cached on disk.

    Files are listed and decoded by :mod:`ssl_siamese.images` (transparent pixels composited onto white).
    Labelled by first-level subfolder when every image lies in one (ImageFolder layout), else
    unlabelled. Unreadable and non-image files (an SVG, notes) are skipped; every run warns with their
    count and first names, also when the images come from the cache. The cache lives in ``cache_dir``
    (default :func:`default_cache_dir`, outside ``root``), one file per folder and size, rebuilt when a
    file under ``root`` changes; its path is logged.

    Example:
        >>> split = load_folder("photos/", image_size=64)  # doctest: +SKIP
        >>> split.images.shape  # (N, 3, 64, 64)
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DataNotFoundError(f"Image folder {root} does not exist. Pass an existing folder with "
                                f"--data.data_dir PATH (images in it or in one subfolder per class).")
    files, others = list_image_files(root)
    if not files:
        raise DataNotFoundError(f"No image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) found under {root}"
                                f"{f' (only {len(others)} other files)' if others else ' (it is empty)'}. "
                                "Point --data.data_dir at a folder that holds images (any depth).")

    cache_root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    prefix = f"folder-{root.name}-{hashlib.sha256(str(root).encode()).hexdigest()[:8]}-{image_size}px-"
    cache_file = cache_root / f"{prefix}{_cache_key(root, image_size, files + others)}.pt"
    if cache_file.is_file():
        try:
            cached = torch.load(cache_file, weights_only=True)
            split = ImageTensors(cached["images"], cached["labels"], list(cached["classes"]))
            _report_skipped(root, list(cached["skipped"]))
            rank_zero_info(f"ssl_siamese: {len(split)} images of {root} read from the decoded-image cache "
                           f"{cache_file}")
            return split
        except Exception as error:  # noqa: BLE001 - a bad cache is rebuilt
            logger.warning("ignoring unreadable cache %s: %s", cache_file, error)

    _warn_if_too_big_for_memory(root, len(files), image_size)
    decoded = decode_files(files, image_size, num_threads)
    kept = [(path, array) for path, array in zip(files, decoded) if array is not None]
    skipped = sorted([path for path, array in zip(files, decoded) if array is None] + others)
    skipped_names = [path.relative_to(root).as_posix() for path in skipped]
    if not kept:
        raise ValueError(f"None of the {len(files)} image files under {root} could be read.")

    relative = [path.relative_to(root).parts for path, _ in kept]
    if all(len(parts) > 1 for parts in relative):
        classes = sorted({parts[0] for parts in relative})
        index = {name: i for i, name in enumerate(classes)}
        labels = torch.tensor([index[parts[0]] for parts in relative], dtype=torch.int64)
    else:
        classes, labels = [], torch.full((len(kept),), -1, dtype=torch.int64)
    images = torch.from_numpy(np.stack([array for _, array in kept]))
    try:
        for stale in cache_root.glob("folder-*.pt"):  # this folder at this size before it changed
            if stale.name.startswith(prefix) and stale != cache_file:
                stale.unlink(missing_ok=True)
        _save_atomically({"images": images, "labels": labels, "classes": classes, "skipped": skipped_names},
                         cache_file)
    except OSError as error:
        logger.warning("could not write the decoded-image cache %s (%s); the folder will be decoded again "
                       "next time (set %s or --data.cache_dir to a writable folder)", cache_file, error, CACHE_ENV)
    else:
        rank_zero_info(f"ssl_siamese: decoded {len(kept)} images of {root} at {image_size} px into the cache "
                       f"{cache_file} (set {CACHE_ENV} or --data.cache_dir to cache elsewhere)")
    _report_skipped(root, skipped_names)
    return ImageTensors(images, labels, classes)


def _warn_if_too_big_for_memory(root: Path, count: int, image_size: int) -> None:
    """Warn before decoding when the images would take more than half of this machine's memory."""
    needed = count * 3 * image_size * image_size
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not on this platform
        return
    if needed > memory / 2:
        logger.warning("%d images of %s at %d px take %.1f GiB as uint8, more than half of this machine's %.1f GiB; "
                       "use a smaller --data.image_size or a part of the folder", count, root, image_size,
                       needed / 2**30, memory / 2**30)


def _report_skipped(root: Path, skipped: list[str]) -> None:
    """Warn about the files of ``root`` that were skipped (not images, or unreadable), on every run."""
    if skipped:
        logger.warning("skipped %d files under %s that are not readable images (first few: %s); the "
                       "image types read are %s", len(skipped), root, ", ".join(skipped[:5]),
                       " ".join(sorted(IMAGE_EXTENSIONS)))


def _folder_split_dir(data_dir: Path, split: str) -> Path | None:
    """The folder of a split: train = data_dir/train or data_dir; test/val = data_dir/test or data_dir/val."""
    if split == "train":
        if (data_dir / "train").is_dir():
            return data_dir / "train"
        held_out = [name for name in ("test", "val") if (data_dir / name).is_dir()]
        if held_out:  # otherwise the held-out images would be read as a training class
            raise DataNotFoundError(f"{data_dir} has a {held_out[0]}/ folder but no train/ folder; put the "
                                    f"training images in {data_dir / 'train'} (one subfolder per class).")
        return data_dir
    for name in ("test", "val") if split in ("test", "val") else ():
        if (data_dir / name).is_dir():
            return data_dir / name
    return None


# --------------------------------------------------------------------------- entry point

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
    info = _check_dataset(dataset)
    data_dir = Path(data_dir).expanduser().resolve()
    if dataset == "synthetic":
        if split not in SYNTHETIC_SIZES:
            raise ValueError(f"synthetic has splits 'train' and 'test', not {split!r}.")
        return make_synthetic(SYNTHETIC_SIZES[split], seed=0 if split == "train" else 1)
    if dataset == "fashion_mnist":
        return _load_fashion_mnist(split, data_dir, download)
    if dataset == "folder":
        if split not in ("train", "test", "val"):
            raise ValueError(f"folder has splits 'train', 'test' and 'val', not {split!r}.")
        folder = _folder_split_dir(data_dir, split)
        if folder is None:
            raise DataNotFoundError(f"No {split} split in {data_dir}: expected a subfolder {data_dir / 'test'} "
                                    f"or {data_dir / 'val'}.")
        return load_folder(folder, image_size or info.image_size, cache_dir)
    return _load_torchvision(dataset, split, data_dir, download)


# --------------------------------------------------------------------------- datamodule

class UInt8ImageDataset(Dataset):
    """(image, label) pairs from uint8 tensors; nothing else happens per item."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index], self.labels[index]


def random_subset(data: ImageTensors, size: int | None, seed: int) -> ImageTensors:
    """``size`` images drawn with ``seed``, kept in their original order (all of them when ``size`` is None)."""
    if size is None or size >= len(data):
        return data
    generator = torch.Generator().manual_seed(seed)
    return data.subset(torch.randperm(len(data), generator=generator)[:size].sort().values)


def hold_out_split(labels: Tensor, fraction: float, seed: int, max_total: int = MAX_HELD_OUT) -> Tensor:
    """Sorted indices of a seeded, per-class validation split: ``round(fraction * n_c)`` images of each
    class of ``n_c`` (the fraction lowered so that at most ``max_total`` are held out in all, and always
    leaving one image of the class in training); images labelled -1 are never held out.

    Example:
        >>> len(hold_out_split(torch.arange(100) % 4, 0.1, seed=0))  # 25 per class -> round(2.5) = 3 each
        12
    """
    labelled = int((labels >= 0).sum())
    if labelled == 0 or fraction <= 0:
        return torch.zeros(0, dtype=torch.int64)
    fraction = min(fraction, max_total / labelled)
    members = [torch.nonzero(labels == label).flatten() for label in labels[labels >= 0].unique().tolist()]
    counts = [int(np.floor(fraction * len(m) + 0.5)) for m in members]
    if sum(counts) > max_total:  # rounding up went past the cap: round down instead
        counts = [int(np.floor(fraction * len(m))) for m in members]
    generator = torch.Generator().manual_seed(seed)
    held = [m[torch.randperm(len(m), generator=generator)[:min(count, len(m) - 1)]]
            for m, count in zip(members, counts)]
    return torch.cat(held).sort().values


def _keep_classes(data: ImageTensors, classes: list[int] | None) -> ImageTensors:
    """The images whose label is in ``classes`` (all of them when ``classes`` is None)."""
    if classes is None:
        return data
    if not data.has_labels:
        raise ValueError("--data.classes needs labelled data; this split has no labels.")
    keep = torch.isin(data.labels, torch.tensor(list(classes), dtype=data.labels.dtype))
    if not keep.any():
        raise ValueError(f"No image has a label in --data.classes {list(classes)}; the labels run from 0 to "
                         f"{int(data.labels.max())}.")
    return data.subset(torch.nonzero(keep).flatten())


def _align_classes(query: ImageTensors, classes: list[str]) -> ImageTensors:
    """Relabel ``query`` with the indices of ``classes``; drop images of classes not in it."""
    if query.classes == classes:
        return query
    index = {name: i for i, name in enumerate(classes)}
    mapping = torch.tensor([index.get(name, -1) for name in query.classes] or [-1], dtype=torch.int64)
    labels = torch.where(query.labels >= 0, mapping[query.labels.clamp(min=0)], -1)
    keep = labels >= 0
    return ImageTensors(query.images[keep], labels[keep], list(classes))


class SSLDataModule(pl.LightningDataModule):
    """Serves raw uint8 images (B, C, H, W) and int64 labels; views are made on the device.

    Training batches come from the train split (shuffled, optionally a seeded ``train_subset``); the
    validation loaders are ``[kNN bank, queries]``: the train split unshuffled (optionally
    ``knn_bank_subset`` images) and the test split (optionally ``val_subset`` images). A labelled folder
    without ``test/`` or ``val/`` gets a seeded per-class validation split of ``val_fraction`` of its
    training images instead (logged; 0 turns it off, and then there is no validation). ``classes`` keeps
    only the images of those label indices in every split, e.g. to pretrain on classes 0-6 and keep 7-9
    unseen for a one-shot evaluation (the labels are used for that filter and for evaluation only).

    Example:
        >>> dm = SSLDataModule("fashion_mnist", data_dir="./data", batch_size=256, train_subset=2000)
        >>> dm.image_size, dm.channels, dm.num_classes
        (28, 1, 10)
    """

    def __init__(self, dataset: str = "cifar10", data_dir: str = "./data", batch_size: int = 512,
                 num_workers: int = 0, image_size: int | None = None, train_subset: int | None = None,
                 knn_bank_subset: int | None = None, val_subset: int | None = None,
                 download: bool = True, cache_dir: str | None = None, seed: int = 0,
                 drop_last: bool = True, pin_memory: bool = True, classes: list[int] | None = None,
                 val_fraction: float = DEFAULT_VAL_FRACTION) -> None:
        """Set the options; nothing is loaded until ``prepare_data``/``setup``.

        Args:
            dataset: cifar10, cifar100, stl10, fashion_mnist, synthetic, or folder (your own images).
            data_dir: where the dataset is (downloaded to for torchvision datasets); for folder the image
                folder: train/ and test/ (or val/) with one subfolder per class each, one subfolder per
                class, or images at any depth (unlabelled).
            batch_size: images per training and evaluation batch (per device).
            num_workers: DataLoader worker processes for the evaluation loaders (0: the main process).
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
        """
        super().__init__()
        self.info = _check_dataset(dataset)
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
        if dataset != "folder" and image_size is not None and image_size > 2 * self.info.image_size:
            logger.warning("--data.image_size %d is more than twice %s's %d px images: the views are upsampled, "
                           "costing %.0fx the compute of %d px for no extra detail", image_size, dataset,
                           self.info.image_size, (image_size / self.info.image_size) ** 2, self.info.image_size)
        self.save_hyperparameters()
        self._splits: dict[str, ImageTensors] = {}
        self._announced = False
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
    def num_classes(self) -> int | None:
        """Number of labelled classes (None when unlabelled); for folders a guess until ``setup``."""
        if self.hparams.dataset != "folder":
            return self.info.num_classes
        if self.train_data is not None:
            return len(self.train_data.classes) or None
        root = _folder_split_dir(Path(self.hparams.data_dir).expanduser(), "train")
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
            return "test" if _folder_split_dir(data_dir, "test") is not None else None
        return self.info.query_split

    def prepare_data(self) -> None:
        """Download (torchvision datasets) or decode and cache (folders) everything ``setup`` needs."""
        for split in {self.info.train_split, self.info.bank_split}:
            self._load(split)
        if self._query_split() is not None:
            self._load(self._query_split())

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        train = _keep_classes(self._load(self.info.train_split), hp.classes)
        query_split = self._query_split()
        held_out = None
        if query_split is None and train.has_labels:  # a labelled folder without test/ or val/
            train, held_out = self._hold_out(train)
        self.train_data = random_subset(train, hp.train_subset, hp.seed)
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
            bank, query = _keep_classes(bank, hp.classes), _keep_classes(self._load(query_split), hp.classes)
            bank = bank.subset(torch.nonzero(bank.labels >= 0).flatten()) if (bank.labels < 0).any() else bank
            query = _align_classes(query, bank.classes)
            query = query.subset(torch.nonzero(query.labels >= 0).flatten()) if (query.labels < 0).any() else query
        if len(query) == 0:
            return
        self.bank_data = random_subset(bank, hp.knn_bank_subset, hp.seed + 1)
        self.query_data = random_subset(query, hp.val_subset, hp.seed + 2)

    def _hold_out(self, train: ImageTensors) -> tuple[ImageTensors, ImageTensors | None]:
        """(rest, held-out) of ``train`` by :func:`hold_out_split`, saying once what was done and why."""
        hp = self.hparams
        where = Path(hp.data_dir).expanduser().resolve()
        held = hold_out_split(train.labels, hp.val_fraction, hp.seed + 3)
        if not self._announced:
            self._announced = True
            if len(held):
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
        if not len(held):
            return train, None
        rest = torch.ones(len(train), dtype=torch.bool)
        rest[held] = False
        return train.subset(torch.nonzero(rest).flatten()), train.subset(held)

    # -- loaders
    def _loader(self, data: ImageTensors, shuffle: bool, drop_last: bool) -> DataLoader:
        workers = self.hparams.num_workers
        return DataLoader(UInt8ImageDataset(data.images, data.labels), batch_size=self.hparams.batch_size,
                          shuffle=shuffle, drop_last=drop_last, num_workers=workers,
                          persistent_workers=workers > 0,
                          pin_memory=self.hparams.pin_memory and torch.cuda.is_available(),
                          # its own generator: each iterator draws a seed, and must not from training's RNG
                          generator=torch.Generator())

    def train_dataloader(self) -> ResumableBatchLoader:
        """Shuffled batches in an order fixed by ``seed`` and the epoch, sharded over ranks, resumable mid-epoch."""
        if self.train_data is None:
            self.setup("fit")
        trainer = self.trainer
        batches_done = None
        if trainer is not None:  # what Lightning has finished of this epoch, saved in checkpoints
            batches_done = lambda: trainer.fit_loop.epoch_loop.batch_progress.current.processed  # noqa: E731
        return ResumableBatchLoader(
            self.train_data.images, self.train_data.labels, self.hparams.batch_size, shuffle=True,
            drop_last=self.hparams.drop_last, seed=self.hparams.seed,
            rank=trainer.global_rank if trainer is not None else 0,
            world_size=trainer.world_size if trainer is not None else 1, batches_done=batches_done,
            pin_memory=self.hparams.pin_memory and torch.cuda.is_available())

    def val_dataloader(self) -> list[DataLoader]:
        """``[bank_loader, query_loader]`` for kNN evaluation, or ``[]`` when the data has no labels."""
        if self.train_data is None:
            self.setup("validate")
        if self.bank_data is None or self.query_data is None:
            return []
        return [self._loader(self.bank_data, shuffle=False, drop_last=False),
                self._loader(self.query_data, shuffle=False, drop_last=False)]
