"""Fashion-MNIST from its IDX files: found in the data folder, Debian's dataset-fashion-mnist, or downloaded.

Example:
    >>> load_fashion_mnist("test", Path("./data"), download=False).images.shape  # doctest: +SKIP
    torch.Size([10000, 1, 28, 28])
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ssl_siamese.data import torchvision_sets
from ssl_siamese.data.info import FASHION_MNIST_CLASSES, DataNotFoundError, ImageTensors

FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_ENV = "SSL_SIAMESE_FASHION_MNIST"
SETUP_NOTE = "fashion-mnist-setup.txt"  # what scripts/setup.sh tried, left in the data folder when it found nothing

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


def load_fashion_mnist(split: str, data_dir: Path, download: bool) -> ImageTensors:
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
        if not torchvision_sets.can_connect(url):
            attempt = f"tried to download from {url} but its host is unreachable (offline?)"
        else:
            try:
                FashionMNIST(root=str(data_dir), train=split == "train", download=True)
                found = locate()
            except Exception as error:  # noqa: BLE001
                attempt = f"tried to download from {url} and it failed: {error}"
    if found is None:
        looked = "\n  ".join(str(p) for p in fashion_mnist_search_paths(data_dir))
        note = Path(data_dir) / SETUP_NOTE
        setup = f"Before that, {note.read_text().strip()}.\n" if note.is_file() else ""
        raise DataNotFoundError(
            f"Fashion-MNIST ({image_stem}[.gz], {label_stem}[.gz]) not found; looked in:\n  {looked}\n"
            f"and {attempt}.\n{setup}To fix: copy the four IDX files (train-images-idx3-ubyte.gz, "
            f"train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) into "
            f"{data_dir}, install them with `sudo apt-get install dataset-fashion-mnist`, or set "
            f"{FASHION_MNIST_ENV}=/path/to/folder.")
    image_file, label_file = found
    images, labels = read_idx(image_file, 3), read_idx(label_file, 1)
    if len(images) != len(labels):
        raise ValueError(f"{image_file} has {len(images)} images but {label_file} has {len(labels)} labels.")
    return ImageTensors(torch.from_numpy(images.copy()).unsqueeze(1),
                        torch.from_numpy(labels.astype(np.int64)), list(FASHION_MNIST_CLASSES))


