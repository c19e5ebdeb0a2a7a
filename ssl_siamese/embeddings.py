"""Embed images with an exported backbone, and search the embeddings by cosine similarity.

``embed_images`` preprocesses uint8 images exactly like the model's evaluation views
(``ViewAugmentation.normalize`` at the size, mean and std in the backbone's metadata) and runs the
backbone in eval mode in batches, on the GPU when there is one. ``EmbeddingIndex`` keeps L2-normalised
embeddings (with optional labels and ids) and answers exact k-nearest-neighbour queries by cosine
similarity: a chunked matrix product in torch, or faiss's ``IndexFlatIP`` (also exact) when faiss is
installed and the index holds more than ``FAISS_MIN_SIZE`` vectors. It saves to and loads from ``.npz``.

Example:
    >>> backbone, transform, metadata = load_backbone("out/simclr/exported_models/backbone.pt")
    >>> features = embed_images(backbone, split.images, metadata)          # (N, D) float32 on the CPU
    >>> index = EmbeddingIndex(features, labels=split.labels)
    >>> scores, indices = index.search(embed_images(backbone, queries, metadata), k=5)
    >>> index.save("gallery.npz"); index = EmbeddingIndex.load("gallery.npz")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ssl_siamese.augment import ViewAugmentation

FAISS_MIN_SIZE = 100_000  # below this an exact torch matmul is as fast and needs no extra package


def default_device() -> torch.device:
    """``cuda`` when available, else ``cpu``."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Preprocess(nn.Module):
    """The evaluation preprocessing of a backbone: no randomness, images in, normalised float32 out.

    uint8 (or [0, 1] float) images ``(B, 1|3, H, W)`` become RGB, are resized to ``size`` (bilinear,
    antialiased) and normalised with ``mean`` and ``std``: ``ViewAugmentation.normalize``.

    Example:
        >>> transform = Preprocess(32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
        >>> transform(torch.zeros(4, 1, 28, 28, dtype=torch.uint8)).shape
        torch.Size([4, 3, 32, 32])
    """

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.views = ViewAugmentation(size=size, mean=mean, std=std)  # only its deterministic path is used

    def forward(self, images: Tensor) -> Tensor:
        return self.views.normalize(images)

    def extra_repr(self) -> str:
        return (f"size={self.views.size}, mean={self.views.mean.flatten().tolist()}, "
                f"std={self.views.std.flatten().tolist()}")


def preprocessing(metadata: Mapping[str, Any], image_size: int | None = None) -> Preprocess:
    """The evaluation preprocessing of an exported backbone (size, mean and std from its metadata).

    ``image_size`` is used when the metadata records none (a backbone passed as a module).
    """
    if not metadata.get("mean") or not metadata.get("std"):
        raise ValueError("The backbone metadata has no 'mean'/'std' normalisation; pass the metadata "
                         "returned by load_backbone, or a dict with image_size, mean and std.")
    size = int(metadata.get("image_size") or image_size or 0)
    if size <= 0:
        raise ValueError("The backbone metadata has no 'image_size'; add it to the metadata dict.")
    return Preprocess(size, metadata["mean"], metadata["std"])


@torch.no_grad()
def embed_images(backbone: nn.Module, images_uint8: Tensor, metadata: Mapping[str, Any], batch_size: int = 256,
                 device: str | torch.device | None = None, progress: bool = True) -> Tensor:
    """Backbone features ``(N, D)`` (float32, CPU) of uint8 images ``(N, 1|3, H, W)``.

    The backbone is put in eval mode and moved to ``device`` (default: cuda when available).
    """
    images = torch.as_tensor(images_uint8)
    if images.dim() == 3:
        images = images.unsqueeze(0)
    device = torch.device(device) if device is not None else default_device()
    preprocess = preprocessing(metadata, images.shape[-1]).to(device)
    backbone.eval().to(device)
    batches = tqdm(images.split(batch_size), desc="embedding", unit="batch", disable=not progress, leave=False)
    features = [backbone(preprocess(batch.to(device))).flatten(1).float().cpu() for batch in batches]
    if not features:
        raise ValueError("No images to embed.")
    return torch.cat(features)


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
