"""The experiment logger of a recipe: Weights & Biases (offline unless asked), CSV or TensorBoard.

The W&B rule: a run is **offline** (written under ``<out>/wandb/offline-run-*``, synced later with
``wandb sync``) unless it is asked to go online, by ``--wandb_mode online`` on the recipe's command line or
``WANDB_MODE=online`` in the environment; the flag wins over the variable. Having credentials (an API key or
``wandb login``) never switches a run online by itself. An online run without credentials is refused before
training starts. ``WANDB_MODE=disabled`` is respected (nothing is written).

A resumed run continues the same W&B run: every checkpoint records the run id (``checkpoint["wandb_run_id"]``,
written by :class:`WandbRunId`), and :func:`make_logger` takes it as ``run_id``.

Example:
    >>> logger = make_logger("wandb", "out/simclr", run_name="simclr")   # out/simclr/wandb/offline-run-*
    >>> logger = make_logger("wandb", "out/simclr", "simclr", mode="online", run_id=stored_wandb_run_id(ckpt))
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger

LOGGERS = ("wandb", "csv", "tensorboard", "none")
WANDB_MODES = ("offline", "online")
RUN_ID_KEY = "wandb_run_id"
_MODE_ALIASES = {"offline": "offline", "dryrun": "offline", "online": "online", "run": "online",
                 "disabled": "disabled"}


def wandb_has_credentials() -> bool:
    """True when W&B can sync: ``WANDB_API_KEY`` is set or ``~/.netrc`` (``$NETRC``) has an api.wandb.ai entry."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_mode(requested: str | None = None) -> str:
    """``offline``, ``online`` or ``disabled``: ``requested`` if given, else ``$WANDB_MODE``, else ``offline``.

    Raises:
        ValueError: an unknown mode, or ``online`` without W&B credentials (the message says how to log in).
    """
    value = (requested or os.environ.get("WANDB_MODE") or "offline").strip().lower()
    source = f"--wandb_mode {value}" if requested else f"WANDB_MODE={value}"
    if value not in _MODE_ALIASES:
        raise ValueError(f"{source} is not a W&B mode; use offline or online.")
    mode = _MODE_ALIASES[value]
    if mode == "online" and not wandb_has_credentials():
        raise ValueError(f"{source} needs W&B credentials and there are none: run `wandb login` (or set "
                         "WANDB_API_KEY), or log offline (--wandb_mode offline, the default) and upload later "
                         "with `wandb sync <out>/wandb/offline-run-*`.")
    return mode


def make_logger(kind: str, out: str | Path, run_name: str, project: str = "ssl_siamese",
                mode: str | None = None, run_id: str | None = None) -> Logger | bool:
    """Build the logger named ``kind`` writing under ``out``; ``none`` returns False (logging off).

    For W&B, ``mode`` follows :func:`wandb_mode` (offline unless ``online`` is asked for) and ``run_id``
    continues that run (``resume="allow"``) instead of starting a new one.
    """
    if kind not in LOGGERS:
        raise ValueError(f"Unknown logger {kind!r}; choose one of {LOGGERS}.")
    if kind == "none":
        return False
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if kind == "wandb":
        resolved = wandb_mode(mode)
        # Lightning's offline flag keeps its own checks (no model upload offline); mode is passed to wandb.init
        return WandbLogger(name=run_name, project=project, save_dir=str(out), offline=resolved == "offline",
                           mode=resolved, id=run_id, resume="allow")
    if kind == "csv":
        return CSVLogger(save_dir=str(out), name="csv")
    return TensorBoardLogger(save_dir=str(out), name="tensorboard")


def stored_wandb_run_id(checkpoint: dict[str, Any]) -> str | None:
    """The W&B run id a checkpoint was written under (by :class:`WandbRunId`), or None."""
    run_id = checkpoint.get(RUN_ID_KEY) if isinstance(checkpoint, dict) else None
    return str(run_id) if run_id else None


class WandbRunId(pl.Callback):
    """Record the W&B run id in every checkpoint, so that resuming from it continues the same run."""

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and trainer.is_global_zero and logger.version:
                checkpoint[RUN_ID_KEY] = str(logger.version)
