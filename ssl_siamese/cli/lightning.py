"""The command line shared by the pretraining recipes (LightningCLI with our defaults).

``python -m ssl_siamese.recipes.simclr [--config recipes/X.yaml] [--model.temperature 0.2] ...``:
builds the method, the data and the trainer from flags and YAML; measures kNN accuracy at
initialisation; trains; and exports the backbone to ``<out>/exported_models/backbone.pt`` and, for other
tools (timm, torchvision, the Hugging Face Hub), to the folder ``<out>/exported_models/backbone/``
(``model.safetensors``, ``config.json``, model card ``README.md`` with the final kNN and probe accuracy).
"""

from __future__ import annotations

import inspect
import re
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from jsonargparse import DefaultHelpFormatter
from pytorch_lightning.callbacks import LearningRateMonitor
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.utilities import rank_zero_info

from ssl_siamese.backbones import BACKBONE_NAMES
from ssl_siamese.callbacks import CollapseMonitor, ThroughputMonitor
from ssl_siamese.callbacks.interrupt import InterruptCheckpoint
from ssl_siamese.callbacks.nan_guard import NonFiniteLossGuard
from ssl_siamese.callbacks.rng_state import RNGStateCheckpoint
from ssl_siamese.export.checkpoints import SafeCheckpointIO, check_resume_checkpoint, read_checkpoint
from ssl_siamese.cli.arguments import closest_option
from ssl_siamese.cli.recipe import user_errors
from ssl_siamese.data import SSLDataModule
from ssl_siamese.data.folders import folder_split_dir
from ssl_siamese.data.streamed import is_remote
from ssl_siamese.evaluation.knn import KNNEvaluation
from ssl_siamese.evaluation.online_probe import OnlineLinearProbe
from ssl_siamese.evaluation.pictures import EmbeddingPictures
from ssl_siamese.export import export_backbone, export_pretrained
from ssl_siamese.cli.loggers import (
    LOGGERS,
    WANDB_MODES,
    ConfigToLoggers,
    LogIntervalToEpoch,
    WandbRunId,
    finish_loggers,
    log_model_artifact,
    make_logger,
    steps_in_an_epoch,
    stored_wandb_run_id,
)
from ssl_siamese.methods.base import SiameseModule


def default_precision() -> str:
    """bf16 mixed precision on GPUs that support it, else full precision (CPU)."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def check_option_names(parser: Any, argv: list[str]) -> None:
    """Exit with a suggestion when an option in ``argv`` is unknown: ``--ckpt_pth`` or ``--model.tempurature``.

    jsonargparse only says "unrecognized arguments"; a user who typed ``--model.tempurature`` wants to
    see ``--model.temperature`` and the other options of ``model``, one who typed ``--out_dir`` wants ``--out``.
    """
    known = {option.removesuffix("+") for option in parser._option_string_actions}  # noqa: SLF001 - its table
    for arg in argv:
        name = arg.split("=", 1)[0].removesuffix("+")
        if not name.startswith("--") or name == "--" or name in known:
            continue
        if "." not in name:
            top_level = sorted(option for option in known if option.startswith("--") and "." not in option)
            close = closest_option(name, top_level)
            hint = f"did you mean {close}? " if close else ""
            sys.exit(f"error: unknown option {name}; {hint}options: {', '.join(top_level)} "
                     "(and --trainer.*, --model.*, --data.*, --knn.*: see --help)")
        if any(option.startswith(name + ".") or ("." in option and name.startswith(option + "."))
               for option in known):
            continue  # nested class arguments (--model.augmentation.init_args.size, --trainer.callbacks ...)
        group = name.split(".", 1)[0]
        valid = sorted(option for option in known if option.startswith(group + ".") and option.count(".") == 1)
        close = closest_option(name, valid)
        hint = f"did you mean {close}? " if close else ""
        listing = ", ".join(v.removeprefix(group + ".") for v in valid) or "(none: the group is unknown)"
        sys.exit(f"error: unknown option {name}; {hint}valid options of {group.removeprefix('--')}: {listing}")


class ShortHelpFormatter(DefaultHelpFormatter):
    """jsonargparse's help without the "known subclasses" lists (every torch.nn class, every callback...),
    and Lightning's own options (``--trainer.*``, ``--seed_everything``, ``--print_config``) by the first
    sentence of their docstring and their default (no type).

    ``--<option>.help CLASS`` still shows the arguments of one class; the Trainer's options are documented in
    full at https://lightning.ai/docs/pytorch/stable/common/trainer.html.
    """

    def _format_action(self, action: Any) -> str:
        if any(option.endswith(".help") for option in action.option_strings):
            return ""  # "--X.help CLASS: show the help for a subclass", said once in the description
        return super()._format_action(action)

    def _get_help_string(self, action: Any) -> str:
        full = re.sub(r", known subclasses: [^)]*\)$", ")", super()._get_help_string(action))
        text = action.help if isinstance(action.help, str) else ""
        lightnings = action.dest.startswith("trainer.") or action.dest in ("print_config", "seed_everything")
        if not lightnings or not text or not full.startswith(text):
            return full
        first = re.match(r"(.+?[.:])(?=\s+[A-Z`(]|\s*$)", text, flags=re.DOTALL)
        return (first.group(1) if first else text) + re.sub(r"\(type: .*, default: ", "(default: ", full[len(text):])


class SSLArgumentParser(LightningArgumentParser):
    """The recipes' parser: ``--model.backbone`` is a backbone *name* on the command line.

    The methods' ``backbone: str | nn.Module`` lets Python code pass any module; from a command line only
    a name can be given, and the Union would make jsonargparse list every ``nn.Module`` subclass in
    ``--help`` and accept class paths that ``build_backbone`` cannot use.
    """

    def add_lightning_class_args(self, lightning_class: Any, nested_key: str, subclass_mode: bool = False,
                                 required: bool = True) -> list[str]:
        if nested_key != "model" or subclass_mode or not issubclass(lightning_class, SiameseModule):
            return super().add_lightning_class_args(lightning_class, nested_key, subclass_mode, required)
        added = self.add_class_arguments(lightning_class, nested_key, fail_untyped=False, instantiate=True,
                                         sub_configs=True, skip={"backbone"})
        own = inspect.signature(lightning_class.__init__).parameters.get("backbone")  # MAE: a ViT by default
        default = (own or inspect.signature(SiameseModule.__init__).parameters["backbone"]).default
        self.groups[nested_key].add_argument(
            f"--{nested_key}.backbone", type=str, default=default,
            help=f"Backbone name: {', '.join(BACKBONE_NAMES)} (a Python nn.Module through the Python API).")
        return [*added, f"{nested_key}.backbone"]


class SSLCLI(LightningCLI):
    """LightningCLI for one method with the data linked into the model and an output folder.

    A recipe on other data subclasses it and changes the class attributes and hooks below
    (``recipes.text_siamese.TextSiameseCLI``): ``datamodule_class``, ``max_epochs``, :meth:`description`,
    :meth:`trainer_callbacks` and :meth:`add_arguments_to_parser` (which keeps :meth:`add_output_arguments`).
    """

    datamodule_class: type[pl.LightningDataModule] = SSLDataModule
    max_epochs = 200

    def __init__(self, model_class: type[pl.LightningModule], method_name: str,
                 args: list[str] | None = None) -> None:
        self.method_name = method_name
        module = f"ssl_siamese.recipes.{method_name}"
        super().__init__(
            model_class, self.datamodule_class, run=False, args=args, seed_everything_default=0,
            save_config_callback=ConfigToLoggers, save_config_kwargs={"overwrite": True},
            parser_class=SSLArgumentParser,
            parser_kwargs={
                "prog": f"python -m {module}",
                "usage": f"python -m {module} [--config FILE.yaml] [--GROUP.OPTION VALUE ...]",
                "description": self.description(model_class),
                "formatter_class": ShortHelpFormatter,
            },
            auto_configure_optimizers=False,  # the methods build their own (--model.optimizer, --model.lr)
            trainer_defaults={
                "max_epochs": self.max_epochs,
                "precision": default_precision(),
                "log_every_n_steps": 10,
                "callbacks": self.trainer_callbacks(),
            },
        )

    def description(self, model_class: type[pl.LightningModule]) -> str:
        """``--help``'s description: the method's first docstring paragraph."""
        summary = (inspect.getdoc(model_class) or model_class.__name__).split("\n\n", 1)[0]
        return (f"Pretrain with {summary}\nEvery option can also be set in the YAML --config file; --print_config "
                "shows the result. Options of a class (e.g. --trainer.callbacks) are described by "
                "--<option>.help CLASS.")

    def trainer_callbacks(self) -> list[pl.Callback]:
        """The Trainer's default callbacks (``--trainer.callbacks`` replaces them)."""
        return [ThroughputMonitor(), CollapseMonitor(), LearningRateMonitor("step"), NonFiniteLossGuard(),
                RNGStateCheckpoint(), WandbRunId()]

    def add_output_arguments(self, parser: LightningArgumentParser) -> None:
        """``--out``, ``--log_to``, ``--wandb_mode`` and ``--ckpt_path``: what every training recipe takes."""
        parser.add_argument("--out", default=f"out/{self.method_name}",
                            help="Output folder: checkpoints/, exported_models/, logs.")
        parser.add_argument("--log_to", default="wandb", choices=LOGGERS,
                            help="Experiment logger used when trainer.logger is not set.")
        parser.add_argument("--wandb_mode", default=None, choices=WANDB_MODES,
                            help="W&B: offline (written under <out>/wandb, `wandb sync` it later) or online; "
                                 "unset: $WANDB_MODE if set, else offline (credentials alone never go online).")
        parser.add_argument("--ckpt_path", default=None,
                            help="Resume from this Lightning checkpoint (the same W&B run continues).")

    def add_arguments_to_parser(self, parser) -> None:
        self.add_output_arguments(parser)
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
            run_id = None
            if config["log_to"] == "wandb" and config["ckpt_path"]:
                run_id = stored_wandb_run_id(read_checkpoint(config["ckpt_path"]))
            dataset, backbone = self.config.get("data.dataset"), self.config.get("model.backbone")
            kwargs["logger"] = make_logger(config["log_to"], out, self.method_name, mode=config["wandb_mode"],
                                           run_id=run_id, group=f"{self.method_name}-{dataset}",
                                           tags=[self.method_name, dataset, backbone], job_type="pretrain")
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
            # A run resumed with other checkpoint options (a ModelCheckpoint added on resume) does not get
            # the saved callback state back, so Lightning would write last-v1.ckpt beside the stale last.ckpt
            # that the README tells users to resume from. Overwrite instead: last.ckpt is always the newest.
            checkpoint._enable_version_counter = False  # noqa: SLF001 - only settable in the constructor
        return trainer


def epochs_label(step: int, steps_per_epoch: int | None) -> str:
    """``"step 30 (1.5 epochs)"``: a measurement's optimizer step, and in epochs when their length is known."""
    if not steps_per_epoch:
        return f"step {step}"
    epochs = step / steps_per_epoch
    count = f"{epochs:.0f}" if epochs == round(epochs) else f"{epochs:.2g}" if epochs < 1 else f"{epochs:.1f}"
    return f"step {step} ({count} epoch{'' if count == '1' else 's'})"


def recorded_data(datamodule: SSLDataModule) -> dict[str, Any]:
    """What an export records of its pretraining data, so ``linear_probe`` and ``finetune`` evaluate on the same
    data with the same held-out rule by default: the dataset, its folder (a bucket URL kept as given), and the
    data seed and held-out share that drew the images pretraining did not train on."""
    hp = datamodule.hparams
    data_dir = str(hp.get("data_dir", "."))
    if not is_remote(data_dir):
        data_dir = str(Path(data_dir).expanduser().resolve())
    return {"data": hp.get("dataset"), "data_dir": data_dir, "data_seed": hp.get("seed"),
            "val_fraction": hp.get("val_fraction")}


def query_split_name(datamodule: SSLDataModule) -> str:
    """Where the kNN and probe queries come from, as a user would look for them."""
    hp = datamodule.hparams
    data_dir = recorded_data(datamodule)["data_dir"]
    if datamodule.streamed:
        return f"val split of the shards in {data_dir}"
    data_dir = Path(data_dir)
    if hp.dataset != "folder":
        return f"{datamodule.info.query_split} split of {hp.dataset}"
    held_out = folder_split_dir(data_dir, "test")
    if held_out is not None:
        return f"images in {held_out}"
    return (f"{hp.val_fraction:g} of each class of {folder_split_dir(data_dir, 'train')} held out "
            f"(seed {hp.seed}), not trained on")


def knn_report(knn: KNNEvaluation | None, steps_per_epoch: int | None, split: str
               ) -> tuple[dict[str, float], dict[str, Any], str | None]:
    """``(metrics, evaluation, line)`` for the export and the end of the run: the last kNN accuracies, the one
    at initialisation, the raw pixels' under the same protocol; where and at which step they were measured."""
    if knn is None or not knn.history:
        return {}, {}, None
    first, last = knn.history[0], knn.history[-1]
    metrics = {"knn_top1": last.top1, "knn_top5": last.top5}
    at_start = first.step == 0 or (first.step is None and first.epoch == -1)
    if at_start:
        metrics["knn_top1_at_start"] = first.top1
    pixels = knn.pixel_baseline
    if pixels is not None:
        metrics.update(knn_top1_raw_pixels=pixels.top1, knn_top5_raw_pixels=pixels.top5)
    evaluation = {"queries_from": split, **knn.protocol}
    if last.step is not None:
        evaluation.update(step=last.step, measured_at=epochs_label(last.step, steps_per_epoch))
    label = (lambda m: "at start" if m is first and at_start else
             f"at {epochs_label(m.step, steps_per_epoch)}" if m.step is not None else f"after epoch {m.epoch + 1}")
    line = f"kNN top-1: {first.top1:.4f} {label(first)}"
    line += f" -> {last.top1:.4f} {label(last)}" if last is not first else ""
    line += f"; raw pixels {pixels.top1:.4f} (same k, bank and queries)" if pixels is not None else ""
    protocol = knn.protocol
    if protocol:
        line += (f"  [k={protocol['k']}, t={protocol['temperature']}, bank {protocol['bank']} training images, "
                 f"{protocol['queries']} queries: {split}]")
    return metrics, evaluation, line


def probe_metrics(trainer: pl.Trainer) -> dict[str, float]:
    """The online probe's last validation accuracy, when one ran."""
    probe = trainer.callback_metrics.get("probe/val_top1")
    return {"probe_top1": float(probe)} if probe is not None else {}


def resume_command(method_name: str, args: list[str], checkpoint: Path) -> str:
    """The command line that resumes ``checkpoint``: the recipe, the user's ``args`` (less any ``--ckpt_path``)."""
    kept, skip = [], False
    for arg in args:
        if skip or arg.startswith("--ckpt_path="):
            skip = False
            continue
        if arg == "--ckpt_path":
            skip = True
            continue
        kept.append(arg)
    return shlex.join(["python", "-m", f"ssl_siamese.recipes.{method_name}", *kept, "--ckpt_path", str(checkpoint)])


def interrupt_checkpoint(trainer: pl.Trainer, out: Path, method_name: str, args: list[str]) -> InterruptCheckpoint:
    """The Ctrl-C checkpoint: ``last.ckpt`` in the recipe's checkpoint folder, with the command that resumes it."""
    folders = [c.dirpath for c in trainer.checkpoint_callbacks if getattr(c, "dirpath", None)]
    path = Path(folders[0] if folders else (out / "checkpoints").resolve()) / "last.ckpt"
    return InterruptCheckpoint(path, resume_command(method_name, args, path))


def main(model_class: type[pl.LightningModule], method_name: str,
         args: list[str] | None = None) -> dict[str, Any]:
    """Parse, check the data, measure kNN at init, train, export.

    A wrong input found before training (``cli.recipe.USER_ERRORS``: no data, a wrong ``--ckpt_path``, a missing
    optional package) ends in ``ssl_siamese.recipes.<method>: error: <message>``, exit status 1, as in the function
    recipes; anything else keeps its traceback, and checkpoints already written stay.

    Returns a summary: ``knn_history`` [KNNMeasurement(epoch, top1, top5, step), ...] (epoch -1: at
    initialisation), ``knn_pixels`` (the raw pixels' KNNMeasurement, or None),
    ``backbone`` (the exported file), ``out``, ``epochs``, ``fit_seconds`` (wall time of ``fit``,
    validation included) and ``img_per_s`` (the last training throughput logged).
    """
    # Lightning notes that the module's on_after_batch_transfer is used with a datamodule: that is the design.
    warnings.filterwarnings("ignore", message=".*overridden `on_after_batch_transfer`.*")
    # litdata's StreamingDataset computes its length per rank and worker, which this warning doubts in general.
    warnings.filterwarnings("ignore", message=".*`IterableDataset` has `__len__` defined.*")
    with user_errors(f"ssl_siamese.recipes.{method_name}"):  # a wrong input before training: one line, no traceback
        cli = SSLCLI(model_class, method_name, args)
        trainer, model, datamodule = cli.trainer, cli.model, cli.datamodule
        datamodule.prepare_data()
        datamodule.setup("fit")
        if cli.config_init["ckpt_path"]:
            check_resume_checkpoint(model, cli.config_init["ckpt_path"])
    out = Path(cli.config_init["out"])
    has_labels = datamodule.num_classes is not None
    if has_labels:  # evaluation on the side, before the checkpoint callbacks so their state is saved
        extra = [OnlineLinearProbe()] if cli.config_init["online_probe"] else []
        every = cli.config_init["pictures_every_n_epochs"]
        extra += [EmbeddingPictures(every_n_epochs=every)] if every > 0 else []
        trainer.callbacks[0:0] = extra
    trainer.callbacks.append(LogIntervalToEpoch())
    trainer.callbacks.append(interrupt_checkpoint(trainer, out, method_name, sys.argv[1:] if args is None else args))
    if cli.config_init["knn_at_start"] and has_labels and cli.config_init["ckpt_path"]:
        # validate() would measure the untrained weights (the checkpoint loads inside fit) and draw them again
        rank_zero_info("Resuming: the kNN accuracy at initialisation is the one in the checkpoint's history.")
    elif cli.config_init["knn_at_start"] and has_labels:
        rank_zero_info("Measuring kNN accuracy of the backbone at initialisation ...")
        trainer.validate(model, datamodule=datamodule, verbose=False)
    started = time.perf_counter()
    trainer.fit(model, datamodule=datamodule, ckpt_path=cli.config_init["ckpt_path"])
    fit_seconds = time.perf_counter() - started
    path = out / "exported_models" / "backbone.pt"
    knn = next((c for c in trainer.callbacks if isinstance(c, KNNEvaluation)), None)
    history = list(knn.history) if knn is not None else []
    steps_per_epoch = steps_in_an_epoch(trainer)
    if trainer.is_global_zero:
        recorded = {**recorded_data(datamodule), "epochs": trainer.current_epoch, "steps": trainer.global_step}
        export_backbone(model, path, **recorded)
        knn_metrics, evaluation, knn_line = knn_report(knn, steps_per_epoch, query_split_name(datamodule))
        metrics = {**knn_metrics, **probe_metrics(trainer)}
        export_pretrained(model, path.with_suffix(""), metrics=metrics, knn_evaluation=evaluation or None, **recorded)
        best = bool(history) and history[-1].top1 >= max(entry.top1 for entry in history)
        log_model_artifact(trainer.loggers, path.with_suffix(""), f"{method_name}-{recorded['data']}-backbone",
                           {"method": method_name, **recorded, **metrics}, best=best)
        if knn_line:
            print(knn_line)
        print(f"Exported backbone: {path} and {path.with_suffix('')}/ (safetensors, config.json, model card)")
        finish_loggers(trainer.loggers)  # flush and close the W&B run so its files are complete now
    img_per_s = trainer.callback_metrics.get("train/img_per_s")
    return {"knn_history": history, "knn_pixels": knn.pixel_baseline if knn is not None else None,
            "backbone": path, "backbone_folder": path.with_suffix(""), "out": out, "epochs": trainer.current_epoch,
            "fit_seconds": fit_seconds, "img_per_s": float(img_per_s) if img_per_s is not None else None}
