"""Learning from shards (issue 13): SimCLR streamed from prepared Imagenette for a few CPU minutes vs random init.

Runs the real recipe path (``ssl_siamese.cli.main``, as ``python -m ssl_siamese.recipes.simclr``) with
``--data.dataset stream`` on a shard folder prepared from Imagenette (real 224 px photos, written with the
shorter side capped by ``--short_side``), and prints the kNN top-1 on the val split of the SAME backbone at
initialisation (the recipe measures it before training) and after ``--minutes`` of training, beside the
raw pixels' kNN (the recipe's baseline: same k, temperature, bank and queries). First it
reads one epoch of the recipes' streaming loader at ``--mix_batch_size`` and prints the mean number of
classes per batch beside a uniform shuffle's exact expectation (issue 23: class-sorted shards gave 1.25 of
Imagenette's 10 classes per batch of 64).

    # CPU: prepare Imagenette at 80 px once (about 1 min), then 10 minutes of SimCLR at 64 px
    python benchmarks/stream_learning.py --minutes 10 --json stream_learning.json
    # smoke test (what CI runs): 60 photos, tiny_cnn, a few steps
    python benchmarks/stream_learning.py --quick
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from ssl_siamese.cli import main
from ssl_siamese.data import SSLDataModule
from ssl_siamese.data.mixing import distinct_classes_per_batch, uniform_distinct_classes
from ssl_siamese.data.prepare import read_shards
from ssl_siamese.methods.simclr import SimCLR

ROOT = Path(__file__).resolve().parents[1]
TAR = ROOT.parent / "shared" / "data" / "imagenette-224" / "imagenette-224.tar"


def unpack(tar_path: Path, target: Path, per_class: int | None) -> Path:
    """Imagenette's train/ and val/ (all images, or ``per_class`` train and a third as many val per class, 3 classes)."""
    counts: dict[str, int] = {}
    with tarfile.open(tar_path) as tar:
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 3:
                continue
            if per_class is not None:
                key = f"{parts[0]}/{parts[1]}"
                limit = per_class if parts[0] == "train" else max(2, per_class // 3)
                if counts.get(key, 0) >= limit or len({k.split("/")[1] for k in counts} | {parts[1]}) > 3:
                    continue
                counts[key] = counts.get(key, 0) + 1
            tar.extract(member, target, filter="data")
    return target


def prepared(args: argparse.Namespace, work: Path) -> Path:
    if args.shards:
        return Path(args.shards)
    if not TAR.is_file():
        raise SystemExit(f"Imagenette not found at {TAR}; pass --shards FOLDER (prepared from any labelled photos).")
    source = unpack(TAR, work / "imagenette", 20 if args.quick else None)
    out = work / "shards"
    subprocess.run([sys.executable, "-m", "ssl_siamese.data.prepare", str(source), str(out), "--short_side",
                    str(args.short_side), "--num_workers", str(args.workers), "--start_method", "fork"], check=True)
    return out


def batch_mix(shards: Path, batch_size: int, workers: int) -> dict[str, Any]:
    """Classes per batch over one epoch of the recipes' streaming loader vs a uniform shuffle (exact)."""
    datamodule = SSLDataModule("stream", data_dir=str(shards), batch_size=batch_size, num_workers=workers)
    datamodule.setup("fit")
    distinct = distinct_classes_per_batch(datamodule.train_dataloader())
    counts = Counter(int(sample["label"]) for sample in read_shards(shards, "train"))
    uniform, sd = uniform_distinct_classes(list(counts.values()), batch_size)
    mix = {"batch_size": batch_size, "classes": len(counts), "batches": len(distinct),
           "classes_per_batch": sum(distinct) / len(distinct), "single_class_batches": distinct.count(1),
           "uniform_classes_per_batch": uniform, "uniform_sd": sd}
    print(f"classes per batch of {batch_size}: {mix['classes_per_batch']:.2f} of {len(counts)} over {len(distinct)} "
          f"batches ({mix['single_class_batches']} of a single class); a uniform shuffle: {uniform:.2f} ± {sd:.2f}")
    return mix


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="stream_learning_") as tmp:
        shards = prepared(args, Path(tmp))
        mix = batch_mix(shards, 8 if args.quick else args.mix_batch_size, args.workers)
        if args.quick:
            model = ["--model.backbone", "tiny_cnn", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3",
                     "--data.batch_size", "16", "--data.image_size", "32"]
        else:
            model = ["--model.backbone", args.backbone, "--trainer.max_epochs", "1000",
                     "--trainer.max_time", f"00:00:{args.minutes:02d}:00", "--data.batch_size", str(args.batch_size),
                     "--data.image_size", str(args.image_size), "--data.knn_bank_subset", str(args.bank),
                     "--data.val_subset", str(args.queries)]
        start = time.perf_counter()
        summary = main(SimCLR, "simclr", model + [
            "--data.dataset", "stream", "--data.data_dir", str(shards), "--data.num_workers", str(args.workers),
            "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false", "--log_to", "none",
            "--pictures_every_n_epochs", "0", "--seed_everything", "0", "--out", str(Path(tmp) / "run")])
        seconds = time.perf_counter() - start
    history = summary["knn_history"]
    at_init = next(measured[1] for measured in history if measured[0] == -1)  # (epoch, top1, top5, ...)
    pixels = summary["knn_pixels"].top1 if summary["knn_pixels"] is not None else None
    result = {"backbone": "tiny_cnn" if args.quick else args.backbone, "image_size": 32 if args.quick else args.image_size,
              "minutes": args.minutes, "epochs": summary["epochs"], "seconds": seconds,
              "knn_top1_at_init": at_init, "knn_top1_after": history[-1][1], "knn_history": history,
              "raw_pixel_knn_top1": pixels,
              "img_per_s": summary.get("img_per_s"), "batch_mix": mix}
    print(f"| backbone | px | epochs | kNN top-1 at init | kNN top-1 after | difference | raw pixels (same kNN) |\n"
          f"|---|---|---|---|---|---|---|\n| {result['backbone']} | {result['image_size']} | {result['epochs']} | "
          f"{at_init:.4f} | {result['knn_top1_after']:.4f} | {result['knn_top1_after'] - at_init:+.4f} | "
          f"{'-' if pixels is None else f'{pixels:.4f}'} |")
    return result


def main_cli(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", help="an already prepared shard folder (default: prepare Imagenette)")
    parser.add_argument("--short_side", type=int, default=80)
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--bank", type=int, default=5000, help="kNN bank images (training split)")
    parser.add_argument("--queries", type=int, default=2000, help="kNN query images (val split)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--mix_batch_size", type=int, default=64, help="batch size of the classes-per-batch figure")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args(argv)
    result = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main_cli()
