"""CIFAR-10/100 and STL-10 through torchvision, converted straight to uint8 tensors.

Example:
    >>> load_torchvision("cifar10", "test", Path("./data"), download=False).images.shape  # doctest: +SKIP
    torch.Size([10000, 3, 32, 32])
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssl_siamese.data.info import DataNotFoundError, ImageTensors

CONNECT_TIMEOUT_S = 3.0


def can_connect(url: str, timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the host of ``url`` opens within ``timeout`` s (global state untouched)."""
    from urllib.parse import urlparse

    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def load_torchvision(dataset: str, split: str, data_dir: Path, download: bool) -> ImageTensors:
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
        if not can_connect(url):
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


