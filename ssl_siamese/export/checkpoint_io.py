"""``SafeCheckpointIO``: the recipes' Lightning checkpoint plugin (atomic fsynced writes, weights-only reads).

It lives apart from :mod:`ssl_siamese.export.checkpoints` because it subclasses a Lightning class: reading a
checkpoint or an exported backbone imports no Lightning; ``ssl_siamese.export.checkpoints.SafeCheckpointIO`` still
names this class (imported on first use). See :mod:`ssl_siamese.export.checkpoints` for the file rules.

Example:
    >>> trainer = pl.Trainer(plugins=[SafeCheckpointIO()], callbacks=[ModelCheckpoint(save_last=True)])
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from ssl_siamese.export.checkpoints import _is_local, read_checkpoint


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
