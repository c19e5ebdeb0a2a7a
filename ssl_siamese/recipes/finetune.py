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

import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple, Optional

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import torchvision
from jsonargparse import Namespace
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ssl_siamese.augment import ViewAugmentation
from ssl_siamese.backbones import TORCHVISION_RESNETS, build_backbone, torchvision_resnet
from ssl_siamese.data import (
    DATASETS,
    DEFAULT_VAL_FRACTION,
    IMAGENET_MEAN,
    IMAGENET_STD,
    DataNotFoundError,
    EvaluationSplits,
    ImageTensors,
    UInt8ImageDataset,
    evaluation_splits,
)
from ssl_siamese.data.streamed import is_remote
from ssl_siamese.checkpoints import read_checkpoint
from ssl_siamese.cli.arguments import parse_args as parse_checked
from ssl_siamese.cli.arguments import recipe_parser
from ssl_siamese.embeddings import Preprocess
from ssl_siamese.export import export_backbone, load_backbone
from ssl_siamese.cli.loggers import LOGGERS, make_logger
from ssl_siamese.recipes._backbone import BACKBONE_FORMS, backbone_path


class FineTuneClassifier(pl.LightningModule):
    """Backbone + linear head trained together with cross-entropy; uint8 batches are augmented on the device.

    Example:
        >>> backbone, dim = build_backbone("tiny_cnn")
        >>> model = FineTuneClassifier(backbone, dim, num_classes=10, image_size=28, mean=(0.5,) * 3, std=(0.25,) * 3)
        >>> pl.Trainer(max_epochs=5).fit(model, train_loader)
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, image_size: int,
                 mean: Sequence[float], std: Sequence[float], lr: float = 0.05, weight_decay: float = 5e-4,
                 momentum: float = 0.9) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["backbone"])
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.head = nn.Linear(feature_dim, num_classes)
        self.augmentation = ViewAugmentation(image_size, crop_scale=(0.5, 1.0), jitter_prob=0.0,
                                             grayscale_prob=0.0, mean=mean, std=std)

    def forward(self, images: Tensor) -> Tensor:
        """Logits of normalised images."""
        return self.head(self.backbone(images).flatten(1))

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, labels = batch
        training = self._trainer is not None and self.trainer.training
        return (self.augmentation(images) if training else self.augmentation.normalize(images)), labels

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        images, labels = batch
        loss = F.cross_entropy(self(images), labels)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def test_step(self, batch: Any, batch_idx: int) -> None:
        images, labels = batch
        ranked = self(images).topk(min(5, self.head.out_features), dim=1).indices
        hits = (ranked == labels.unsqueeze(1)).float()
        self.log("test/top1", hits[:, 0].mean(), batch_size=len(labels))  # averaged over the epoch, by size
        self.log("test/top5", hits.amax(dim=1).mean(), batch_size=len(labels))

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        optimizer = torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        steps = max(1, int(self.trainer.estimated_stepping_batches))
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        return [optimizer], [{"scheduler": schedule, "interval": "step"}]


def imagenet_backbone(arch: str) -> tuple[nn.Module, int]:
    """torchvision's ImageNet weights for ``arch`` from the local torch hub cache; never downloads.

    Raises:
        ValueError: ``arch`` is not a torchvision ResNet, or its weights are not in the cache.
    """
    if arch not in TORCHVISION_RESNETS:
        raise ValueError(f"--backbone imagenet needs a torchvision ResNet --arch ({', '.join(TORCHVISION_RESNETS)}), "
                         f"not {arch!r}.")
    url = torchvision.models.get_model_weights(arch).DEFAULT.url
    path = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    if not path.is_file():
        raise ValueError(f"ImageNet weights for {arch} are not available locally (looked for {path}); nothing is "
                         f"downloaded here. Fetch them once with network access: python -c \"import torchvision; "
                         f"torchvision.models.{arch}(weights='DEFAULT')\", or copy {url} to {path}.")
    model = torchvision_resnet(arch)
    state = {k: v for k, v in torch.load(path, map_location="cpu", weights_only=True).items()
             if not k.startswith("fc.")}
    model.load_state_dict(state, strict=True)
    return model, 2048 if arch == "resnet50" else 512


def labelled_datasets() -> list[str]:
    """The datasets that can have labels, which a linear probe or fine-tuning can be measured on (a folder or
    shard folder needs class sub-folders)."""
    return [name for name, info in DATASETS.items() if info.num_classes or name in ("folder", "stream")]


def choose_dataset(dataset: str | None, data_dir: str | Path | None, metadata: dict[str, Any],
                   source: str) -> tuple[str, str, str]:
    """``(dataset, data_dir, why)``: the one given, else the one recorded in the backbone's ``metadata``.

    An export records ``data`` (and, from the recipes, ``data_dir``); a Lightning checkpoint its datamodule's
    ``dataset`` and ``data_dir`` (``load_backbone`` puts both in the metadata). ``why`` says which applied.

    Raises:
        ValueError: no ``dataset`` given and none recorded, or a recorded dataset without labels.
    """
    choices = ", ".join(labelled_datasets())
    if dataset is not None:
        recorded_dir = metadata.get("data_dir") if metadata.get("data") == dataset else None
        return dataset, str(data_dir or recorded_dir or "./data"), "given with --data.dataset"
    recorded = metadata.get("data")
    if recorded is None:
        raise ValueError(f"{source} records no dataset it was trained on, so there is no default to evaluate on: "
                         f"pass --data.dataset NAME (one of {choices}) and --data.data_dir PATH.")
    if recorded not in labelled_datasets():
        raise ValueError(f"{source} was trained on {recorded!r}, which has no labels to evaluate with: pass a "
                         f"labelled --data.dataset (one of {choices}) and --data.data_dir PATH.")
    where = str(data_dir or metadata.get("data_dir") or "./data")
    return recorded, where, "the data the backbone was trained on, recorded in its metadata (--data.dataset overrides)"


def build_init(backbone: str, arch: str, cifar_stem: bool, dataset: str | None,
               image_size: int | None) -> tuple[nn.Module, int, dict[str, Any]]:
    """``(module, feature_dim, metadata)`` for PATH, ``random`` or ``imagenet``.

    The metadata holds ``image_size``, ``mean``, ``std``, ``architecture`` and ``cifar_stem``; for a file,
    everything ``load_backbone`` read (``data`` among it). ``dataset`` supplies the size and normalisation
    the file does not record, and those of ``random`` and ``imagenet``; it may be None only for a file.
    """
    if backbone in ("random", "imagenet"):
        if dataset is None:
            raise ValueError(f"--backbone {backbone} needs --data.dataset NAME (one of "
                             f"{', '.join(labelled_datasets())}) and --data.data_dir PATH: it records no data.")
        info = DATASETS[dataset]
        if backbone == "random":
            module, dim = build_backbone(arch, cifar_stem)
            mean, std = info.mean, info.std
        else:
            module, dim = imagenet_backbone(arch)
            mean, std, cifar_stem = IMAGENET_MEAN, IMAGENET_STD, False
        return module, dim, {"image_size": image_size or info.image_size, "mean": mean, "std": std,
                             "architecture": arch, "cifar_stem": cifar_stem and arch in TORCHVISION_RESNETS}
    module, _, metadata = load_backbone(backbone_path(backbone), trainable=True)  # it freezes by default
    return module.train(), int(metadata["feature_dim"]), dict(metadata)


def fill_preprocessing(metadata: dict[str, Any], dataset: str, image_size: int | None = None) -> dict[str, Any]:
    """``metadata`` with ``image_size`` (``image_size`` when given), ``mean`` and ``std`` filled in from ``dataset``
    where the backbone records none."""
    info = DATASETS[dataset]
    return {**metadata, "image_size": image_size or metadata.get("image_size") or info.image_size,
            "mean": metadata.get("mean") or info.mean, "std": metadata.get("std") or info.std}


def labelled_subset(split: ImageTensors, size: int | None, seed: int) -> ImageTensors:
    """The labelled images of ``split`` (label >= 0); with ``size``, a random ``size`` of them seeded by ``seed``."""
    split = split.subset(torch.nonzero(split.labels >= 0).flatten())
    if size is None or size >= len(split):
        return split
    return split.subset(torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:size])


def held_out_rule(metadata: dict[str, Any], data_seed: int | None = None,
                  val_fraction: float | None = None) -> tuple[int, float]:
    """``(data seed, val_fraction)`` that drew the held-out share of a labelled folder without ``test/``: those
    given (``--data.seed``, ``--data.val_fraction``), else those the backbone records (``data_seed``,
    ``val_fraction``), else pretraining's defaults (0 and 0.1)."""
    if data_seed is None:
        data_seed = int(metadata.get("data_seed") or 0)
    if val_fraction is None:
        recorded = metadata.get("val_fraction")
        val_fraction = DEFAULT_VAL_FRACTION if recorded is None else float(recorded)
    return data_seed, val_fraction


def evaluation_data(dataset: str, data_dir: str, image_size: int, subsets: tuple[int | None, int | None],
                    seed: int, rule: tuple[int, float], download: bool = True) -> EvaluationSplits:
    """The labelled train and test images to evaluate on (:func:`ssl_siamese.data.evaluation_splits`, ``rule``
    from :func:`held_out_rule`), each cut to a seeded random subset of ``subsets`` images (seeds ``seed`` and
    ``seed + 1``) when given.

    Raises:
        ValueError: no labelled images in one of the two splits (and ``evaluation_splits``' errors).
    """
    splits = evaluation_splits(dataset, data_dir, image_size, download, *rule)
    train, test = (labelled_subset(split, size, seed + i)
                   for i, (split, size) in enumerate(zip((splits.train, splits.test), subsets)))
    if len(train) == 0 or len(test) == 0:
        raise ValueError(f"{splits.dataset} in {data_dir} has no labelled train or test images to evaluate with.")
    return replace(splits, train=train, test=test)


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
    """
    choices = labelled_datasets()
    if dataset is not None and dataset not in choices:
        raise ValueError(f"Unknown or unlabelled dataset {dataset!r}; choose one of {', '.join(choices)}.")
    pl.seed_everything(seed, verbose=False)
    module, feature_dim, metadata = build_init(str(backbone), arch, cifar_stem, dataset, image_size)
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
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2))
    for logger in trainer.loggers:
        logger.finalize("success")
        if hasattr(getattr(logger, "experiment", None), "finish"):
            logger.experiment.finish()
    return result


class LoadedClassifier(NamedTuple):
    """What ``load_classifier`` returns: images -> logits (eval mode, no gradients), preprocessing, names."""

    model: nn.Module
    transform: Preprocess | None
    classes: list[str]
    metadata: dict[str, Any]


def load_classifier(path: str | Path) -> LoadedClassifier:
    """The fine-tuned classifier saved by ``run_finetune`` (``<out>/exported_models/finetuned.pt``), weights-only.

    Example:
        >>> model, transform, classes, _ = load_classifier("out/finetune/exported_models/finetuned.pt")
        >>> names = [classes[i] for i in model(transform(images_uint8)).argmax(1)]

    Raises:
        ValueError: the file is not a backbone export (``load_backbone``'s errors) or has no classifier head.
    """
    backbone, transform, metadata = load_backbone(path)
    head_state = read_checkpoint(path).get("head")
    if not isinstance(head_state, dict) or "weight" not in head_state:
        raise ValueError(f"{path} holds a backbone without a classifier head; fine-tune it first "
                         "(python -m ssl_siamese.recipes.finetune --backbone PATH), or use it with load_backbone.")
    classes_out, features = head_state["weight"].shape
    head = nn.Linear(features, classes_out)
    head.load_state_dict(head_state, strict=True)
    model = nn.Sequential(backbone, nn.Flatten(1), head).eval().requires_grad_(False)
    classes = [str(c) for c in metadata.get("classes") or range(classes_out)]
    return LoadedClassifier(model, transform, classes, metadata)


def add_held_out_options(parser: Any) -> None:
    """``--data.seed`` and ``--data.val_fraction``: pretraining's, which drew a labelled folder's held-out share."""
    parser.add_argument("--data.seed", type=Optional[int], default=None,
                        help="A labelled folder without test/: the --data.seed pretraining used, which drew the "
                             "held-out test images. Default: the one the backbone records, else 0.")
    parser.add_argument("--data.val_fraction", type=Optional[float], default=None,
                        help="A labelled folder without test/: the share of each class held out to test on, as "
                             "in pretraining. Default: the one the backbone records, else 0.1.")


def parse_args(argv: list[str] | None = None) -> Namespace:
    parser = recipe_parser("python -m ssl_siamese.recipes.finetune",
                           "Fine-tune a backbone with a new linear head; report test top-1.")
    parser.add_argument("--backbone", "--ckpt", dest="backbone", required=True, metavar="PATH",
                        help=f"'random', 'imagenet', or {BACKBONE_FORMS}.")
    parser.add_argument("--arch", default="resnet18", help="Architecture for random/imagenet (e.g. tiny_cnn).")
    parser.add_argument("--cifar_stem", default=True, type=bool,
                        help="3x3 stem for a random torchvision ResNet.")
    parser.add_argument("--data.dataset", default=None, choices=[*labelled_datasets(), None],
                        help="Default: the dataset recorded in the backbone file (what it was trained on).")
    parser.add_argument("--data.data_dir", default=None,
                        help="Default: the folder recorded with that dataset, else ./data.")
    parser.add_argument("--data.download", default=True, type=bool, help="Download the dataset if missing.")
    add_held_out_options(parser)
    parser.add_argument("--data.train_subset", type=int, default=None)
    parser.add_argument("--data.test_subset", type=int, default=None)
    parser.add_argument("--data.image_size", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--weight_decay", type=float, default=5e-4)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="out/finetune", help="Output folder: results.json, exported_models/.")
    parser.add_argument("--log_to", default="wandb", choices=LOGGERS)
    return parse_checked(parser, argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command-line entry point; user errors exit with a one-line message."""
    args = parse_args(argv)
    try:
        data = args.data
        result = run_finetune(args.backbone, data.dataset, data.data_dir, args.arch, args.cifar_stem, args.epochs,
                              args.lr, args.weight_decay, args.batch_size, data.train_subset, data.test_subset,
                              data.image_size, args.out, args.log_to, args.seed, data.download,
                              data_seed=data.seed, val_fraction=data.val_fraction)
    except (FileNotFoundError, ValueError, DataNotFoundError) as error:
        sys.exit(f"ssl_siamese.recipes.finetune: error: {error}")
    print(f"Fine-tuned {result['init']} ({result['architecture']}) on {result['dataset']} for {result['epochs']} "
          f"epochs ({result['num_train']} train / {result['num_test']} test): test top-1 {result['top1']:.4f}  "
          f"top-5 {result['top5']:.4f}")
    print(f"Fine-tuned model (backbone + classifier head): {result['model_path']} "
          "(read it with ssl_siamese.recipes.finetune.load_classifier)")
    return result


if __name__ == "__main__":
    main()
