"""The experiment logger of a recipe: Weights & Biases (offline unless asked), CSV or TensorBoard.

The W&B rule: a run is **offline** (written under ``<out>/wandb/offline-run-*``, synced later with
``wandb sync``) unless it is asked to go online, by ``--wandb_mode online`` on the recipe's command line or
``WANDB_MODE=online`` in the environment; the flag wins over the variable. Having credentials (an API key or
``wandb login``) never switches a run online by itself. An online run without credentials is refused before
training starts. ``WANDB_MODE=disabled`` is respected (nothing is written).

Runs carry a name, a group (method-dataset), tags and a job type; the pretraining recipes put their whole
resolved configuration (model, data, trainer, callbacks) in the run's config (:class:`ConfigToLoggers`) and
log the exported backbone folder as a W&B model Artifact (:func:`log_model_artifact`) that
``linear_probe --ckpt wandb:ENTITY/PROJECT/NAME:ALIAS`` fetches back (:func:`fetch_wandb_artifact`).

A resumed run continues the same W&B run: every checkpoint records the run id (``checkpoint["wandb_run_id"]``,
written by :class:`WandbRunId`), and :func:`make_logger` takes it as ``run_id``.

Example:
    >>> logger = make_logger("wandb", "out/simclr", run_name="simclr")   # out/simclr/wandb/offline-run-*
    >>> logger = make_logger("wandb", "out/simclr", "simclr", mode="online", run_id=stored_wandb_run_id(ckpt))
"""

from __future__ import annotations

import netrc
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import yaml
from pytorch_lightning.cli import SaveConfigCallback
from pytorch_lightning.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from pytorch_lightning.utilities import rank_zero_info

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
                mode: str | None = None, run_id: str | None = None, group: str | None = None,
                tags: Sequence[str] = (), job_type: str | None = None) -> Logger | bool:
    """Build the logger named ``kind`` writing under ``out``; ``none`` returns False (logging off).

    For W&B, ``mode`` follows :func:`wandb_mode` (offline unless ``online`` is asked for) and ``run_id``
    continues that run (``resume="allow"``) instead of starting a new one; ``group``, ``tags`` and
    ``job_type`` are W&B's (e.g. ``"simclr-cifar10"``, ``["simclr", "cifar10", "resnet18"]``, ``"pretrain"``).
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
                           mode=resolved, id=run_id, resume="allow", group=group,
                           tags=[str(tag) for tag in tags if tag] or None, job_type=job_type)
    if kind == "csv":
        return CSVLogger(save_dir=str(out), name="csv")
    return TensorBoardLogger(save_dir=str(out), name="tensorboard")


def finish_loggers(loggers: Sequence[Logger]) -> None:
    """Finalize every logger and close its W&B run, so that the files of the run are complete when a recipe ends
    (the one way every recipe does it; a later recipe in the same process starts a run of its own)."""
    for logger in loggers:
        logger.finalize("success")
        if isinstance(logger, WandbLogger):
            logger.experiment.finish()


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


def steps_in_an_epoch(trainer: pl.Trainer) -> int | None:
    """Optimizer steps per training epoch of the trainer's ``fit`` (None when unknown, e.g. an unsized stream)."""
    batches = trainer.num_training_batches
    if not batches or batches == float("inf"):
        return None
    return -(-int(batches) // trainer.accumulate_grad_batches)


class LogIntervalToEpoch(pl.Callback):
    """Lowers ``trainer.log_every_n_steps`` to a quarter of an epoch when an epoch is shorter than it.

    A small folder of 5 batches with the default 10 would log the loss once in two epochs; this logs it
    about four times an epoch instead, and says so.
    """

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        steps = steps_in_an_epoch(trainer)
        if steps and trainer.log_every_n_steps > steps:
            lowered = max(1, steps // 4)
            rank_zero_info(f"log_every_n_steps {trainer.log_every_n_steps} is more than the {steps} steps of an "
                           f"epoch: logging every {lowered} steps instead (--trainer.log_every_n_steps sets it)")
            trainer.log_every_n_steps = lowered


class ConfigToLoggers(SaveConfigCallback):
    """LightningCLI's ``config.yaml`` in the log folder, and the same resolved configuration (model, data,
    trainer, callbacks, every default filled in) in each W&B run's config, so a run can be reproduced from
    W&B alone: ``wandb.Api().run(path).config`` -> ``--config`` of the recipe."""

    def save_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.config.update(config, allow_val_change=True)


def log_model_artifact(loggers: Sequence[Logger], path: str | Path, name: str, metadata: dict[str, Any],
                       best: bool = False) -> list[str]:
    """Log ``path`` (a file or the exported folder) as a W&B ``model`` Artifact ``name`` with ``metadata``.

    Aliases: ``latest`` (W&B's own) and ``best`` when ``best`` (the recipes: the final kNN accuracy is the
    run's highest). Returns the aliases given; nothing happens without a ``WandbLogger``. Offline, the
    artifact is staged with the run and uploaded by ``wandb sync``.
    """
    import wandb

    aliases = ["latest"] + (["best"] if best else [])
    for logger in loggers:
        if not isinstance(logger, WandbLogger):
            continue
        artifact = wandb.Artifact(name, type="model", metadata={k: v for k, v in metadata.items() if v is not None})
        path = Path(path)
        artifact.add_dir(str(path)) if path.is_dir() else artifact.add_file(str(path))
        logger.experiment.log_artifact(artifact, aliases=aliases)
    return aliases


def fetch_wandb_artifact(spec: str, root: str | Path | None = None) -> Path:
    """Download ``wandb:ENTITY/PROJECT/NAME:ALIAS`` (a model Artifact) and return its local folder.

    Needs W&B credentials and the network; says so clearly without them.
    """
    name = spec.removeprefix("wandb:")
    if name.count("/") != 2 or ":" not in name.rsplit("/", 1)[1]:
        raise ValueError(f"{spec!r} is not a W&B artifact reference; write wandb:ENTITY/PROJECT/NAME:ALIAS, "
                         "e.g. wandb:me/ssl_siamese/simclr-cifar10-backbone:best")
    if not wandb_has_credentials():
        raise ValueError(f"{spec} needs W&B credentials to download: run `wandb login` (or set WANDB_API_KEY), "
                         "or pass the exported folder or .pt file itself.")
    import wandb

    try:
        artifact = wandb.Api().artifact(name, type="model")
    except Exception as error:  # wandb raises CommError/ValueError subclasses that vary by version
        raise ValueError(f"Could not fetch the W&B artifact {name}: {error}") from error
    return Path(artifact.download(root=None if root is None else str(root)))
