"""One-shot (or few-shot) classification with a frozen backbone: register references, then classify.

Each class is represented by the embeddings of its reference images (one or a few). Its prototype is the
normalised mean of their normalised embeddings, and an image takes the class of the most cosine-similar
prototype. Adding a class is registering its references: nothing is retrained.

The "unknown" threshold: an image whose best cosine similarity (to the nearest prototype) is below
``threshold`` is ``"unknown"``. Raw cosine values depend on the backbone (ReLU features of a small ConvNet
are all above 0.9; a ResNet's spread wider), so no fixed number means anything: calibrate it.
``calibrate_threshold`` takes held-out images of the registered classes (not the references) and sets the
threshold to the ``false_reject_rate`` quantile of their best similarities, so about that fraction of new
images of known classes is rejected. How many images of unregistered classes it rejects depends on how well
the backbone separates them (``tests/test_downstream.py`` measures both on Fashion-MNIST).

Example:
    >>> backbone, _, metadata = load_backbone("out/simclr/exported_models/backbone.pt")
    >>> classifier = OneShotClassifier(backbone, metadata)
    >>> classifier.register("sneaker", "refs/sneaker.png")      # files, (C, H, W) / (K, C, H, W) tensors, lists
    >>> classifier.register("bag", bag_images)
    >>> classifier.calibrate_threshold(held_out_images, held_out_names, false_reject_rate=0.05)
    >>> classifier.classify(["a.png", "b.webp"])                # [("bag", 0.83), ("unknown", 0.41)]
    >>> classifier.classify(files, on_error="skip")             # ("unreadable", nan) for a broken file
    >>> classifier.skipped                                      # [(path, reason), ...] of that call

Files that cannot be read (a truncated download, the ``._name.png`` files macOS leaves) raise
``ImageReadError`` by default; ``on_error="skip"`` leaves them out, as the recipes do, and records each with
its reason in ``skipped`` (and a warning). List folders with ``ssl_siamese.data.images.list_image_files``, which
ignores hidden and ``._`` files.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_siamese.data.images import ImageReadError, read_image
from ssl_siamese.search.embeddings import Images, embed_images

UNKNOWN = "unknown"
UNREADABLE = "unreadable"  # classify(..., on_error="skip")'s answer for a file that could not be read
OnError = Literal["raise", "skip"]
SAME_IMAGE_COSINE = 1.0 - 1e-6  # a held-out embedding this close to a reference is that reference


class OneShotClassifier:
    """Nearest-prototype classification by cosine similarity, with an optional "unknown" threshold.

    Args:
        backbone: a feature extractor, e.g. from ``load_backbone``.
        metadata: its ``image_size``, ``mean`` and ``std`` (``load_backbone``'s metadata).
        threshold: best cosine similarity below which an image is ``"unknown"``; ``None`` never rejects.
            Set it with ``calibrate_threshold`` rather than by hand (see the module docstring).
        device: where the backbone runs (default: cuda when available).
    """

    def __init__(self, backbone: nn.Module, metadata: Mapping[str, Any], threshold: float | None = None,
                 device: str | torch.device | None = None, batch_size: int = 256) -> None:
        self.backbone, self.metadata, self.threshold = backbone, dict(metadata), threshold
        self.device, self.batch_size = device, batch_size
        self.false_reject_rate: float | None = None  # set by calibrate_threshold
        self.references: dict[str, Tensor] = {}
        self.skipped: list[tuple[str, str]] = []  # (file, reason) left out by the last call with on_error="skip"

    @property
    def classes(self) -> list[str]:
        """The registered class names, in registration order."""
        return list(self.references)

    def embed(self, images: Images) -> Tensor:
        """Normalised embeddings ``(N, D)`` of images: a batch ``(N, C, H, W)``, one image ``(C, H, W)``, a list
        of images of any sizes, or image files (``embed_images`` says which dtypes and channels)."""
        features = embed_images(self.backbone, images, self.metadata, self.batch_size, self.device, progress=False)
        return F.normalize(features, dim=1)

    def readable(self, images: Images, on_error: OnError = "raise") -> tuple[Images, list[int] | None]:
        """``(images, positions kept)``: with ``on_error="skip"`` the files that cannot be read are left out
        (read here at the backbone's size, as ``embed`` would) and recorded in ``skipped`` with their reason;
        positions are None when nothing was checked (``"raise"``, or no file among ``images``)."""
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}.")
        self.skipped = []
        entries = [images] if isinstance(images, (str, os.PathLike)) else images
        if on_error == "raise" or not isinstance(entries, (list, tuple)):
            return images, None
        size = int(self.metadata.get("image_size") or 0) or None
        kept, positions = [], []
        for position, entry in enumerate(entries):
            if isinstance(entry, (str, os.PathLike)):
                try:
                    entry = read_image(entry, size)
                except (ImageReadError, FileNotFoundError) as error:
                    self.skipped.append((str(entries[position]), str(error)))
                    continue
            kept.append(entry)
            positions.append(position)
        if self.skipped:
            warnings.warn(f"Skipped {len(self.skipped)} of {len(entries)} files that could not be read (see "
                          f".skipped), first: {self.skipped[0][1]}", stacklevel=3)
        return kept, positions

    def register(self, class_name: str, images: Images, on_error: OnError = "raise") -> int:
        """Add reference images of ``class_name`` (a new class or more shots); returns its reference count.

        ``on_error="skip"`` leaves out files that cannot be read (``skipped`` says which and why); at least
        one must be readable. A threshold calibrated before is kept as is: calibrate again after changing the
        references.
        """
        if class_name in (UNKNOWN, UNREADABLE):
            raise ValueError(f"{class_name!r} is reserved for rejected or unreadable images; choose another class name.")
        images, positions = self.readable(images, on_error)
        if positions is not None and not positions:
            raise ValueError(f"None of the images of {class_name!r} could be read: "
                             + "; ".join(reason for _, reason in self.skipped[:3]))
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

    def similarities(self, images: Images) -> Tensor:
        """Cosine similarity ``(N, C)`` of each image to each class prototype (columns: ``classes``)."""
        return self.embed(images) @ self.prototypes().T

    def classify(self, images: Images, on_error: OnError = "raise") -> list[tuple[str, float]]:
        """``(class_name or "unknown", best cosine similarity)`` for each image (files, tensors or a list).

        ``on_error="skip"``: a file that cannot be read gets ``("unreadable", nan)`` in its place (the list
        still matches ``images`` one to one) and is recorded in ``skipped``.
        """
        readable, positions = self.readable(images, on_error)
        if positions is not None and not positions:
            return [(UNREADABLE, math.nan)] * len(self.skipped)
        best, index = self.similarities(readable).max(dim=1)
        names = self.classes
        answers = [(UNKNOWN if self.threshold is not None and score < self.threshold else names[i], score)
                   for score, i in zip(best.tolist(), index.tolist())]
        if positions is None:
            return answers
        placed: list[tuple[str, float]] = [(UNREADABLE, math.nan)] * (len(positions) + len(self.skipped))
        for position, answer in zip(positions, answers):
            placed[position] = answer
        return placed

    def calibrate_threshold(self, images: Images, class_names: Sequence[str], false_reject_rate: float = 0.05,
                            accept_rate: float | None = None, on_error: OnError = "raise") -> float:
        """Set and return the threshold that rejects ``false_reject_rate`` of held-out images of known classes.

        ``images`` are labelled images of registered classes that are NOT references (a reference is as similar
        to its own prototype as it can be, which would make the threshold too lenient: refused). The threshold
        is the ``false_reject_rate`` quantile (linear interpolation) of their best similarity, the score
        ``classify`` compares with it, so ``classify`` rejects that fraction of them and, on further images
        like them, about that fraction. ``class_names`` must name registered classes; they are used only to
        check that. ``accept_rate`` is the older spelling: ``false_reject_rate = 1 - accept_rate``.
        Calibrate after the last ``register``: new references move the prototypes. ``on_error="skip"`` leaves
        out files that cannot be read, with their class names (``skipped`` says which and why).
        """
        if accept_rate is not None:
            false_reject_rate = 1.0 - accept_rate
        if not 0.0 <= false_reject_rate < 1.0:
            raise ValueError(f"false_reject_rate must be in [0, 1) (accept_rate in (0, 1]), got {false_reject_rate}.")
        unknown = sorted(set(class_names) - set(self.references))
        if unknown:
            raise ValueError(f"Classes not registered: {unknown}; register them before calibrating.")
        images, positions = self.readable(images, on_error)
        if positions is not None:
            if len(class_names) != len(positions) + len(self.skipped):
                raise ValueError(f"{len(class_names)} class names for {len(positions) + len(self.skipped)} images.")
            class_names = [class_names[position] for position in positions]
        embeddings = self.embed(images)
        if len(class_names) != len(embeddings):
            raise ValueError(f"{len(class_names)} class names for {len(embeddings)} images.")
        references = torch.cat(list(self.references.values()))
        repeated = int(((embeddings @ references.T).max(dim=1).values >= SAME_IMAGE_COSINE).sum())
        if repeated:
            raise ValueError(f"{repeated} of the {len(embeddings)} calibration images are registered references; "
                             "calibrate on held-out images of the registered classes, not on the references.")
        if len(embeddings) * false_reject_rate < 1.0 and false_reject_rate > 0.0:
            warnings.warn(f"{len(embeddings)} held-out images cannot resolve a false-reject rate of "
                          f"{false_reject_rate}: at least {math.ceil(1 / false_reject_rate)} are needed, so the "
                          "rate realised on new images may differ a lot.", stacklevel=2)
        best = (embeddings @ self.prototypes().T).max(dim=1).values
        self.threshold = float(torch.quantile(best.double(), false_reject_rate))
        self.false_reject_rate = float(false_reject_rate)
        return self.threshold
