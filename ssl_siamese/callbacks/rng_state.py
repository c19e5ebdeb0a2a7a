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


class RNGStateCheckpoint(pl.Callback):
    """Stores the torch (CPU and CUDA), numpy and Python RNG states; restores them on resume.

    Lightning does not restore RNG states by default, so after a resume the views (made from the global
    torch RNG on the device, see ``ssl_siamese.augment``) and the shuffling of a ``DataLoader`` without
    its own generator (its sampler draws a seed from the global RNG at each epoch start) differ from
    the uninterrupted run. With this callback, resuming from a checkpoint saved at an epoch boundary
    reproduces the uninterrupted run exactly (``tests/test_resume.py``).

    Limits: resuming from a checkpoint saved mid-epoch with a plain ``DataLoader`` starts a new shuffled
    pass for the rest of that epoch (Lightning warns), so some images repeat and others are skipped
    until the epoch ends; exactness there needs a resumable loader (``state_dict``/``load_state_dict``).
    Under DDP the checkpoint holds rank 0's states, which every rank restores.
    """

    def state_dict(self) -> dict[str, Any]:
        # numpy's key array as a tensor: checkpoints must load with torch.load(weights_only=True)
        kind, key, pos, has_gauss, gauss = np.random.get_state()
        numpy_state = (kind, torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss), float(gauss))
        state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        kind, key, pos, has_gauss, gauss = state_dict["numpy"]
        np.random.set_state((kind, key.numpy().astype(np.uint32), pos, has_gauss, gauss))
        random.setstate(state_dict["python"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
