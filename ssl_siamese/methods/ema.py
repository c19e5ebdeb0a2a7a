"""The EMA target network of MoCo (key encoder), BYOL (target) and DINO (teacher): schedule, update, logging.

A method mixes in ``EMATarget`` before ``SiameseModule``, calls ``init_ema_target`` in ``__init__`` with its
base momentum, and names its two networks in ``ema_networks``; ``update_target()`` at the start of each training
step moves the target, and every training step logs ``train/ema_momentum``.

Example:
    >>> class MyMethod(EMATarget, SiameseModule):
    ...     def __init__(self, base_momentum: float = 0.99, **kwargs):
    ...         super().__init__(**kwargs)
    ...         self.target = ema_copy(self.backbone)        # a frozen copy: no parameter requires a gradient
    ...         self.init_ema_target(base_momentum)          # cosine from 0.99 (step 0) to 1.0 (last step)
    ...     def ema_networks(self):
    ...         return self.backbone, self.target
    ...     def shared_step(self, view0, view1):
    ...         self.update_target()                         # target <- m * target + (1 - m) * online
    ...         ...

The functions underneath work on any pair of modules:
    >>> m = ema_momentum(step=10, total_steps=100, base=0.99)
    >>> update_ema(online, target, m)          # target <- m * target + (1 - m) * online; BN buffers copied
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule
from torch import Tensor, nn


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


class EMATarget:
    """Mixin of a ``SiameseModule`` whose target network is an exponential moving average of its online one.

    The momentum of a step is ``base`` (``cosine=False``) or ``ema_momentum`` of the Trainer's step position
    (``schedule_position``: restored on resume, so the schedule resumes exactly); the last one used is the
    ``ema_momentum`` buffer, logged as ``train/ema_momentum`` at every training step. With gradient accumulation
    each micro-batch updates the target (with the same momentum).
    """

    ema_momentum: Tensor

    def init_ema_target(self, base: float, cosine: bool = True, persistent: bool = True) -> None:
        """Check ``base`` (a clear error outside [0, 1], now) and register the ``ema_momentum`` buffer;
        ``persistent=False`` keeps it out of the checkpoint (MoCo's checkpoints never held it)."""
        ema_momentum(0, 1, base)
        self.ema_base, self.ema_cosine = float(base), cosine
        self.register_buffer("ema_momentum", torch.tensor(float(base)), persistent=persistent)

    def ema_networks(self) -> tuple[nn.Module, nn.Module]:
        """``(online, target)``: the trained network and its EMA, laid out alike (same parameters, same buffers)."""
        raise NotImplementedError

    def momentum_at(self, step: int, total_steps: int) -> float:
        """The EMA momentum at ``step`` of ``total_steps``: constant, or cosine from the base to 1.0."""
        return ema_momentum(step, total_steps, self.ema_base) if self.ema_cosine else self.ema_base

    def current_momentum(self) -> float:
        """This step's momentum: ``momentum_at`` the Trainer's step position (``(0, 1)`` without a Trainer)."""
        return self.momentum_at(*self.schedule_position())

    def update_target(self, momentum: float | None = None) -> float:
        """One EMA step of the target (``update_ema``) with ``momentum`` (``None``: ``current_momentum()``),
        remembered in the ``ema_momentum`` buffer; returns it."""
        momentum = self.current_momentum() if momentum is None else momentum
        update_ema(*self.ema_networks(), momentum)
        self.ema_momentum.fill_(momentum)
        return momentum

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        output = super().training_step(batch, batch_idx)
        self.log("train/ema_momentum", self.ema_momentum.float(), sync_dist=False)
        return output
