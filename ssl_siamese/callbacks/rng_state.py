"""Save the random number generators in checkpoints, so a resumed run draws what the original would have.

Example:
    >>> trainer = pl.Trainer(callbacks=[RNGStateCheckpoint(), ModelCheckpoint(save_last=True)])
    >>> trainer.fit(model, datamodule=dm, ckpt_path="checkpoints/last.ckpt")   # same views, same data order
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch


def get_rng_states() -> dict[str, Any]:
    """The torch (CPU and, once initialised, CUDA), numpy and Python RNG states, loadable weights-only."""
    # numpy's key array as a tensor: checkpoints must load with torch.load(weights_only=True)
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = (kind, torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss), float(gauss))
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_states(state: dict[str, Any]) -> None:
    """Set the generators to a ``get_rng_states()`` result."""
    torch.set_rng_state(state["torch"])
    kind, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RNGStateCheckpoint(pl.Callback):
    """Stores the torch (CPU and CUDA), numpy and Python RNG states; restores them on resume.

    Lightning does not restore RNG states by default, so after a resume the views (made from the global
    torch RNG on the device, see ``ssl_siamese.views.augment``) and the shuffling of a ``DataLoader`` without
    its own generator (its sampler draws a seed from the global RNG at each epoch start) differ from
    the uninterrupted run. With this callback, resuming reproduces the uninterrupted run exactly
    (``tests/test_resume.py``, ``tests/test_resume_cli.py``).

    Validation is kept out of training's random stream: every ``DataLoader`` iterator draws a seed from
    the global RNG, and a resumed run does not validate where the uninterrupted one did (no sanity check
    when restarting mid-epoch; the interrupted epoch's validation done or not). So the states are kept
    after every training batch and put back after each validation and sanity check, and a checkpoint
    holds the states as training left them.

    Limits: resuming from a checkpoint saved mid-epoch with a plain ``DataLoader`` starts a new shuffled
    pass for the rest of that epoch (Lightning warns), so some images repeat and others are skipped
    until the epoch ends; exactness there needs a resumable loader (``state_dict``/``load_state_dict``).
    Under DDP the checkpoint holds rank 0's states, which every rank restores.
    """

    def __init__(self) -> None:
        self._training_states: dict[str, Any] | None = None  # as the last training batch left them

    def _keep(self) -> None:
        self._training_states = get_rng_states()

    def _put_back(self) -> None:
        if self._training_states is not None:
            set_rng_states(self._training_states)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._keep()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        self._keep()

    def on_sanity_check_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._keep()

    def on_sanity_check_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._put_back()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._put_back()

    def state_dict(self) -> dict[str, Any]:
        return self._training_states if self._training_states is not None else get_rng_states()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        set_rng_states(state_dict)
        self._training_states = state_dict
