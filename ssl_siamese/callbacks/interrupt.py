"""Ctrl-C during training: finish the step, save a resumable checkpoint, print the command that resumes it.

Lightning stops at once on Ctrl-C (``KeyboardInterrupt`` in the middle of whatever ran), so the newest
checkpoint was the last epoch's or step's. ``InterruptCheckpoint`` makes the first Ctrl-C a request: the
training step in progress finishes, then the callback raises ``StopRequested`` (a ``KeyboardInterrupt``)
from ``on_train_batch_end``, the point where ``ModelCheckpoint(every_n_train_steps=...)`` saves.
Lightning's own handling takes over (graceful shutdown, ``on_exception``, loggers finalised, exit status
1); in ``on_exception`` the callback writes the checkpoint with ``trainer.save_checkpoint`` (the trainer's
checkpoint IO: atomic with ``SafeCheckpointIO``) and prints the command to resume it. A second Ctrl-C stops
at once as before, without a new checkpoint (the state may be half-way through a step); the command printed
then resumes the newest checkpoint there is. Under DDP the ranks agree on stopping at the same step.

Example:
    >>> trainer = pl.Trainer(callbacks=[InterruptCheckpoint("out/checkpoints/last.ckpt",
    ...                                                     "python train.py --ckpt_path out/checkpoints/last.ckpt")])
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Any

import pytorch_lightning as pl


class StopRequested(KeyboardInterrupt):
    """Raised by ``InterruptCheckpoint`` at the end of the step during which Ctrl-C was pressed."""


class InterruptCheckpoint(pl.Callback):
    """On Ctrl-C: finish the training step, save ``path`` (a resumable Lightning checkpoint), print ``resume``.

    Args:
        path: the checkpoint written on Ctrl-C (the recipes: ``<out>/checkpoints/last.ckpt``, overwritten:
            it is the newest state).
        resume: the command that resumes ``path``, printed after it is written.
    """

    def __init__(self, path: str | Path, resume: str) -> None:
        self.path = Path(path)
        self.resume = resume
        self.requested = False
        self._previous: Any = None

    def _request(self, signum: int, frame: Any) -> None:
        if self.requested:  # the second Ctrl-C: at once
            raise KeyboardInterrupt
        self.requested = True
        print("\nCtrl-C: stopping after the training step in progress and saving a checkpoint "
              "(Ctrl-C again stops at once, without it) ...", file=sys.stderr, flush=True)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.requested = False
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            self._previous = signal.signal(signal.SIGINT, self._request)

    def _restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.strategy.reduce_boolean_decision(self.requested, all=False):  # any rank asked
            raise StopRequested

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore()
        if not isinstance(exception, KeyboardInterrupt):
            return
        if isinstance(exception, StopRequested):
            trainer.save_checkpoint(self.path)
            said = f"Saved a checkpoint at step {trainer.global_step} (epoch {trainer.current_epoch}) to {self.path}"
        elif self.path.is_file():
            said = f"Stopped at once; the newest checkpoint is {self.path} (older than the interrupted step)"
        else:
            return
        if trainer.is_global_zero:
            print(f"{said}. Resume with:\n  {self.resume}", flush=True)
