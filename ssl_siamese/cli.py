"""The command line shared by the pretraining recipes (LightningCLI with our defaults).

``python -m ssl_siamese.recipes.simclr [--config recipes/X.yaml] [--model.temperature 0.2] ...``:
builds the method, the data and the trainer from flags and YAML; measures kNN accuracy at
initialisation; trains; and exports the backbone to ``<out>/exported_models/backbone.pt``.
"""

from __future__ import annotations

import difflib
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import LearningRateMonitor
from pytorch_lightning.cli import LightningCLI
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_info

from ssl_siamese.callbacks import CollapseMonitor, ThroughputMonitor
from ssl_siamese.callbacks.nan_guard import NonFiniteLossGuard
from ssl_siamese.callbacks.rng_state import RNGStateCheckpoint
from ssl_siamese.checkpoints import SafeCheckpointIO, check_resume_checkpoint
from ssl_siamese.data import SSLDataModule
from ssl_siamese.evaluation.knn import KNNEvaluation
from ssl_siamese.evaluation.online_probe import OnlineLinearProbe
from ssl_siamese.evaluation.pictures import EmbeddingPictures
from ssl_siamese.export import export_backbone
from ssl_siamese.loggers import LOGGERS, make_logger


def default_precision() -> str:
    """bf16 mixed precision on GPUs that support it, else full precision (CPU)."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def check_option_names(parser: Any, argv: list[str]) -> None:
    """Exit with a message listing the valid options of a group when a ``--group.option`` is unknown.

    jsonargparse only says "unrecognized arguments"; a user who typed ``--model.tempurature`` wants to
    see ``--model.temperature`` and the other options of ``model``.
    """
    known = set(parser._option_string_actions)  # noqa: SLF001 - the parser's own option table
    for arg in argv:
        name = arg.split("=", 1)[0].removesuffix("+")
        if not name.startswith("--") or "." not in name or name in known:
            continue
        if any(option.startswith(name + ".") or ("." in option and name.startswith(option + "."))
               for option in known):
            continue  # nested class arguments (--model.augmentation.init_args.size, --trainer.callbacks ...)
        group = name.split(".", 1)[0]
        valid = sorted(option for option in known if option.startswith(group + ".") and option.count(".") == 1
                       and not option.endswith("+"))
        close = difflib.get_close_matches(name, valid, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        listing = ", ".join(v.removeprefix(group + ".") for v in valid) or "(none: the group is unknown)"
        sys.exit(f"error: unknown option {name}; {hint}valid options of {group.removeprefix('--')}: {listing}")


class SSLCLI(LightningCLI):
    """LightningCLI for one method with the data linked into the model and an output folder."""

    def __init__(self, model_class: type[pl.LightningModule], method_name: str,
                 args: list[str] | None = None) -> None:
        self.method_name = method_name
        super().__init__(
            model_class, SSLDataModule, run=False, args=args, seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={
                "max_epochs": 200,
                "precision": default_precision(),
                "log_every_n_steps": 10,
                "callbacks": [ThroughputMonitor(), CollapseMonitor(), LearningRateMonitor("step"),
                              NonFiniteLossGuard(), RNGStateCheckpoint()],
            },
        )

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--out", default=f"out/{self.method_name}",
                            help="Output folder: checkpoints/, exported_models/, logs.")
        parser.add_argument("--log_to", default="wandb", choices=LOGGERS,
                            help="Experiment logger used when trainer.logger is not set.")
        parser.add_argument("--ckpt_path", default=None, help="Resume from this Lightning checkpoint.")
        parser.add_argument("--knn_at_start", default=True, type=bool,
                            help="Measure kNN accuracy of the untrained backbone first.")
        parser.add_argument("--online_probe", default=True, type=bool,
                            help="Train a linear probe on detached features alongside (labelled data only).")
        parser.add_argument("--pictures_every_n_epochs", default=10, type=int,
                            help="Log embedding pictures (PCA, nearest neighbours) every N epochs; 0: never.")
        parser.add_lightning_class_args(KNNEvaluation, "knn")
        parser.link_arguments("data.batch_size", "model.batch_size")
        parser.link_arguments("data.image_size", "model.view_size", apply_on="instantiate")
        for name in ("mean", "std"):
            parser.link_arguments(f"data.{name}", f"model.{name}", apply_on="instantiate")

    def parse_arguments(self, parser, args) -> None:
        check_option_names(parser, sys.argv[1:] if args is None else list(args))
        super().parse_arguments(parser, args)

    def instantiate_trainer(self, **kwargs) -> pl.Trainer:
        config = self.config_init
        out = Path(config["out"])
        if config["trainer"].get("logger") in (None, True):
            kwargs["logger"] = make_logger(config["log_to"], out, self.method_name)
        if config["trainer"].get("default_root_dir") is None:
            kwargs["default_root_dir"] = str(out)
        if not config["trainer"].get("plugins"):
            kwargs["plugins"] = [SafeCheckpointIO()]
        trainer = super().instantiate_trainer(**kwargs)
        if not trainer.loggers:  # the learning-rate monitor needs a logger (--log_to none)
            trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, LearningRateMonitor)]
        for checkpoint in trainer.checkpoint_callbacks:
            if getattr(checkpoint, "dirpath", None) is None:
                checkpoint.dirpath = str((out / "checkpoints").resolve())
                checkpoint.save_last = True
        return trainer


def main(model_class: type[pl.LightningModule], method_name: str,
         args: list[str] | None = None) -> dict[str, Any]:
    """Parse, check the data, measure kNN at init, train, export. User errors exit with a message.

    Returns a summary: ``knn_history`` [(epoch, top1, top5), ...] (epoch -1 = at initialisation),
    ``backbone`` (the exported file), ``out``, ``epochs``, ``fit_seconds`` (wall time of ``fit``,
    validation included) and ``img_per_s`` (the last training throughput logged).
    """
    # Lightning notes that the module's on_after_batch_transfer is used with a datamodule: that is the design.
    warnings.filterwarnings("ignore", message=".*overridden `on_after_batch_transfer`.*")
    try:
        cli = SSLCLI(model_class, method_name, args)
        trainer, model, datamodule = cli.trainer, cli.model, cli.datamodule
        datamodule.prepare_data()
        datamodule.setup("fit")
        if cli.config_init["ckpt_path"]:
            check_resume_checkpoint(model, cli.config_init["ckpt_path"])
    except (FileNotFoundError, ValueError) as error:  # DataNotFoundError and CheckpointError among them
        sys.exit(f"ssl_siamese.recipes.{method_name}: error: {error}")
    out = Path(cli.config_init["out"])
    has_labels = datamodule.num_classes is not None
    if has_labels:  # evaluation on the side, before the checkpoint callbacks so their state is saved
        extra = [OnlineLinearProbe()] if cli.config_init["online_probe"] else []
        every = cli.config_init["pictures_every_n_epochs"]
        extra += [EmbeddingPictures(every_n_epochs=every)] if every > 0 else []
        trainer.callbacks[0:0] = extra
    if cli.config_init["knn_at_start"] and has_labels:
        rank_zero_info("Measuring kNN accuracy of the backbone at initialisation ...")
        trainer.validate(model, datamodule=datamodule, verbose=False)
    started = time.perf_counter()
    trainer.fit(model, datamodule=datamodule, ckpt_path=cli.config_init["ckpt_path"])
    fit_seconds = time.perf_counter() - started
    path = out / "exported_models" / "backbone.pt"
    knn = next((c for c in trainer.callbacks if isinstance(c, KNNEvaluation)), None)
    history = list(knn.history) if knn is not None else []
    if trainer.is_global_zero:
        export_backbone(model, path, data=datamodule.hparams.get("dataset"),  # linear_probe's default data
                        data_dir=str(Path(datamodule.hparams.get("data_dir", ".")).expanduser().resolve()),
                        epochs=trainer.current_epoch, steps=trainer.global_step)
        if history:
            print(f"kNN top-1: {history[0][1]:.4f} at start -> {history[-1][1]:.4f} "
                  f"after {trainer.current_epoch} epochs")
        print(f"Exported backbone: {path}")
        for logger in trainer.loggers:  # flush and close the W&B run so its files are complete now
            if isinstance(logger, WandbLogger):
                logger.experiment.finish()
    img_per_s = trainer.callback_metrics.get("train/img_per_s")
    return {"knn_history": history, "backbone": path, "out": out, "epochs": trainer.current_epoch,
            "fit_seconds": fit_seconds, "img_per_s": float(img_per_s) if img_per_s is not None else None}
