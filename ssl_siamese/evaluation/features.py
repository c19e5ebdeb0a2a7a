"""The validation features that the evaluation callbacks read, and a gather across ranks of unequal sizes.

``validation_step`` returns ``{"features": (B, D), "labels": (B,)}`` for two dataloaders: 0 is the bank
(train split, no augmentation) and 1 the queries (test split). ``ValidationFeatures`` keeps them per
loader, optionally only the first ``limit`` rows and on the CPU. ``gather_rows`` concatenates a tensor
from every rank in rank order even when the ranks hold different numbers of rows (or none).

Example:
    >>> collected = ValidationFeatures()
    >>> collected.add(outputs, dataloader_idx)            # in on_validation_batch_end
    >>> bank, bank_labels = collected.take(0)             # (N, D) and (N,); empty when nothing came
    >>> bank, bank_labels = gather_rows(bank), gather_rows(bank_labels)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from lightly.utils.dist import world_size
from torch import Tensor

BANK, QUERIES = 0, 1


class ValidationFeatures:
    """Features and labels returned by ``validation_step``, per dataloader (0: bank, 1: queries).

    Args:
        limits: the most rows kept per loader, e.g. ``{0: 10000, 1: 2000}``; the first ones, in loader order.
        cpu: move what is kept to the CPU (the default keeps it on the model's device).
    """

    def __init__(self, limits: dict[int, int] | None = None, cpu: bool = False) -> None:
        self.limits = limits or {}
        self.cpu = cpu
        self.reset()

    def reset(self) -> None:
        """Forget everything collected."""
        self._features: dict[int, list[Tensor]] = {BANK: [], QUERIES: []}
        self._labels: dict[int, list[Tensor]] = {BANK: [], QUERIES: []}

    def add(self, outputs: Any, dataloader_idx: int) -> None:
        """Keep ``outputs["features"]`` and ``outputs["labels"]`` of a bank or query batch; ignore anything else."""
        if not isinstance(outputs, dict) or "features" not in outputs or dataloader_idx not in self._features:
            return
        room = self.limits.get(dataloader_idx, -1)
        if room >= 0:
            room -= sum(len(f) for f in self._features[dataloader_idx])
            if room <= 0:
                return
        features, labels = outputs["features"].detach().float(), outputs["labels"].detach().long()
        if room >= 0:
            features, labels = features[:room], labels[:room]
        if self.cpu:
            features, labels = features.cpu(), labels.cpu()
        self._features[dataloader_idx].append(features)
        self._labels[dataloader_idx].append(labels)

    def take(self, dataloader_idx: int, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
        """``(features (N, D) float32, labels (N,) int64)`` of one loader; ``(0, 0)`` and ``(0,)`` on ``device``
        when nothing was collected."""
        if not self._features[dataloader_idx]:
            return torch.empty(0, 0, device=device), torch.empty(0, dtype=torch.long, device=device)
        return torch.cat(self._features[dataloader_idx]), torch.cat(self._labels[dataloader_idx])


def gather_rows(x: Tensor) -> Tensor:
    """Concatenate ``x`` from every rank in rank order; ranks may hold different numbers of rows, or none.

    Every rank must call it (it is a collective). The ranks first exchange their shapes, pad to the largest,
    all-gather and trim. A rank without rows passes an empty tensor with the same number of dimensions and
    dtype, e.g. ``torch.empty(0, 0)``; its trailing sizes are taken from the other ranks. On one process
    ``x`` is returned as is. No gradient flows through.
    """
    world = world_size()
    if world == 1:
        return x
    shape = torch.tensor(x.shape, dtype=torch.long, device=x.device)
    shapes = [torch.empty_like(shape) for _ in range(world)]
    dist.all_gather(shapes, shape)
    shapes = torch.stack(shapes).cpu()
    full = shapes.amax(dim=0).tolist()
    trailing = {tuple(s[1:].tolist()) for s in shapes if s[0] > 0}
    if len(trailing) > 1:
        raise ValueError(f"Cannot gather rows of different shapes across ranks: {sorted(trailing)}.")
    padded = x.new_zeros(full)
    padded[tuple(slice(0, size) for size in x.shape)] = x
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[: int(rows)] for part, rows in zip(parts, shapes[:, 0])])
