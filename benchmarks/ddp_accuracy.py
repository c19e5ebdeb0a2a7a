"""DDP against one process after the same samples: does splitting the batch over processes change accuracy?

Three SimCLR runs train through Lightning's ``Trainer`` with the same global batch, learning rate, epochs
and training images: one process (seed 0), ``--devices`` DDP processes (seed 0: the same initial weights,
and each global step trains on the same images, since our loader shards the seeded order over ranks), and
one process with seed 1, whose difference to the first run is the seed-to-seed spread the DDP difference
must be read against. Each process gets ``global batch / devices`` images per step; BatchNorm
normalises per process unless ``--sync_batchnorm``. Every trained backbone, and the shared random init,
is then scored in this process: weighted kNN top-1 (k=200, t=0.1) and linear-probe top-1, bank and probe
training set from the training split, queries from the test split; the raw pixels (normalised like the
backbone's input, flattened) are scored the same way, the reference a learnt backbone must beat.

    # CPU: 2 gloo processes (ddp_spawn) against one, tiny_cnn with the quickstart's settings
    python benchmarks/ddp_accuracy.py --data_dir ../shared/data/fashion-mnist --json ddp.json
    # GPUs: 2 spawned NCCL processes, ResNet-18 with CIFAR stem, bf16
    python benchmarks/ddp_accuracy.py --accelerator gpu --devices 2 --backbone resnet18 --precision bf16-mixed \\
        --batch_size 512 --lr 0.12 --train_subset 0 --epochs 10 --data_dir .data/fashion-mnist
    # smoke test (what CI runs): synthetic data, a few steps
    python benchmarks/ddp_accuracy.py --quick
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from datetime import date
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from ssl_siamese import SimCLR, SSLDataModule, ViewAugmentation, embed_images, fit_linear_probe
from ssl_siamese.evaluation import topk_accuracy, weighted_knn_scores

FASHION_MNIST_NORM = {"mean": (0.2860,) * 3, "std": (0.3530,) * 3}


def build_model(args: argparse.Namespace, per_process_batch: int) -> SimCLR:
    """SimCLR with the quickstart's augmentation; built after seeding, so the seed fixes the weights."""
    augmentation = ViewAugmentation(size=args.image_size, crop_scale=(0.2, 1.0), **args.norm)
    return SimCLR(backbone=args.backbone, lr=args.lr, temperature=0.2, batch_size=per_process_batch,
                  view_size=args.image_size, augmentation=augmentation, **args.norm)


def train(args: argparse.Namespace, devices: int, seed: int) -> tuple[SimCLR, float]:
    """One run; returns the trained model (weights brought back from the DDP workers) and its minutes."""
    per_process = args.batch_size // devices
    pl.seed_everything(seed, workers=True, verbose=False)
    model = build_model(args, per_process)
    data = SSLDataModule(args.dataset, data_dir=args.data_dir, download=False, batch_size=per_process,
                         train_subset=args.train_subset or None, seed=seed)
    # spawned (or, --quick on the CPU, forked) workers: Lightning's "ddp" would re-run this whole script (all
    # three runs) in every process
    strategy = f"ddp_{args.start_method}" if devices > 1 else "auto"
    trainer = pl.Trainer(accelerator=args.accelerator, devices=devices, strategy=strategy,
                         precision=args.precision, max_epochs=args.epochs, limit_train_batches=args.limit_batches,
                         limit_val_batches=0, sync_batchnorm=args.sync_batchnorm and devices > 1, logger=False,
                         enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False)
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    return model, (time.perf_counter() - start) / 60


def evaluate(backbone: nn.Module, data: SSLDataModule, args: argparse.Namespace) -> dict[str, float]:
    """kNN top-1 and linear-probe top-1 of ``backbone`` (bank / probe train: training subset); ``nn.Flatten()``
    scores the raw pixels."""
    metadata = {"mean": args.norm["mean"], "std": args.norm["std"], "image_size": args.image_size}
    bank, queries = data.bank_data, data.query_data
    train = embed_images(backbone, bank.images, metadata, progress=False)
    test = embed_images(backbone, queries.images, metadata, progress=False)
    scores = weighted_knn_scores(test, train, bank.labels, data.num_classes, k=200, temperature=0.1)
    probe = fit_linear_probe(train, bank.labels, test, queries.labels, data.num_classes, epochs=args.probe_epochs)
    return {"knn_top1": topk_accuracy(scores, queries.labels, ks=(1,))[1], "linear_top1": probe.top1}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CPU smoke test: synthetic data, a few steps")
    parser.add_argument("--data_dir", default="./data/fashion-mnist")
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--devices", type=int, default=2, help="DDP processes (the other runs use one)")
    parser.add_argument("--backbone", default="tiny_cnn")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--batch_size", type=int, default=256, help="global batch, split over the processes")
    parser.add_argument("--lr", type=float, default=1.0, help="per 256 images (the quickstart's)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--train_subset", type=int, default=16384, help="training images; 0: all")
    parser.add_argument("--eval_train", type=int, default=10000, help="kNN bank and probe training images")
    parser.add_argument("--eval_test", type=int, default=5000, help="queries")
    parser.add_argument("--probe_epochs", type=int, default=100)
    parser.add_argument("--sync_batchnorm", action="store_true", help="SyncBatchNorm in the DDP run (GPUs)")
    parser.add_argument("--json", default=None, help="write full results here")
    args = parser.parse_args()
    args.dataset, args.image_size, args.norm, args.limit_batches = "fashion_mnist", 28, FASHION_MNIST_NORM, None
    args.start_method = "spawn"  # CUDA cannot fork
    if args.quick:
        # forked CPU workers inherit this process's imports, where spawned ones import Lightning again (~6 s each);
        # pickling the model for spawned workers is tested in tests/test_distributed.py
        args.start_method = "fork"
        args.dataset, args.image_size, args.norm = "synthetic", 32, {"mean": (0.5,) * 3, "std": (0.25,) * 3}
        args.batch_size, args.epochs, args.limit_batches, args.train_subset = 32, 1, 4, 256
        args.eval_train, args.eval_test, args.probe_epochs = 256, 128, 10
    if args.batch_size % args.devices:
        parser.error(f"--batch_size {args.batch_size} must split evenly over --devices {args.devices}")
    return args


def main() -> None:
    args = parse_args()
    if args.quick:  # a smoke test: one thread is enough, and a busy second core cannot stall it
        torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message=".*(does not have many workers|num_workers|sync_dist).*")
    data = SSLDataModule(args.dataset, data_dir=args.data_dir, download=False, batch_size=args.batch_size,
                         knn_bank_subset=args.eval_train, val_subset=args.eval_test)
    data.setup("validate")
    pl.seed_everything(0, verbose=False)
    pixels = evaluate(nn.Flatten(), data, args)  # normalised like the backbone's input, then flattened
    results: dict[str, Any] = {"random init (seed 0)": {**evaluate(build_model(args, args.batch_size).backbone,
                                                                   data, args), "minutes": 0.0}}
    for name, devices, seed in [("1 process, seed 0", 1, 0), (f"{args.devices} DDP processes, seed 0", args.devices, 0),
                                ("1 process, seed 1", 1, 1)]:
        model, minutes = train(args, devices, seed)
        results[name] = {**evaluate(model.backbone, data, args), "minutes": minutes, "devices": devices, "seed": seed}
        print(f"{name}: {results[name]}", flush=True)
    single, ddp, other = (results[key] for key in list(results)[1:])
    lines = ["| run | kNN top-1 | linear probe top-1 | train minutes |", "| --- | --- | --- | --- |"]
    lines += [f"| {name} | {r['knn_top1']:.4f} | {r['linear_top1']:.4f} | {r['minutes']:.2f} |"
              for name, r in results.items()]
    lines.append(f"| raw pixels (reference) | {pixels['knn_top1']:.4f} | {pixels['linear_top1']:.4f} | - |")
    for metric in ("knn_top1", "linear_top1"):
        lines.append(f"| {metric}: DDP - single {ddp[metric] - single[metric]:+.4f}; "
                     f"seed spread {other[metric] - single[metric]:+.4f} | | | |")
    print("\n".join(lines))
    if args.json:
        report = {"date": str(date.today()), "args": {k: v for k, v in vars(args).items()},
                  "torch": torch.__version__, "lightning": pl.__version__, "machine": platform.platform(),
                  "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor(),
                  "results": results, "raw_pixel_knn_top1": pixels["knn_top1"],
                  "raw_pixel_linear_top1": pixels["linear_top1"], "table": lines}
        with open(args.json, "w") as file:
            json.dump(report, file, indent=2, default=str)


if __name__ == "__main__":
    main()
