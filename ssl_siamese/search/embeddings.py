"""Embed images with an exported backbone, and search the embeddings by cosine similarity.

``embed_images`` preprocesses images exactly like training's evaluation images (:class:`Preprocess`: shorter side
to the backbone's input size and centre crop, :func:`ssl_siamese.data.images.resize_center_crop`, then the mean and
std in its metadata) and runs the backbone in eval mode in batches, on the GPU when there is one. Images may be a
batch ``(N, C, H, W)``, one image ``(C, H, W)``, a list of images of any sizes, or image files (read by
``ssl_siamese.data.images.read_image``); pixel values are scaled by dtype (``to_unit_rgb``). ``EmbeddingIndex``
keeps L2-normalised embeddings (with optional labels and ids) and answers exact k-nearest-neighbour queries by
cosine similarity: a chunked matrix product in torch, or faiss's ``IndexFlatIP`` (also exact) when faiss is
installed and the index holds more than ``FAISS_MIN_SIZE`` vectors. It saves to and loads from ``.npz``.

Example:
    >>> backbone, transform, metadata = load_backbone("out/simclr/exported_models/backbone.pt")
    >>> features = embed_images(backbone, split.images, metadata)          # (N, D) float32 on the CPU
    >>> features = embed_images(backbone, ["cat.png", "icon.webp"], metadata)   # files of any mode and size
    >>> index = EmbeddingIndex(features, labels=split.labels)
    >>> scores, indices = index.search(embed_images(backbone, queries, metadata), k=5)
    >>> index.save("gallery.npz"); index = EmbeddingIndex.load("gallery.npz")
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ssl_siamese.data.images import read_images
from ssl_siamese.views.preprocess import RESIZE, Preprocess, preprocessing, to_unit_rgb  # noqa: F401 (public here too)

Images = Union[Tensor, np.ndarray, str, os.PathLike, Sequence[Union[Tensor, np.ndarray, str, os.PathLike]]]
"""What the embedding functions take: a batch ``(N, C, H, W)``, one image ``(C, H, W)``, a list of images of
any sizes, or image file paths (one or a list, possibly mixed with tensors)."""

FAISS_MIN_SIZE = 100_000  # below this an exact torch matmul is as fast and needs no extra package


def default_device() -> torch.device:
    """``cuda`` when available, else ``cpu``."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.no_grad()
def embed_images(backbone: nn.Module, images: Images, metadata: Mapping[str, Any], batch_size: int = 256,
                 device: str | torch.device | None = None, progress: bool = True) -> Tensor:
    """Backbone features ``(N, D)`` (float32, CPU) of ``images``.

    ``images``: a batch ``(N, C, H, W)``, one image ``(C, H, W)``, a list of images of any sizes, or image
    files (a path or a list; read with ``ssl_siamese.data.images.read_image``, any mode and bit depth); uint8,
    uint16 or [0, 1] float, 1 to 4 channels (``to_unit_rgb``). The backbone is put in eval mode and moved to
    ``device`` (default: cuda when available).
    """
    size_hint = metadata.get("image_size") or _first_tensor_side(images)
    images = as_images(images, size_hint)
    device = torch.device(device) if device is not None else default_device()
    preprocess = preprocessing(metadata, size_hint).to(device)
    backbone.eval().to(device)
    chunks = [images[start:start + batch_size] for start in range(0, len(images), batch_size)]
    batches = tqdm(chunks, desc="embedding", unit="batch", disable=not progress, leave=False)
    features = [backbone(preprocess(batch)).flatten(1).float().cpu() for batch in batches]
    if not features:
        raise ValueError("No images to embed.")
    return torch.cat(features)


def as_images(images: Images, size: int | None = None) -> Tensor | list[Tensor]:
    """A batch ``(N, C, H, W)`` as is, or a list of ``(C, H, W)`` images with files read (``read_image``, at
    ``size`` when given: what :class:`Preprocess` would make of the full image, without holding it)."""
    if isinstance(images, (str, os.PathLike)):
        images = [images]
    if isinstance(images, (list, tuple)):
        paths = [i for i, image in enumerate(images) if isinstance(image, (str, os.PathLike))]
        decoded = dict(zip(paths, read_images([images[i] for i in paths], size=size)))
        return [decoded[i] if i in decoded else _one_image(image) for i, image in enumerate(images)]
    images = torch.as_tensor(images)
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4:
        raise ValueError(f"Expected images (N, C, H, W) or one image (C, H, W), got shape {tuple(images.shape)}.")
    return images


def _first_tensor_side(images: Images) -> int | None:
    """The width of the first image given as a tensor or array: the size of a backbone with no metadata size."""
    if isinstance(images, (str, os.PathLike)):
        return None
    first = next((image for image in images if not isinstance(image, (str, os.PathLike))), None) \
        if isinstance(images, (list, tuple)) else images
    return None if first is None else int(np.shape(first)[-1])


def _one_image(image: Tensor | np.ndarray) -> Tensor:
    image = torch.as_tensor(image)
    if image.dim() != 3:
        raise ValueError(f"A list of images must hold (C, H, W) images or file paths, got shape {tuple(image.shape)}.")
    return image


class EmbeddingIndex:
    """Exact cosine-similarity search over L2-normalised embeddings, with optional labels and ids.

    Example:
        >>> index = EmbeddingIndex(torch.randn(1000, 64), ids=[f"img{i}.png" for i in range(1000)])
        >>> index.add(torch.randn(10, 64), ids=[f"new{i}.png" for i in range(10)])
        >>> scores, indices = index.search(torch.randn(3, 64), k=5)   # both (3, 5), best first
        >>> [index.ids[i] for i in indices[0]]
    """

    def __init__(self, features: Tensor | np.ndarray, labels: Tensor | np.ndarray | Sequence[int] | None = None,
                 ids: Sequence[str] | np.ndarray | None = None, chunk_size: int = 4096) -> None:
        self.chunk_size = chunk_size
        self.features = torch.empty(0, _as_matrix(features).shape[1])
        self.labels: Tensor | None = None if labels is None else torch.empty(0, dtype=torch.int64)
        self.ids: list[str] | None = None if ids is None else []
        self._faiss_index: Any = None
        self.add(features, labels, ids)

    def __len__(self) -> int:
        return self.features.shape[0]

    @property
    def dim(self) -> int:
        return self.features.shape[1]

    def add(self, features: Tensor | np.ndarray, labels: Tensor | np.ndarray | Sequence[int] | None = None,
            ids: Sequence[str] | np.ndarray | None = None) -> EmbeddingIndex:
        """Append embeddings (normalised here) and, if the index has them, their labels and ids."""
        features = _as_matrix(features)
        if features.shape[1] != self.dim:
            raise ValueError(f"Embeddings of dimension {features.shape[1]} do not fit an index of "
                             f"dimension {self.dim}.")
        for name, values, kept in (("labels", labels, self.labels), ("ids", ids, self.ids)):
            if (values is None) != (kept is None):
                state = "has" if kept is not None else "has no"
                raise ValueError(f"This index {state} {name}: give {name} for every add, or never.")
            if values is not None and len(values) != len(features):
                raise ValueError(f"{len(values)} {name} for {len(features)} embeddings.")
        self.features = torch.cat([self.features, F.normalize(features, dim=1)])
        if labels is not None:
            self.labels = torch.cat([self.labels, torch.as_tensor(np.asarray(labels), dtype=torch.int64)])
        if ids is not None:
            self.ids.extend(str(i) for i in ids)
        self._faiss_index = None
        return self

    def search(self, queries: Tensor | np.ndarray, k: int = 10) -> tuple[Tensor, Tensor]:
        """The ``k`` most cosine-similar entries of each query: ``(scores, indices)``, both ``(Q, k)``, best first.

        ``k`` is capped at the size of the index.
        """
        queries = F.normalize(_as_matrix(queries), dim=1)
        if queries.shape[1] != self.dim:
            raise ValueError(f"Queries of dimension {queries.shape[1]} do not fit an index of dimension {self.dim}.")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}.")
        k = min(k, len(self))
        if len(self) > FAISS_MIN_SIZE and (faiss := _import_faiss()) is not None:
            if self._faiss_index is None:
                self._faiss_index = faiss.IndexFlatIP(self.dim)
                self._faiss_index.add(self.features.numpy())
            scores, indices = self._faiss_index.search(queries.numpy(), k)
            return torch.from_numpy(scores), torch.from_numpy(indices).long()
        results = [(chunk @ self.features.T).topk(k, dim=1) for chunk in queries.split(self.chunk_size)]
        return torch.cat([r.values for r in results]), torch.cat([r.indices for r in results])

    def save(self, path: str | Path) -> Path:
        """Write ``features`` (normalised) and, when present, ``labels`` and ``ids`` to an ``.npz`` file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"features": self.features.numpy()}
        if self.labels is not None:
            arrays["labels"] = self.labels.numpy()
        if self.ids is not None:
            arrays["ids"] = np.asarray(self.ids, dtype=str)
        with open(path, "wb") as handle:  # a file handle: numpy would append .npz to another suffix
            np.savez(handle, **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> EmbeddingIndex:
        """Read an index written by ``save``, or the ``.npz`` of the embed recipe (no pickles).

        ``save`` writes ``features`` (normalised) and optional ``labels`` and ``ids``; the embed recipe writes
        ``embeddings`` (raw, normalised here), ``paths`` (used as ids) and, for class folders, ``labels``.
        """
        with np.load(Path(path), allow_pickle=False) as data:
            key = next((name for name in ("features", "embeddings") if name in data), None)
            if key is None:
                raise ValueError(f"{path} holds no 'features' (EmbeddingIndex.save) or 'embeddings' (the embed "
                                 f"recipe) array, only {sorted(data.files)}.")
            features = torch.from_numpy(data[key].astype(np.float32))
            labels = torch.from_numpy(data["labels"].astype(np.int64)) if "labels" in data else None
            ids_key = next((name for name in ("ids", "paths") if name in data), None)
            ids = data[ids_key].tolist() if ids_key else None
        if key == "embeddings":
            return cls(features, labels, ids)
        index = cls(features[:0], None if labels is None else labels[:0], None if ids is None else [])
        index.features = features  # stored normalised: normalising again would change the last bits
        index.labels, index.ids = labels, ids
        return index


def _as_matrix(values: Tensor | np.ndarray) -> Tensor:
    matrix = torch.as_tensor(values).detach().to("cpu", torch.float32)
    if matrix.dim() != 2:
        raise ValueError(f"Expected embeddings of shape (N, D), got {tuple(matrix.shape)}.")
    return matrix


def _import_faiss() -> Any:
    try:
        import faiss
    except ImportError:
        return None
    return faiss
