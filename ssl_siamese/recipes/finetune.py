"""Fine-tune a backbone end to end with a new linear head: SSL init vs random (or ImageNet) init.

    python -m ssl_siamese.recipes.finetune --backbone out/simclr/exported_models/backbone.pt --epochs 10
    python -m ssl_siamese.recipes.finetune --backbone random --arch resnet18 --data.dataset cifar10 --epochs 10
    python -m ssl_siamese.recipes.finetune --backbone imagenet --arch resnet18 --data.dataset cifar10

``--backbone`` (alias ``--ckpt``) is an exported backbone (``.pt`` file or folder), a Lightning checkpoint of
our methods or a W&B model artifact (its architecture, input size and normalisation come from its metadata, read
by ``load_backbone``), ``random`` (``--arch``, freshly initialised, the dataset's size and normalisation) or
``imagenet`` (torchvision's ImageNet weights for ``--arch``, read only from the local torch hub cache: nothing
is downloaded). Without ``--data.dataset`` a backbone file is fine-tuned on the data recorded in it, the data it
was pretrained on (``--data.data_dir`` likewise defaults to the recorded folder, else ``./data``); the log says
which and why. It tests on the images pretraining validated on and did not train on, as ``linear_probe`` does
(:mod:`ssl_siamese.data.evaluation`: a ``stream`` shard folder's ``val`` split, the share of each class held out
of a labelled folder without ``test/`` with ``--data.seed`` and ``--data.val_fraction``), and says which.
Training: random resized crops (scale 0.5-1) and flips on the device, cross-entropy, SGD with momentum and
cosine decay per step. It prints the test top-1 and top-5, writes ``<out>/results.json`` and saves the
fine-tuned backbone with its classifier head, weights-only, to ``<out>/exported_models/finetuned.pt``:
``load_classifier`` reads it back as a classifier, ``load_backbone`` as a backbone (whose metadata records the
fine-tuning data, so ``linear_probe`` defaults to it).

Example:
    >>> ssl = run_finetune("backbone.pt", "fashion_mnist", "./data", epochs=5, train_subset=5000, log_to="none")
    >>> rnd = run_finetune("random", "fashion_mnist", "./data", arch="tiny_cnn", epochs=5, train_subset=5000)
    >>> ssl["top1"], rnd["top1"]
    >>> model, transform, classes, _ = load_classifier(ssl["model_path"])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from jsonargparse import Namespace
from torch.utils.data import DataLoader

from ssl_siamese.cli.arguments import parse_args as parse_checked
from ssl_siamese.cli.loggers import LOGGERS, finish_loggers, make_logger
from ssl_siamese.cli.recipe import Flag, function_parser, recipe_main, write_results
from ssl_siamese.data import UInt8ImageDataset
from ssl_siamese.data.streamed import is_remote
from ssl_siamese.evaluation.finetune import FineTuneClassifier, LoadedClassifier, build_init, load_classifier
from ssl_siamese.evaluation.labelled_data import (
    choose_dataset,
    evaluation_data,
    fill_preprocessing,
    held_out_rule,
    labelled_datasets,
    labelled_subset,
)
from ssl_siamese.export import export_backbone
from ssl_siamese.recipes._backbone import BACKBONE_FORMS, backbone_path

__all__ = ["FineTuneClassifier", "LoadedClassifier", "build_init", "choose_dataset", "evaluation_data",
           "fill_preprocessing", "held_out_rule", "labelled_datasets", "labelled_subset", "load_classifier",
           "main", "run_finetune"]  # the library names stay importable from here, as before

PROG = "python -m ssl_siamese.recipes.finetune"
DESCRIPTION = "Fine-tune a backbone with a new linear head; report test top-1."
HELD_OUT = {  # pretraining's --data.seed and --data.val_fraction, which drew a labelled folder's held-out share
    "data_seed": Flag("data.seed"),
    "val_fraction": Flag("data.val_fraction"),
}
DATA = {  # the data options, shared with linear_probe
    "dataset": Flag("data.dataset", choices=[*labelled_datasets(), None]),
    "data_dir": Flag("data.data_dir"),
    "download": Flag("data.download"),
    **HELD_OUT,
}
FLAGS = {
    "backbone": Flag(aliases=("--ckpt",), metavar="PATH", required=True,
                     help=f"'random', 'imagenet', or {BACKBONE_FORMS}."),
    **DATA,
    "train_subset": Flag("data.train_subset"),
    "test_subset": Flag("data.test_subset"),
    "image_size": Flag("data.image_size"),
    "log_to": Flag(choices=LOGGERS),
}


def run_finetune(backbone: str | Path = "random", dataset: str | None = None, data_dir: str | Path | None = None,
                 arch: str = "resnet18", cifar_stem: bool = True, epochs: int = 10, lr: float = 0.05,
                 weight_decay: float = 5e-4, batch_size: int = 128, train_subset: int | None = None,
                 test_subset: int | None = None, image_size: int | None = None, out: str | Path = "out/finetune",
                 log_to: str = "wandb", seed: int = 0, download: bool = True, progress: bool = True,
                 data_seed: int | None = None, val_fraction: float | None = None) -> dict[str, Any]:
    """Fine-tune and test; save the model; returns (and writes to ``<out>/results.json``) ``top1`` and the settings.

    ``dataset=None`` (with ``data_dir=None``) means the data recorded in the backbone file's metadata: the
    dataset it was pretrained on (``random`` and ``imagenet`` need ``dataset``). ``arch`` and ``cifar_stem``
    apply to ``random`` (and ``arch`` to ``imagenet``); a backbone file carries its own.
    ``train_subset``/``test_subset`` keep seeded random subsets (quick CPU runs). The test images are those
    pretraining validated on (``evaluation_data``; ``held_out_rule``: ``data_seed`` and ``val_fraction`` draw them
    for a labelled folder without ``test/``; result key ``test_split`` says which). The fine-tuned backbone
    and its classifier head are saved weights-only to ``<out>/exported_models/finetuned.pt`` (result key
    ``model_path``): ``load_classifier`` reads it back as an image classifier, ``load_backbone`` as a backbone.

    Args:
        backbone: 'random', 'imagenet', or an exported backbone, a Lightning checkpoint or a W&B model artifact.
        dataset: Default: the dataset recorded in the backbone file (what it was trained on).
        data_dir: Default: the folder recorded with that dataset, else ./data.
        arch: Architecture for random/imagenet (e.g. tiny_cnn).
        cifar_stem: 3x3 stem for a random torchvision ResNet.
        epochs: Training epochs (passes over the training images).
        lr: SGD learning rate at the start (momentum 0.9), decayed to 0 by a cosine over the training steps.
        weight_decay: SGD weight decay (L2 penalty) of backbone and head.
        batch_size: Images per batch.
        train_subset: Keep a seeded random subset of this many training images; null: all of them.
        test_subset: Keep a seeded random subset of this many test images; null: all of them.
        image_size: Input side in pixels (images are resized to it); null: the one the backbone records, else
            the dataset's.
        out: Output folder: results.json, exported_models/.
        log_to: Experiment logger: wandb, csv, tensorboard or none.
        seed: Seeds the head, the batches and the subsets.
        download: Download the dataset if missing.
        progress: Show a progress bar.
        data_seed: A labelled folder without test/: the --data.seed pretraining used, which drew the held-out
            test images. Default: the one the backbone records, else 0.
        val_fraction: A labelled folder without test/: the share of each class held out to test on, as in
            pretraining. Default: the one the backbone records, else 0.1.
    """
    choices = labelled_datasets()
    if dataset is not None and dataset not in choices:
        raise ValueError(f"Unknown or unlabelled dataset {dataset!r}; choose one of {', '.join(choices)}.")
    pl.seed_everything(seed, verbose=False)
    init = str(backbone) if str(backbone) in ("random", "imagenet") else backbone_path(backbone)
    module, feature_dim, metadata = build_init(init, arch, cifar_stem, dataset, image_size)
    dataset, data_dir, why = choose_dataset(dataset, data_dir, metadata, f"The backbone {backbone}")
    print(f"ssl_siamese.recipes.finetune: fine-tuning on {dataset} in {data_dir}: {why}.")
    metadata = fill_preprocessing(metadata, dataset, image_size)
    size = int(metadata["image_size"])
    rule = held_out_rule(metadata, data_seed, val_fraction)
    splits = evaluation_data(dataset, data_dir, size, (train_subset, test_subset), seed, rule, download)
    train, test, dataset = splits.train, splits.test, splits.dataset
    print(f"ssl_siamese.recipes.finetune: {len(train)} train / {len(test)} test images; the test images are "
          f"{splits.test_split}.")
    num_classes = len(train.classes) or int(max(train.labels.max(), test.labels.max())) + 1
    model = FineTuneClassifier(module, feature_dim, num_classes, size, metadata["mean"], metadata["std"], lr,
                               weight_decay)
    generator = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(UInt8ImageDataset(train.images, train.labels), batch_size=batch_size, shuffle=True,
                              drop_last=len(train) > batch_size, generator=generator)
    test_loader = DataLoader(UInt8ImageDataset(test.images, test.labels), batch_size=batch_size)
    out = Path(out)
    trainer = pl.Trainer(max_epochs=epochs, accelerator="auto", devices=1, logger=make_logger(log_to, out, "finetune"),
                         default_root_dir=str(out), enable_checkpointing=False, enable_progress_bar=progress,
                         enable_model_summary=False, log_every_n_steps=10)
    trainer.fit(model, train_loader)
    (metrics,) = trainer.test(model, test_loader, verbose=False)
    result = {"top1": float(metrics["test/top1"]), "top5": float(metrics["test/top5"]), "init": str(backbone),
              "method": metadata.get("method"), "dataset": dataset, "data_dir": data_dir, "dataset_source": why,
              "test_split": splits.test_split,
              "architecture": metadata.get("architecture", arch), "epochs": epochs, "lr": lr,
              "weight_decay": weight_decay, "num_train": len(train), "num_test": len(test), "image_size": size}
    result["model_path"] = str(export_backbone(
        model, out / "exported_models" / "finetuned.pt", head=model.head, architecture=metadata.get("architecture"),
        cifar_stem=bool(metadata.get("cifar_stem", False)), image_size=size, mean=list(metadata["mean"]),
        std=list(metadata["std"]), init=str(backbone), init_method=metadata.get("method"), data=dataset,
        data_dir=None if dataset == "synthetic" else data_dir if is_remote(data_dir)
        else str(Path(data_dir).expanduser().resolve()),
        data_seed=rule[0], val_fraction=rule[1],
        classes=list(train.classes) or [str(c) for c in range(num_classes)], epochs=epochs, top1=result["top1"]))
    write_results(out, result)
    finish_loggers(trainer.loggers)
    return result


def parse_args(argv: list[str] | None = None) -> Namespace:
    """The options of ``run_finetune``, as flags (the data's under ``--data.``)."""
    return parse_checked(function_parser(run_finetune, PROG, DESCRIPTION, FLAGS), argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command-line entry point; user errors exit with a one-line message."""
    result = recipe_main(run_finetune, PROG, DESCRIPTION, FLAGS, argv)
    print(f"Fine-tuned {result['init']} ({result['architecture']}) on {result['dataset']} for {result['epochs']} "
          f"epochs ({result['num_train']} train / {result['num_test']} test): test top-1 {result['top1']:.4f}  "
          f"top-5 {result['top5']:.4f}")
    print(f"Fine-tuned model (backbone + classifier head): {result['model_path']} "
          "(read it with ssl_siamese.recipes.finetune.load_classifier)")
    return result


if __name__ == "__main__":
    main()
