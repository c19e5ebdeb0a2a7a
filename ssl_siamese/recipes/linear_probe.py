"""Linear probe (or fine-tuning) of a pretrained backbone on a labelled dataset.

    python -m ssl_siamese.recipes.linear_probe --backbone out/simclr/exported_models/backbone.pt \
        [--data.dataset fashion_mnist --data.data_dir ./data] [--wd_sweep] [--finetune] [--subset 5000]

``--backbone`` (alias ``--ckpt``) is an exported backbone (``.pt`` file or folder) or a Lightning checkpoint of
one of our methods (or a ``wandb:`` model artifact); ``load_backbone`` reads both with
``torch.load(weights_only=True)``, so opening one never runs code. Without ``--data.dataset`` the probe runs on
the data recorded in the file, the data the backbone was trained on (an export's ``data``/``data_dir``, a
checkpoint's datamodule settings), and the log says so; ``--data.data_dir`` defaults to the recorded folder,
else ``./data``. A file that records no dataset needs ``--data.dataset``. Every dataset pretraining reads can be
probed (``stream`` shard folders too), and the test images are those pretraining validated on and did not train
on (:mod:`ssl_siamese.data.evaluation`): the test split, a folder's ``test/``, the share of each class held out
of a labelled folder without one (``--data.seed`` and ``--data.val_fraction`` as in pretraining; by default
those the file records, else 0 and 0.1), or a shard folder's ``val`` split; the log and ``results.json``
(``test_split``) say which. Images are preprocessed with the backbone's evaluation transform (its size, mean and
std; the dataset's when the file records none). The linear probe computes the frozen backbone's features once
per split, then fits ``fit_linear_probe`` (or ``weight_decay_sweep``); it prints top-1/top-5, writes
``results.json`` and the confusion matrix PNG to ``--out``, and logs them to W&B (offline without a key) unless
``--log_to none``. ``--finetune`` trains backbone and a new linear head together instead: it runs the
fine-tuning recipe (``ssl_siamese.recipes.finetune.run_finetune``).

Example:
    >>> result = run_linear_probe("backbone.pt", "fashion_mnist", "./data", subset=2000, log_to="none")
    >>> result["top1"], result["top5"]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from jsonargparse import Namespace

from ssl_siamese.cli.arguments import parse_args as parse_checked
from ssl_siamese.cli.loggers import finish_loggers, make_logger
from ssl_siamese.cli.recipe import Flag, function_parser, recipe_main, write_results
from ssl_siamese.search.embeddings import embed_images
from ssl_siamese.evaluation.labelled_data import (
    choose_dataset,
    evaluation_data,
    fill_preprocessing,
    held_out_rule,
    labelled_datasets,
)
from ssl_siamese.evaluation.linear import fit_linear_probe, weight_decay_sweep
from ssl_siamese.evaluation.plots import confusion_matrix_figure, log_figure
from ssl_siamese.evaluation.wandb_media import log_confusion_matrix, pairs_from_confusion
from ssl_siamese.export import load_backbone
from ssl_siamese.recipes._backbone import BACKBONE_FORMS, backbone_path
from ssl_siamese.recipes.finetune import DATA, FLAGS as FINETUNE_FLAGS, run_finetune

PROG = "python -m ssl_siamese.recipes.linear_probe"
DESCRIPTION = "Linear probe or fine-tuning of a pretrained backbone."
FLAGS = {
    "ckpt": Flag(aliases=("--backbone",), metavar="PATH",
                 help=f"{BACKBONE_FORMS[0].upper()}{BACKBONE_FORMS[1:]} (needs `wandb login`)."),
    **DATA,
    "finetune_backbone": Flag("finetune", switch=True),
    "wd_sweep": Flag(switch=True),
    "log_to": FINETUNE_FLAGS["log_to"],
}


def run_linear_probe(ckpt: str | Path, dataset: str | None = None, data_dir: str | Path | None = None,
                     finetune_backbone: bool = False, epochs: int | None = None, lr: float | None = None,
                     weight_decay: float | None = None, wd_sweep: bool = False, subset: int | None = None,
                     batch_size: int = 256, out: str | Path = "out/linear_probe", log_to: str = "wandb",
                     device: str | None = None, seed: int = 0, download: bool = True,
                     progress: bool = True, data_seed: int | None = None,
                     val_fraction: float | None = None) -> dict[str, Any]:
    """Evaluate ``ckpt`` on ``dataset``; returns the results written to ``<out>/results.json``.

    ``dataset=None`` (and ``data_dir=None``) means the data recorded in ``ckpt``: what the backbone was
    trained on (``finetune.choose_dataset``); ``data_seed`` and ``val_fraction`` draw the held-out test share
    of a labelled folder without ``test/`` (``finetune.held_out_rule``). ``epochs`` defaults to 100 (linear
    probe) or 10 (``finetune_backbone``), ``lr`` to 0.1 or 0.05, ``weight_decay`` to 0 or 5e-4. ``subset``
    keeps a seeded random ``subset`` images of each of train and test (quick CPU runs). Linear-probe keys:
    ``top1``, ``top5``, ``mode``, ``dataset``, ``data_dir``, ``dataset_source`` (why that dataset),
    ``test_split`` (which images are the test ones), ``weight_decay``, ``validation_top1`` (sweep only),
    ``num_train``, ``num_test``, ``method``, ``confusion`` (list of lists), ``confusion_png``. With ``finetune_backbone`` the keys are those of ``run_finetune`` plus
    ``mode`` (Lightning picks the device there; ``device`` is not used).

    Args:
        ckpt: An exported backbone, a Lightning checkpoint or a W&B model artifact.
        dataset: Default: the dataset recorded in the backbone file (what it was trained on).
        data_dir: Default: the folder recorded with that dataset, else ./data.
        finetune_backbone: Train the backbone too: runs the fine-tuning recipe (ssl_siamese.recipes.finetune).
        epochs: Default 100 (linear) or 10 (--finetune).
        lr: Default 0.1 (linear) or 0.05 (--finetune).
        weight_decay: Default 0 (linear) or 5e-4 (--finetune).
        wd_sweep: Pick the weight decay on a validation split.
        subset: Use N random train and N test images.
        batch_size: Images per batch.
        out: Output folder: results.json, the confusion matrix.
        log_to: Experiment logger: wandb, csv, tensorboard or none.
        device: Default: cuda when available, else cpu.
        seed: Seeds the probe and the subsets.
        download: Download the dataset if missing.
        progress: Show a progress bar.
        data_seed: The --data.seed of pretraining, which drew a labelled folder's held-out images (default: recorded).
        val_fraction: The share of each class pretraining held out of a labelled folder (default: recorded).
    """
    if dataset is not None and dataset not in labelled_datasets():
        raise ValueError(f"Unknown or unlabelled dataset {dataset!r}; choose one of {', '.join(labelled_datasets())}.")
    ckpt = backbone_path(ckpt)  # a model Artifact logged by a pretraining recipe is downloaded
    if finetune_backbone:
        result = run_finetune(ckpt, dataset, data_dir, epochs=epochs or 10, lr=lr or 0.05,
                              weight_decay=5e-4 if weight_decay is None else weight_decay, batch_size=batch_size,
                              train_subset=subset, test_subset=subset, out=out, log_to=log_to, seed=seed,
                              download=download, progress=progress, data_seed=data_seed, val_fraction=val_fraction)
        result["mode"] = "finetune"
        write_results(out, result)
        return result
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    epochs, lr, weight_decay = epochs or 100, lr or 0.1, weight_decay or 0.0
    backbone, _, metadata = load_backbone(ckpt)
    dataset, data_dir, why = choose_dataset(dataset, data_dir, metadata, f"The backbone {ckpt}")
    print(f"ssl_siamese.recipes.linear_probe: probing on {dataset} in {data_dir}: {why}.")
    filled = fill_preprocessing(metadata, dataset)  # the dataset's size and normalisation where the file has none
    preprocess = {key: filled[key] for key in ("image_size", "mean", "std")}
    splits = evaluation_data(dataset, data_dir, preprocess["image_size"], (subset, subset), seed,
                             held_out_rule(metadata, data_seed, val_fraction), download)
    train, test, dataset = splits.train, splits.test, splits.dataset
    print(f"ssl_siamese.recipes.linear_probe: {len(train)} train / {len(test)} test images; the test images are "
          f"{splits.test_split}.")
    num_classes = len(train.classes) or int(max(train.labels.max(), test.labels.max())) + 1
    result: dict[str, Any] = {"mode": "linear", "method": metadata.get("method"), "ckpt": str(ckpt),
                              "dataset": dataset, "data_dir": data_dir, "dataset_source": why,
                              "test_split": splits.test_split,
                              "num_train": len(train), "num_test": len(test),
                              "epochs": epochs, "lr": lr, "weight_decay": weight_decay}
    train_x, test_x = (embed_images(backbone, split.images, preprocess, batch_size, device, progress).to(device)
                       for split in (train, test))
    options = {"num_classes": num_classes, "epochs": epochs, "lr": lr, "seed": seed}
    train_y, test_y = train.labels.to(device), test.labels.to(device)
    if wd_sweep:
        sweep = weight_decay_sweep(train_x, train_y, test_x, test_y, **options)
        probe = sweep.result
        result.update(weight_decay=sweep.best_weight_decay,
                      validation_top1={str(k): v for k, v in sweep.validation_top1.items()})
    else:
        probe = fit_linear_probe(train_x, train_y, test_x, test_y, weight_decay=weight_decay, **options)
    result.update(top1=probe.top1, top5=probe.top5, confusion=probe.confusion.cpu().tolist())
    out = Path(out)
    logger = make_logger(log_to, out, "linear_probe_linear", job_type="linear_probe",
                         tags=["linear_probe", metadata.get("method"), dataset])
    loggers = [logger] if logger else []
    for each in loggers:
        each.log_metrics({"linear_probe/top1": probe.top1, "linear_probe/top5": probe.top5})
    figure = confusion_matrix_figure(probe.confusion.cpu(), train.classes or None,
                                     title=f"linear probe on {dataset}: top-1 {probe.top1:.4f}")
    result["confusion_png"] = str(log_figure(loggers, "linear_probe/confusion_matrix", figure, out))
    log_confusion_matrix(loggers, "linear_probe/confusion_matrix_interactive",
                         *pairs_from_confusion(probe.confusion.cpu()), train.classes or None)
    write_results(out, result)
    finish_loggers(loggers)
    return result


def parse_args(argv: list[str] | None = None) -> Namespace:
    """The options of ``run_linear_probe``, as flags (the data's under ``--data.``, ``--finetune``)."""
    return parse_checked(function_parser(run_linear_probe, PROG, DESCRIPTION, FLAGS), argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command-line entry point: parse, run, print; user errors exit with a one-line message."""
    result = recipe_main(run_linear_probe, PROG, DESCRIPTION, FLAGS, argv)
    print(f"{result['mode']} probe of {result['method']} on {result['dataset']} "
          f"({result['num_train']} train / {result['num_test']} test): "
          f"top-1 {result['top1']:.4f}  top-5 {result['top5']:.4f}")
    if "confusion_png" in result:
        print(f"Confusion matrix: {result['confusion_png']}")
    if "model_path" in result:
        print(f"Fine-tuned model (backbone + classifier head): {result['model_path']}")
    return result


if __name__ == "__main__":
    main()
