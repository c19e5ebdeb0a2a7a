"""One-shot (or few-shot) classification with a frozen backbone: register references, then classify.

Each class is represented by the embeddings of its reference images (one or a few). Its prototype is the
normalised mean of their normalised embeddings, and an image takes the class of the most cosine-similar
prototype. With a ``threshold``, an image whose best similarity is below it is ``"unknown"``. Adding a
class is registering its references: nothing is retrained.

Example:
    >>> backbone, _, metadata = load_backbone("out/simclr/exported_models/backbone.pt")
    >>> classifier = OneShotClassifier(backbone, metadata, threshold=0.6)
    >>> classifier.register("sneaker", sneaker_image)            # uint8 (C, H, W) or (K, C, H, W)
    >>> classifier.register("bag", bag_images)
    >>> classifier.classify(new_images)                         # [("bag", 0.83), ("unknown", 0.41), ...]
    >>> classifier.calibrate_threshold(validation_images, validation_names, accept_rate=0.95)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_siamese.embeddings import embed_images

UNKNOWN = "unknown"


class OneShotClassifier:
    """Nearest-prototype classification by cosine similarity, with an optional "unknown" threshold.

    Args:
        backbone: a feature extractor, e.g. from ``load_backbone``.
        metadata: its ``image_size``, ``mean`` and ``std`` (``load_backbone``'s metadata).
        threshold: cosine similarity below which an image is ``"unknown"``; ``None`` never rejects.
        device: where the backbone runs (default: cuda when available).
    """

    def __init__(self, backbone: nn.Module, metadata: Mapping[str, Any], threshold: float | None = None,
                 device: str | torch.device | None = None, batch_size: int = 256) -> None:
        self.backbone, self.metadata, self.threshold = backbone, dict(metadata), threshold
        self.device, self.batch_size = device, batch_size
        self.references: dict[str, Tensor] = {}

    @property
    def classes(self) -> list[str]:
        """The registered class names, in registration order."""
        return list(self.references)

    def embed(self, images: Tensor) -> Tensor:
        """Normalised embeddings ``(N, D)`` of uint8 images ``(N, C, H, W)`` or one image ``(C, H, W)``."""
        features = embed_images(self.backbone, images, self.metadata, self.batch_size, self.device, progress=False)
        return F.normalize(features, dim=1)

    def register(self, class_name: str, images: Tensor) -> int:
        """Add reference images of ``class_name`` (a new class or more shots); returns its reference count."""
        if class_name == UNKNOWN:
            raise ValueError(f"{UNKNOWN!r} is reserved for rejected images; choose another class name.")
        embeddings = self.embed(images)
        if class_name in self.references:
            embeddings = torch.cat([self.references[class_name], embeddings])
        self.references[class_name] = embeddings
        return len(embeddings)

    def remove(self, class_name: str) -> None:
        """Forget a class and its references."""
        del self.references[class_name]

    def prototypes(self) -> Tensor:
        """``(C, D)``: per class the normalised mean of its normalised reference embeddings."""
        if not self.references:
            raise ValueError("No classes registered yet: call register(class_name, images) first.")
        return F.normalize(torch.stack([refs.mean(0) for refs in self.references.values()]), dim=1)

    def similarities(self, images: Tensor) -> Tensor:
        """Cosine similarity ``(N, C)`` of each image to each class prototype (columns: ``classes``)."""
        return self.embed(images) @ self.prototypes().T

    def classify(self, images: Tensor) -> list[tuple[str, float]]:
        """``(class_name or "unknown", best cosine similarity)`` for each image."""
        best, index = self.similarities(images).max(dim=1)
        names = self.classes
        return [(UNKNOWN if self.threshold is not None and score < self.threshold else names[i], score)
                for score, i in zip(best.tolist(), index.tolist())]

    def calibrate_threshold(self, images: Tensor, class_names: Sequence[str], accept_rate: float = 0.95) -> float:
        """Set and return the threshold that accepts ``accept_rate`` of held-out images of known classes.

        ``images`` are labelled examples (not the references) of registered classes; the threshold is the
        ``1 - accept_rate`` quantile of their similarity to their own class's prototype.
        """
        if not 0.0 < accept_rate <= 1.0:
            raise ValueError(f"accept_rate must be in (0, 1], got {accept_rate}.")
        unknown = sorted(set(class_names) - set(self.references))
        if unknown:
            raise ValueError(f"Classes not registered: {unknown}; register them before calibrating.")
        images = images.unsqueeze(0) if images.dim() == 3 else images
        if len(class_names) != len(images):
            raise ValueError(f"{len(class_names)} class names for {len(images)} images.")
        columns = torch.tensor([self.classes.index(name) for name in class_names])
        own = self.similarities(images).gather(1, columns.unsqueeze(1)).squeeze(1)
        self.threshold = float(torch.quantile(own.double(), 1.0 - accept_rate))
        return self.threshold
