"""Train SimCLR, MoCo, SimSiam, BYOL, Barlow Twins, VICReg, DINO, MAE, DCL and NNCLR through the real recipe path, evaluate them, and print one table.

Each method runs ``ssl_siamese.cli.main`` (LightningCLI, on-device augmentation, kNN callback) with the
same data and budget. Its exported backbone, and the same architecture at random init (same seed), are
then evaluated on frozen features with the library's own functions: weighted kNN top-1 (k=200, t=0.1,
cosine; bank = training split, queries = test split), linear-probe top-1 (trained on the training split,
tested on the test split) and 5-way 1-shot accuracy with its 95% interval (nearest prototype, 600 episodes
on the test split). Raw-pixel kNN (flattened normalised pixels, same kNN) is the reference row. The table
also gives training throughput, minutes of training and the throughput ratio to SimCLR in the same run.

    # GPU: ResNet-18 (CIFAR stem, bf16) on all of Fashion-MNIST (60k / 10k), 10 epochs per method
    python benchmarks/methods.py --data_dir .data/fashion-mnist --json $OUT/methods.json
    # CPU: tiny_cnn with the settings of recipes/quickstart.yaml, a training subset, a few epochs
    python benchmarks/methods.py --cpu --data_dir data/fashion-mnist --json methods_cpu.json
    # CPU smoke test (what CI runs): tiny ConvNet on synthetic data, seconds
    python benchmarks/methods.py --quick
"""

from __future__ import annotations

import argparse
import inspect
import json
import platform
import tempfile
import warnings
from datetime import date
from pathlib import Path
from typing import Any

import lightly
import pytorch_lightning as pl
import torch
import yaml
from torch import Tensor

from ssl_siamese import build_backbone, embed_images, load_backbone
from ssl_siamese.cli import main
from ssl_siamese.data import ImageTensors, load_split, random_subset
from ssl_siamese.search.embeddings import default_device, preprocessing
from ssl_siamese.evaluation import fewshot_episodes, fit_linear_probe, topk_accuracy, weighted_knn_scores
from ssl_siamese.export import rebuild_arguments
from ssl_siamese.methods import (BYOL, DCL, DINO, NNCLR, BarlowTwins, MoCo, SiameseModule, SimCLR, SimSiam,
                                 VICReg)
from ssl_siamese.methods.mae import MAE

METHODS = {"simclr": SimCLR, "moco": MoCo, "simsiam": SimSiam, "byol": BYOL, "barlow_twins": BarlowTwins,
           "vicreg": VICReg, "dino": DINO, "mae": MAE, "dcl": DCL, "nnclr": NNCLR}
QUICKSTART = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"
# defaults per mode; train_subset, eval_train, eval_test None: the whole split
# --cpu learning rates per 256 images that differ from the quickstart's 1.0: at 1.0 MoCo's EMA key encoder
# (momentum 0.99) cannot follow the query encoder and MoCo falls below its random init (BENCHMARKS.md);
# 0.12 is the recipes' MoCo default
CPU_LR = {"moco": 0.12}
# --cpu and --quick: heads sized for tiny_cnn (the papers' 8192-wide projectors would dominate a CPU step);
# Barlow Twins and VICReg with a short warm-up and a lower rate (at 0.5 VICReg's loss diverges on the CPU run;
# Barlow Twins stayed at its init at 0.1 and fell below it at 0.3, learned at 0.03: BENCHMARKS.md, 2026-12-03)
SMALL_HEADS = {"byol": ["--model.hidden_dim", "512", "--model.projection_dim", "128", "--model.base_momentum", "0.96"],
               "barlow_twins": ["--model.hidden_dim", "512", "--model.projection_dim", "512",
                                "--model.warmup_epochs", "0.5"],
               "vicreg": ["--model.hidden_dim", "512", "--model.projection_dim", "512", "--model.warmup_epochs", "0.5"]}
CPU_LR.update({"byol": 0.5, "barlow_twins": 0.03, "vicreg": 0.2})
# DINO (AdamW): K = 1024 outputs with a BatchNorm head, 2 local views at 14 px, a teacher that can follow a short run
# (momentum 0.96), constant teacher temperature 0.04 and weight decay, no frozen last layer (tests/test_methods_dino.py)
SMALL_HEADS["dino"] = ["--model.output_dim", "1024", "--model.hidden_dim", "256", "--model.bottleneck_dim", "64",
                       "--model.local_views", "2", "--model.local_size", "14", "--model.base_momentum", "0.96",
                       "--model.batch_norm_head", "true",
                       "--model.teacher_temp", "0.04", "--model.warmup_teacher_temp_epochs", "0",
                       "--model.freeze_last_layer_epochs", "0", "--model.weight_decay_end", "null",
                       "--model.warmup_epochs", "0.5"]
CPU_LR["dino"] = 0.004
CPU_LR["mae"] = 0.002  # AdamW
# NNCLR: the heads of lightly's CIFAR-10 benchmark and, as tests/test_methods_dcl_nnclr.py found on the CPU, a support
# set of two batches and temperature 0.2 (a support set much larger than a short run's images fell below random init)
SMALL_HEADS["nnclr"] = ["--model.hidden_dim", "512", "--model.projection_dim", "128",
                        "--model.prediction_hidden_dim", "512", "--model.temperature", "0.2"]
SUPPORT_SET = {"quick": 64, "cpu": 512}  # two batches


def tiny_vit(size: int) -> list[str]:
    """MAE's backbone in --cpu/--quick: a tiny timm ViT (width 96, 4 blocks, 4-pixel patches, mean pooling)."""
    return ["--model.backbone", "timm/vit_tiny_patch16_224", "--model.backbone_kwargs",
            f"{{img_size: {size}, patch_size: 4, embed_dim: 96, depth: 4, num_heads: 3, pooling: mean}}",
            "--model.decoder_dim", "64", "--model.decoder_depth", "2", "--model.decoder_heads", "4",
            "--model.warmup_epochs", "0.5"]
MODES = {
    "gpu": {"epochs": 10, "train_subset": None, "eval_train": None, "eval_test": None, "probe_epochs": 100,
            "episodes": 600},
    "cpu": {"epochs": 4, "train_subset": 12288, "eval_train": 10000, "eval_test": 5000, "probe_epochs": 100,
            "episodes": 600},
    # the smallest budget that still trains each method and fills every column (a smoke test, not figures);
    # eval_test 256: 5-way 1-shot episodes with 15 queries need 16 images of 5 classes
    "quick": {"epochs": 1, "train_subset": None, "eval_train": 256, "eval_test": 256, "probe_epochs": 5,
              "episodes": 20},
}
# --quick: 4 steps, since ThroughputMonitor times from the 3rd step on (fewer leave img/s empty)
QUICK_STEPS, QUICK_BATCH = 4, 32


def training_args(name: str, args: argparse.Namespace, out: str) -> list[str]:
    """The recipe command line of one method in the chosen mode."""
    if args.mode == "quick":
        cli = ["--model.backbone", "tiny_cnn", "--model.backbone_kwargs", "{width: 8}", "--data.dataset", "synthetic",
               "--data.batch_size", str(QUICK_BATCH), "--trainer.max_epochs", str(args.epochs),
               "--trainer.limit_train_batches", str(QUICK_STEPS), "--trainer.accelerator", "cpu",
               "--data.knn_bank_subset", "256", "--data.val_subset", "64"]
        if name == "moco":  # at most the images of an epoch (MoCo warns otherwise)
            cli += ["--model.queue_size", str(QUICK_STEPS * QUICK_BATCH)]
        if name == "nnclr":
            cli += ["--model.support_set_size", str(SUPPORT_SET["quick"])]
        cli += SMALL_HEADS.get(name, []) + (tiny_vit(32) if name == "mae" else [])
    elif args.mode == "cpu":  # quickstart.yaml, less the options this method does not have (SimSiam: temperature)
        config = yaml.safe_load(QUICKSTART.read_text())
        accepted = {*inspect.signature(METHODS[name]).parameters, *inspect.signature(SiameseModule).parameters}
        config["model"] = {key: value for key, value in config["model"].items() if key in accepted
                           and not (name == "mae" and key == "augmentation")}  # MAE: its own crop + flip
        config["data"].update(data_dir=args.data_dir, download=False, train_subset=args.train_subset)
        config["trainer"].update(max_epochs=args.epochs, check_val_every_n_epoch=args.epochs)
        path = Path(out) / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        cli = ["--config", str(path), "--model.backbone", "tiny_cnn"]
        if name == "moco":  # the keys of the last 8 steps (2 views x 256), a third of the default training subset
            cli += ["--model.queue_size", "4096"]
        if name == "nnclr":
            cli += ["--model.support_set_size", str(SUPPORT_SET["cpu"])]
        if name in CPU_LR:
            cli += ["--model.lr", str(CPU_LR[name])]
        cli += SMALL_HEADS.get(name, []) + (tiny_vit(28) if name == "mae" else [])
    else:
        cli = ["--config", f"recipes/fashion_mnist_{name}.yaml", "--data.data_dir", args.data_dir,
               "--data.download", "false", "--trainer.max_epochs", str(args.epochs),
               "--trainer.check_val_every_n_epoch", str(args.epochs)]
        if args.train_subset:
            cli += ["--data.train_subset", str(args.train_subset)]
    return cli + ["--seed_everything", str(args.seed), "--out", f"{out}/{name}", "--log_to", "csv",
                  "--pictures_every_n_epochs", "0", "--trainer.enable_progress_bar", "false"]


def evaluate(features: tuple[Tensor, Tensor], labels: tuple[Tensor, Tensor], num_classes: int,
             args: argparse.Namespace, probe: bool = True) -> dict[str, Any]:
    """kNN top-1, linear-probe top-1 and 5-way 1-shot of (train, test) features; on the GPU when there is one."""
    device = default_device()
    (train, test), (train_y, test_y) = ((a.to(device), b.to(device)) for a, b in (features, labels))
    scores = weighted_knn_scores(test, train, train_y, num_classes, k=200, temperature=0.1)
    result: dict[str, Any] = {"knn_top1": topk_accuracy(scores, test_y, ks=(1,))[1]}
    if probe:
        result["linear_top1"] = fit_linear_probe(train, train_y, test, test_y, num_classes,
                                                 epochs=args.probe_epochs, seed=args.seed).top1
        fewshot = fewshot_episodes(test, test_y, n_way=5, k_shot=1, episodes=args.episodes, seed=args.seed)
        result["fewshot_5w1s"], result["fewshot_ci95"] = fewshot.mean, fewshot.ci95
    return result


def evaluate_backbone(backbone: torch.nn.Module, metadata: dict[str, Any], splits: tuple[ImageTensors, ImageTensors],
                      num_classes: int, args: argparse.Namespace) -> dict[str, Any]:
    features = tuple(embed_images(backbone, split.images, metadata, progress=False) for split in splits)
    return evaluate(features, tuple(split.labels for split in splits), num_classes, args)


def run(name: str, args: argparse.Namespace, out: str, splits: tuple[ImageTensors, ImageTensors],
        num_classes: int) -> dict[str, Any]:
    summary = main(METHODS[name], name, training_args(name, args, out))
    trained, _, metadata = load_backbone(summary["backbone"])
    torch.manual_seed(args.seed)  # the recipe seeds everything with the same seed before it builds the model
    initial, _ = build_backbone(metadata["architecture"], metadata["cifar_stem"], **rebuild_arguments(metadata))
    history = summary["knn_history"]
    return {"method": name, "epochs": summary["epochs"], "img_per_s": summary["img_per_s"],
            "fit_minutes": summary["fit_seconds"] / 60, "metadata": metadata,
            "callback_knn_top1": [entry.top1 for entry in history],
            "init": evaluate_backbone(initial, metadata, splits, num_classes, args),
            "trained": evaluate_backbone(trained, metadata, splits, num_classes, args)}


def raw_pixels(splits: tuple[ImageTensors, ImageTensors], metadata: dict[str, Any], num_classes: int,
               args: argparse.Namespace) -> float:
    """kNN top-1 on flattened pixels, normalised like the backbone's input."""
    transform = preprocessing(metadata)
    features = tuple(torch.cat([transform(chunk).flatten(1) for chunk in split.images.split(4096)])
                     for split in splits)
    return evaluate(features, tuple(split.labels for split in splits), num_classes, args, probe=False)["knn_top1"]


def table(rows: list[dict[str, Any]], pixels: float) -> list[str]:
    """The markdown table: per method random init -> trained, speed and time; raw-pixel kNN last."""
    reference = next((r["img_per_s"] for r in rows if r["method"] == "simclr"), None)
    lines = ["| method | epochs | kNN top-1 | linear probe top-1 | 5-way 1-shot | img/s | vs SimCLR | train minutes |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        init, trained = r["init"], r["trained"]
        ratio = f"{r['img_per_s'] / reference:.2f}" if reference and r["img_per_s"] else "-"
        speed = f"{r['img_per_s']:,.0f}" if r["img_per_s"] else "-"
        lines.append(f"| {r['method']} | {r['epochs']} | {init['knn_top1']:.4f} -> {trained['knn_top1']:.4f} | "
                     f"{init['linear_top1']:.4f} -> {trained['linear_top1']:.4f} | "
                     f"{init['fewshot_5w1s']:.4f} ± {init['fewshot_ci95']:.4f} -> "
                     f"{trained['fewshot_5w1s']:.4f} ± {trained['fewshot_ci95']:.4f} | {speed} | {ratio} | "
                     f"{r['fit_minutes']:.2f} |")
    lines.append(f"| raw pixels (reference) | - | {pixels:.4f} | - | - | - | - | - |")
    return lines


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--quick", dest="mode", action="store_const", const="quick",
                       help="CPU smoke test on synthetic data (seconds)")
    modes.add_argument("--cpu", dest="mode", action="store_const", const="cpu",
                       help="tiny_cnn with recipes/quickstart.yaml settings on real data, a few CPU minutes each")
    parser.set_defaults(mode="gpu")
    parser.add_argument("--data_dir", default="./data/fashion-mnist")
    parser.add_argument("--epochs", type=int, default=None, help="default: 10 (GPU), 4 (--cpu)")
    parser.add_argument("--train_subset", type=int, default=None,
                        help="training images for pretraining; default: all (GPU), 12288 (--cpu)")
    parser.add_argument("--eval_train", type=int, default=None,
                        help="kNN bank and linear-probe training images from the train split; "
                             "default: all 60,000 (GPU), 10,000 (--cpu)")
    parser.add_argument("--eval_test", type=int, default=None,
                        help="query / probe test / few-shot images from the test split; "
                             "default: all 10,000 (GPU), 5,000 (--cpu)")
    parser.add_argument("--probe_epochs", type=int, default=None, help="linear-probe epochs; default 100 (5 --quick)")
    parser.add_argument("--episodes", type=int, default=None, help="few-shot episodes; default 600 (20 --quick)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--json", default=None, help="write full results here")
    args = parser.parse_args()
    for key, default in MODES[args.mode].items():
        if getattr(args, key) is None:
            setattr(args, key, default)
    return args


def main_cli() -> None:
    args = parse_args()
    if args.mode == "quick":  # a smoke test: one thread is enough, and a busy second core cannot stall it
        torch.set_num_threads(1)
    # each recipe gets its own argument list while sys.argv holds this script's: intended here
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    dataset = "synthetic" if args.mode == "quick" else "fashion_mnist"
    train, test = (load_split(dataset, split, args.data_dir, download=False) for split in ("train", "test"))
    # the same seeds as the data module's kNN bank and queries: equal sizes give the same images
    splits = random_subset(train, args.eval_train, args.seed + 1), random_subset(test, args.eval_test, args.seed + 2)
    num_classes = len(train.classes)
    with tempfile.TemporaryDirectory() as out:
        rows = [run(name, args, out, splits, num_classes) for name in args.methods]
    pixels = raw_pixels(splits, rows[0]["metadata"], num_classes, args)

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    versions = {"torch": torch.__version__, "lightning": pl.__version__, "lightly": lightly.__version__}
    settings = {"train_subset": args.train_subset or len(train), "eval_train": len(splits[0]),
                "eval_test": len(splits[1]), "epochs": args.epochs, "probe_epochs": args.probe_epochs,
                "episodes": args.episodes}
    print(f"\n{date.today()}  {device}  " + "  ".join(f"{k} {v}" for k, v in versions.items()))
    print(f"{dataset}, mode {args.mode}: pretraining on {settings['train_subset']:,} images; evaluation on "
          f"{settings['eval_train']:,} train / {settings['eval_test']:,} test images; random init -> trained")
    print("\n".join(table(rows, pixels)))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"date": str(date.today()), "device": device, **versions, "mode": args.mode,
                       "dataset": dataset, **settings, "seed": args.seed, "raw_pixel_knn_top1": pixels,
                       "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main_cli()
