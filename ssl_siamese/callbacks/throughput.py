"""Training throughput in images per second (each image = two views).

Example:
    >>> trainer = pl.Trainer(callbacks=[ThroughputMonitor()])   # logs train/img_per_s
"""

from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl
import torch


class ThroughputMonitor(pl.Callback):
    """Logs ``train/img_per_s``: images per second of whole training steps, averaged over the epoch.

    A step is timed from one batch start to the next (data loading, augmentation, forward, backward and
    optimizer all included). On CUDA the device is synchronised every ``sync_every`` steps only, so the
    measurement does not slow training down; the first ``skip_steps`` of each epoch are warm-up.

    The counters exist from construction and restart at every epoch start and at every (re)start of
    training: a run resumed mid-epoch skips ``on_train_epoch_start``, and measures the rest of that
    epoch after a new warm-up.
    """

    def __init__(self, sync_every: int = 20, skip_steps: int = 3) -> None:
        self.sync_every = max(1, sync_every)
        self.skip_steps = skip_steps
        self._reset()

    def _reset(self) -> None:
        self._start: float | None = None
        self._images = 0
        self._steps = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        self._steps += 1
        if self._steps == self.skip_steps or (self._start is None and self.skip_steps <= 0):
            self._synchronize(pl_module)
            self._start, self._images = time.perf_counter(), 0
            return
        if self._start is None:
            return
        self._images += len(batch[1]) * trainer.world_size
        if self._steps % self.sync_every == 0:
            self._log(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._start is not None and self._images:
            self._log(trainer, pl_module)

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._synchronize(pl_module)
        elapsed = time.perf_counter() - self._start
        if elapsed > 0:
            pl_module.log("train/img_per_s", self._images / elapsed, prog_bar=True, rank_zero_only=True)

    @staticmethod
    def _synchronize(pl_module: pl.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
