"""Linear probe (or fine-tuning) of a pretrained backbone on a labelled dataset.

    python -m ssl_siamese.recipes.linear_probe --ckpt out/simclr/exported_models/backbone.pt \
        --data.dataset fashion_mnist --data.data_dir ./data [--wd_sweep] [--finetune] [--subset 5000]

``--ckpt`` is an exported backbone (``export_backbone``) or a Lightning checkpoint of SimCLR, MoCo or
SimSiam; both are read with ``torch.load(weights_only=True)``, so opening one never runs code. Images
are preprocessed like the model's evaluation views (``ViewAugmentation.normalize`` at the model's size,
mean and std). The linear probe computes the frozen backbone's features once per split, then fits
``fit_linear_probe`` (or ``weight_decay_sweep``). ``--finetune`` instead trains backbone and linear head
together with random crops and flips. It prints top-1/top-5, writes ``results.json`` and the confusion
matrix PNG to ``--out``, and logs them to W&B (offline without a key) unless ``--log_to none``.

Example:
    >>> result = run_linear_probe("backbone.pt", "fashion_mnist", "./data", subset=2000, log_to="none")
    >>> result["top1"], result["top5"]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ssl_siamese.augment import ViewAugmentation
from ssl_siamese.data import DATASETS, DataNotFoundError, ImageTensors, load_split
from ssl_siamese.evaluation.linear import fit_linear_probe, weight_decay_sweep
from ssl_siamese.evaluation.plots import confusion_matrix_figure, log_figure
from ssl_siamese.export import FORMAT, load_backbone
from ssl_siamese.loggers import LOGGERS, make_logger
from ssl_siamese.methods import MoCo, SimCLR, SimSiam

METHOD_CLASSES = (SimCLR, MoCo, SimSiam)


def load_pretrained(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """``(backbone in eval mode, metadata)`` from an exported backbone or a Lightning checkpoint.

    For a checkpoint the method is found by building each of SimCLR, MoCo and SimSiam from its
    ``hyper_parameters`` and keeping the one whose ``state_dict`` loads strictly.

    Raises:
        FileNotFoundError: no such file.
        ValueError: truncated or unreadable file, pickled objects, or weights no method accepts.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint or exported backbone at {path.resolve()}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated, corrupt, or carries pickled objects
        raise ValueError(
            f"Cannot read {path} ({type(error).__name__}: {str(error)[:200]}). The file may be truncated "
            "or corrupt (copy it again), or hold pickled objects, which are refused for safety.") from error
    if isinstance(payload, dict) and payload.get("metadata", {}).get("format") == FORMAT:
        return load_backbone(path)
    if not isinstance(payload, dict) or "state_dict" not in payload or "hyper_parameters" not in payload:
        raise ValueError(f"{path} is neither an exported backbone ({FORMAT}) nor a Lightning checkpoint "
                         "with 'state_dict' and 'hyper_parameters'.")
    hparams = dict(payload["hyper_parameters"])
    for method in METHOD_CLASSES:
        try:
            model = method(**hparams)
            model.load_state_dict(payload["state_dict"], strict=True)
        except (TypeError, ValueError, RuntimeError):
            continue
        metadata = {"method": method.__name__, "architecture": hparams.get("backbone"),
                    "feature_dim": model.feature_dim, "image_size": hparams.get("view_size", 0),
                    "mean": list(hparams.get("mean", ())), "std": list(hparams.get("std", ())),
                    "epochs": payload.get("epoch"), "steps": payload.get("global_step")}
        return model.backbone.eval(), metadata
    names = ", ".join(m.__name__ for m in METHOD_CLASSES)
    raise ValueError(f"The checkpoint {path} does not match any of {names} (hyper-parameters "
                     f"{sorted(hparams)}); a backbone passed as a module cannot be rebuilt, export it instead.")


def _subset(split: ImageTensors, size: int | None, seed: int) -> ImageTensors:
    if size is None or size >= len(split):
        return split
    return split.subset(torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:size])


@torch.no_grad()
def compute_features(backbone: nn.Module, images: Tensor, preprocess: ViewAugmentation, batch_size: int = 256,
                     device: str | torch.device = "cpu", desc: str = "features",
                     progress: bool = True) -> Tensor:
    """Features ``(N, D)`` of uint8 ``images`` through the frozen ``backbone`` in eval mode, on ``device``."""
    backbone.eval().to(device)
    preprocess = preprocess.to(device)
    batches = tqdm(images.split(batch_size), desc=desc, disable=not progress, leave=False)
    return torch.cat([backbone(preprocess.normalize(batch.to(device))).flatten(1).float() for batch in batches])


def classification_metrics(logits: Tensor, labels: Tensor, num_classes: int) -> dict[str, Any]:
    """Top-1, top-5 and the ``(C, C)`` confusion matrix (row: true class, column: predicted)."""
    ranked = logits.topk(min(5, num_classes), dim=1).indices
    hits = ranked == labels.unsqueeze(1)
    confusion = torch.bincount(labels * num_classes + ranked[:, 0], minlength=num_classes ** 2)
    return {"top1": hits[:, 0].float().mean().item(), "top5": hits.any(dim=1).float().mean().item(),
            "confusion": confusion.reshape(num_classes, num_classes).cpu()}


def finetune(backbone: nn.Module, feature_dim: int, train: ImageTensors, test: ImageTensors, num_classes: int,
             augmentation: ViewAugmentation, epochs: int, lr: float, weight_decay: float, batch_size: int,
             device: str | torch.device, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Train backbone + linear head with cross-entropy (SGD, cosine), random crop/flip; test metrics."""
    torch.manual_seed(seed)
    model = nn.Sequential(backbone, nn.Flatten(1), nn.Linear(feature_dim, num_classes)).to(device)
    augmentation = augmentation.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    steps = epochs * math.ceil(len(train) / batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps))
    model.train()
    for epoch in tqdm(range(epochs), desc="fine-tune", disable=not progress, leave=False):
        for index in torch.randperm(len(train)).split(batch_size):
            images, labels = train.images[index].to(device), train.labels[index].to(device)
            loss = F.cross_entropy(model(augmentation(images)), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    logits = torch.cat([model[2](features) for features in compute_features(
        backbone, test.images, augmentation, batch_size, device, "test", progress).split(batch_size)])
    return classification_metrics(logits.detach(), test.labels.to(device), num_classes)


def run_linear_probe(ckpt: str | Path, dataset: str = "fashion_mnist", data_dir: str | Path = "./data",
                     finetune_backbone: bool = False, epochs: int | None = None, lr: float | None = None,
                     weight_decay: float = 0.0, wd_sweep: bool = False, subset: int | None = None,
                     batch_size: int = 256, out: str | Path = "out/linear_probe", log_to: str = "wandb",
                     device: str | None = None, seed: int = 0, download: bool = True,
                     progress: bool = True) -> dict[str, Any]:
    """Evaluate ``ckpt`` on ``dataset``; returns the results written to ``<out>/results.json``.

    ``epochs`` defaults to 100 (linear probe) or 10 (``finetune_backbone``), ``lr`` to 0.1 or 0.05.
    ``subset`` keeps a seeded random ``subset`` images of each of train and test (quick CPU runs).
    Returned keys: ``top1``, ``top5``, ``mode``, ``weight_decay``, ``validation_top1`` (sweep only),
    ``num_train``, ``num_test``, ``method``, ``confusion`` (list of lists), ``confusion_png``.
    """
    if dataset not in DATASETS:
        raise ValueError(f"Unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}.")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    mode = "finetune" if finetune_backbone else "linear"
    epochs = epochs or (10 if finetune_backbone else 100)
    lr = lr or (0.05 if finetune_backbone else 0.1)
    backbone, metadata = load_pretrained(ckpt)
    info = DATASETS[dataset]
    size = int(metadata.get("image_size") or info.image_size)
    mean, std = metadata.get("mean") or info.mean, metadata.get("std") or info.std
    train, test = (_subset(load_split(dataset, split, data_dir, download, image_size=size), subset, seed + i)
                   for i, split in enumerate(("train", "test")))
    train, test = (s.subset(torch.nonzero(s.labels >= 0).flatten()) for s in (train, test))
    if len(train) == 0 or len(test) == 0:
        raise ValueError(f"{dataset} in {data_dir} has no labelled train or test images to probe with.")
    num_classes = len(train.classes) or int(max(train.labels.max(), test.labels.max())) + 1
    result: dict[str, Any] = {"mode": mode, "method": metadata.get("method"), "ckpt": str(ckpt),
                              "dataset": dataset, "num_train": len(train), "num_test": len(test),
                              "epochs": epochs, "lr": lr, "weight_decay": weight_decay}
    if finetune_backbone:
        crops = ViewAugmentation(size, crop_scale=(0.2, 1.0), jitter_prob=0.0, grayscale_prob=0.0,
                                 mean=mean, std=std)
        metrics = finetune(backbone, int(metadata["feature_dim"]), train, test, num_classes, crops, epochs, lr,
                           weight_decay, batch_size, device, seed, progress)
    else:
        preprocess = ViewAugmentation(size, mean=mean, std=std)
        train_x, test_x = (compute_features(backbone, split.images, preprocess, batch_size, device,
                                            f"{name} features", progress)
                           for name, split in (("train", train), ("test", test)))
        options = {"num_classes": num_classes, "epochs": epochs, "lr": lr, "seed": seed}
        train_y, test_y = train.labels.to(device), test.labels.to(device)
        if wd_sweep:
            sweep = weight_decay_sweep(train_x, train_y, test_x, test_y, **options)
            probe = sweep.result
            result.update(weight_decay=sweep.best_weight_decay,
                          validation_top1={str(k): v for k, v in sweep.validation_top1.items()})
        else:
            probe = fit_linear_probe(train_x, train_y, test_x, test_y, weight_decay=weight_decay, **options)
        metrics = {"top1": probe.top1, "top5": probe.top5, "confusion": probe.confusion.cpu()}
    result.update(top1=metrics["top1"], top5=metrics["top5"], confusion=metrics["confusion"].tolist())
    out = Path(out)
    logger = make_logger(log_to, out, f"linear_probe_{mode}")
    loggers = [logger] if logger else []
    for each in loggers:
        each.log_metrics({f"{mode}_probe/top1": result["top1"], f"{mode}_probe/top5": result["top5"]})
    figure = confusion_matrix_figure(metrics["confusion"], train.classes or None,
                                     title=f"{mode} probe on {dataset}: top-1 {result['top1']:.4f}")
    result["confusion_png"] = str(log_figure(loggers, f"{mode}_probe/confusion_matrix", figure, out))
    (out / "results.json").write_text(json.dumps(result, indent=2))
    for each in loggers:
        each.finalize("success")
        experiment = getattr(each, "experiment", None)
        if hasattr(experiment, "finish"):
            experiment.finish()
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ssl_siamese.recipes.linear_probe",
                                     description="Linear probe or fine-tuning of a pretrained backbone.")
    parser.add_argument("--ckpt", required=True, help="Exported backbone (.pt) or Lightning checkpoint (.ckpt).")
    parser.add_argument("--data.dataset", dest="dataset", default="fashion_mnist",
                        choices=[name for name, info in DATASETS.items() if info.num_classes or name == "folder"])
    parser.add_argument("--data.data_dir", dest="data_dir", default="./data")
    parser.add_argument("--data.download", dest="download", default=True, type=lambda s: s.lower() == "true",
                        help="Download the dataset if missing (true/false).")
    parser.add_argument("--finetune", action="store_true", help="Train the backbone too (random crop/flip).")
    parser.add_argument("--epochs", type=int, default=None, help="Default 100 (linear) or 10 (--finetune).")
    parser.add_argument("--lr", type=float, default=None, help="Default 0.1 (linear) or 0.05 (--finetune).")
    parser.add_argument("--weight_decay", type=float, default=0.0)
    parser.add_argument("--wd_sweep", action="store_true", help="Pick the weight decay on a validation split.")
    parser.add_argument("--subset", type=int, default=None, help="Use N random train and N test images.")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--device", default=None, help="Default: cuda when available, else cpu.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="out/linear_probe")
    parser.add_argument("--log_to", default="wandb", choices=LOGGERS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command-line entry point: parse, run, print; user errors exit with a one-line message."""
    args = parse_args(argv)
    try:
        result = run_linear_probe(args.ckpt, args.dataset, args.data_dir, args.finetune, args.epochs, args.lr,
                                  args.weight_decay, args.wd_sweep, args.subset, args.batch_size, args.out,
                                  args.log_to, args.device, args.seed, args.download)
    except (FileNotFoundError, ValueError, DataNotFoundError) as error:
        sys.exit(f"ssl_siamese.recipes.linear_probe: error: {error}")
    print(f"{result['mode']} probe of {result['method']} on {result['dataset']} "
          f"({result['num_train']} train / {result['num_test']} test): "
          f"top-1 {result['top1']:.4f}  top-5 {result['top5']:.4f}")
    print(f"Confusion matrix: {result['confusion_png']}")
    return result


if __name__ == "__main__":
    main()
