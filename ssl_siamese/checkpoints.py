"""Checkpoint files that survive a kill mid-save and never run code when loaded.

``SafeCheckpointIO`` is the recipes' Lightning checkpoint plugin. Writing: the checkpoint goes to a
temporary file in the SAME folder, is flushed to disk (fsync), then renamed over the target with
``os.replace``, so a kill at any moment leaves either the previous file or the new one, both whole.
(Lightning's own writer stages its temporary file in the system temp folder; on a cluster that is another
filesystem, where the final move is a copy and not atomic.) Reading: always ``weights_only=True``, so a
checkpoint from an untrusted source cannot execute code; a refused or truncated file is a clear error.

Example:
    >>> trainer = pl.Trainer(plugins=[SafeCheckpointIO()], callbacks=[ModelCheckpoint(save_last=True)])
    >>> check_resume_checkpoint(model, "out/simclr/checkpoints/last.ckpt")  # before fit(ckpt_path=...)
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO
from torch import nn


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: truncated, unsafe, or of another model."""


def _is_local(path: str | Path) -> bool:
    return "://" not in str(path) or str(path).startswith("file://")


def read_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with errors that say what is wrong with the file."""
    path = Path(str(path).removeprefix("file://"))
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint file not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path} holds pickled objects that weights-only loading refuses (they could run code), so it was "
            f"not loaded. Only load checkpoints you trust; re-save its state_dict with plain tensors. "
            f"Details: {str(error).splitlines()[0]}") from error
    except (RuntimeError, EOFError, OSError, ValueError) as error:  # a cut-off zip, a foreign format
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupt?): {error}") from error


class SafeCheckpointIO(TorchCheckpointIO):
    """Atomic, fsynced checkpoint writes in the target folder; weights-only reads."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path,
                        storage_options: Any | None = None) -> None:
        if not _is_local(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(str(path).removeprefix("file://"))
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, path)
        finally:
            if os.path.exists(temp):
                os.remove(temp)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # make the rename itself durable
        finally:
            os.close(directory)

    def load_checkpoint(self, path: str | Path, map_location: Callable | Any = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        if not _is_local(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        return read_checkpoint(path, map_location=map_location or "cpu")


def check_resume_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Raise ``CheckpointError`` unless ``path`` holds weights that fit ``model`` exactly.

    Lists the first missing, unexpected and mis-shaped keys, so "resumed a MoCo checkpoint into SimCLR"
    or "resnet18 weights into resnet50" is a one-line message instead of Lightning's strict-load traceback.
    """
    checkpoint = read_checkpoint(path)
    if "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no 'state_dict'); to start from an "
                              "exported backbone, pass it as the backbone instead of resuming.")
    saved, expected = checkpoint["state_dict"], model.state_dict()
    missing = [k for k in expected if k not in saved]
    unexpected = [k for k in saved if k not in expected]
    shapes = [f"{k} {tuple(saved[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in saved and hasattr(saved[k], "shape") and saved[k].shape != v.shape]
    if missing or unexpected or shapes:
        saved_by = checkpoint.get("ssl_siamese_method") or "another model"
        problems = [f"{name} ({len(keys)}): {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                    for name, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)) if keys]
        raise CheckpointError(
            f"{path} does not fit this {type(model).__name__} (it was saved by {saved_by}): "
            + "; ".join(problems) + ". Resume with the same method, backbone and heads, or start afresh.")
