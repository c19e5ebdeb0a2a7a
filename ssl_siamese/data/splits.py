"""Subsets of an in-memory split: seeded subsets, per-class held-out splits, class filters.

Example:
    >>> len(hold_out_split(torch.arange(100) % 4, 0.1, seed=0))
    12
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ssl_siamese.data.info import MAX_HELD_OUT, ImageTensors


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


HELD_OUT_SEED_OFFSET = 3
"""A labelled folder's held-out split is drawn with the data seed + 3 (its subsets use + 0, + 1 and + 2)."""


def split_held_out(data: ImageTensors, fraction: float, seed: int) -> tuple[ImageTensors, ImageTensors | None]:
    """``(rest, held out)`` of a labelled split that has no test split: :func:`hold_out_split` of its labels
    with ``seed + HELD_OUT_SEED_OFFSET``, ``seed`` being the data seed (``--data.seed``); held out is None when
    no image is. Pretraining validates on the held-out images and does not train on them; the evaluation
    recipes test on the same images (:mod:`ssl_siamese.data.evaluation`).

    Example:
        >>> rest, held = split_held_out(folder_images, 0.1, seed=0)  # doctest: +SKIP
    """
    held = hold_out_split(data.labels, fraction, seed + HELD_OUT_SEED_OFFSET)
    if not len(held):
        return data, None
    rest = torch.ones(len(data), dtype=torch.bool)
    rest[held] = False
    return data.subset(torch.nonzero(rest).flatten()), data.subset(held)


def keep_classes(data: ImageTensors, classes: list[int] | None) -> ImageTensors:
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


def align_classes(query: ImageTensors, classes: list[str]) -> ImageTensors:
    """Relabel ``query`` with the indices of ``classes``; drop images of classes not in it."""
    if query.classes == classes:
        return query
    index = {name: i for i, name in enumerate(classes)}
    mapping = torch.tensor([index.get(name, -1) for name in query.classes] or [-1], dtype=torch.int64)
    labels = torch.where(query.labels >= 0, mapping[query.labels.clamp(min=0)], -1)
    keep = labels >= 0
    return ImageTensors(query.images[keep], labels[keep], list(classes))

