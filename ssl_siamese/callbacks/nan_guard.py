"""Stop training at the first NaN or inf loss, before it reaches the weights or a checkpoint.

Example:
    >>> trainer = pl.Trainer(callbacks=[NonFiniteLossGuard(), ModelCheckpoint(save_last=True)])
    >>> trainer.fit(model)   # raises NonFiniteLossError("... at global step 1234 (epoch 7) ...")
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import Tensor


class NonFiniteLossError(RuntimeError):
    """The training loss was NaN or inf; the message names the global step and epoch."""


class NonFiniteLossGuard(pl.Callback):
    """Raises ``NonFiniteLossError`` when the loss is not finite, BEFORE backward.

    Checking in ``on_before_backward`` means the bad step never produces gradients nor an optimizer
    step: the weights in memory are those of the last good step, and no checkpoint with NaN weights can
    be written afterwards (not even by ``ModelCheckpoint(save_on_exception=True)``); ``last.ckpt`` keeps
    the last good step. The decision is reduced over ranks, so under DDP every rank stops together
    instead of the others hanging in the next collective. Costs one device-to-host sync per step.
    """

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        finite = bool(torch.isfinite(loss.detach()).all())
        if trainer.strategy.reduce_boolean_decision(finite, all=True):
            return
        value = "on another rank" if finite else loss.detach().float().item()
        raise NonFiniteLossError(
            f"Non-finite training loss ({value}) at global step {trainer.global_step} "
            f"(epoch {trainer.current_epoch}); training stopped before backward, so the weights and "
            "checkpoints are those of the last finite step. Lower the learning rate, add warm-up, or use "
            "32-bit precision, then resume from the last checkpoint.")
