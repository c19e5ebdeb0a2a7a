"""The experiment logger of a recipe: Weights & Biases (offline unless a key is set), CSV or TensorBoard.

Example:
    >>> logger = make_logger("wandb", "out/simclr", run_name="simclr")   # out/simclr/wandb/offline-run-*
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path

from pytorch_lightning.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger

LOGGERS = ("wandb", "csv", "tensorboard", "none")


def wandb_has_credentials() -> bool:
    """True when W&B can sync: ``WANDB_API_KEY`` is set or ``~/.netrc`` has an api.wandb.ai entry."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def make_logger(kind: str, out: str | Path, run_name: str, project: str = "ssl_siamese") -> Logger | bool:
    """Build the logger named ``kind`` writing under ``out``; ``none`` returns False (logging off).

    W&B runs offline when there are no credentials (or ``WANDB_MODE=offline``); sync them later with
    ``wandb sync out/<run>/wandb/offline-run-*``. No key and no network are ever needed.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if kind == "wandb":
        offline = os.environ.get("WANDB_MODE", "") in ("offline", "dryrun") or not wandb_has_credentials()
        return WandbLogger(name=run_name, project=project, save_dir=str(out), offline=offline)
    if kind == "csv":
        return CSVLogger(save_dir=str(out), name="csv")
    if kind == "tensorboard":
        return TensorBoardLogger(save_dir=str(out), name="tensorboard")
    if kind == "none":
        return False
    raise ValueError(f"Unknown logger {kind!r}; choose one of {LOGGERS}.")
