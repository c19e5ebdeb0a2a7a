"""The EMA target network of BYOL-style methods: momentum schedule and update, on lightly's utilities.

Example:
    >>> online = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    >>> target = ema_copy(online)              # a frozen copy: no parameter requires a gradient
    >>> m = ema_momentum(step=10, total_steps=100, base=0.99)   # cosine from 0.99 (step 0) to 1.0 (last)
    >>> update_ema(online, target, m)          # target <- m * target + (1 - m) * online; BN buffers copied
"""

from __future__ import annotations

import copy

import torch
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule
from torch import nn


def ema_copy(online: nn.Module) -> nn.Module:
    """A deep copy of ``online`` that no optimizer trains (``requires_grad`` off everywhere)."""
    target = copy.deepcopy(online)
    deactivate_requires_grad(target)
    return target


def ema_momentum(step: int, total_steps: int, base: float) -> float:
    """BYOL's schedule ``1 - (1 - base) * (cos(pi * step / (total_steps - 1)) + 1) / 2``: ``base`` at step 0,
    1.0 at the last step ``total_steps - 1`` and after (lightly's ``cosine_schedule``; 1.0 when
    ``total_steps <= 1``)."""
    if not 0.0 <= base <= 1.0:
        raise ValueError(f"The EMA base momentum must lie in [0, 1], got {base}.")
    return cosine_schedule(min(step, total_steps), max(1, total_steps), base, 1.0)


@torch.no_grad()
def update_ema(online: nn.Module, target: nn.Module, momentum: float) -> None:
    """``target <- momentum * target + (1 - momentum) * online`` for the parameters (lightly's
    ``update_momentum``); the buffers (BatchNorm running statistics, counters) are copied from ``online``,
    which ``update_momentum`` leaves alone. ``online`` and ``target`` must have the same structure."""
    update_momentum(online, target, momentum)
    for target_buffer, online_buffer in zip(target.buffers(), online.buffers()):
        target_buffer.copy_(online_buffer)
