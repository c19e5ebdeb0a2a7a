"""Train SimCLR, MoCo and SimSiam through the real recipe path and print a table.

Each method runs ``ssl_siamese.recipes.<method>`` (LightningCLI, on-device augmentation, kNN callback)
with the same data and budget; the table gives kNN top-1 at initialisation and at the end, training
throughput and wall time, and the ratio of each method's throughput to SimCLR's in the same run.

    # GPU: ResNet-18 (CIFAR stem) on Fashion-MNIST, 10 epochs per method
    python benchmarks/methods.py --data_dir .data/fashion-mnist --epochs 10 --json $OUT/methods.json
    # CPU smoke test (what CI runs): tiny ConvNet on synthetic data
    python benchmarks/methods.py --quick
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from datetime import date

import torch

from ssl_siamese.cli import main
from ssl_siamese.methods import MoCo, SimCLR, SimSiam

METHODS = {"simclr": SimCLR, "moco": MoCo, "simsiam": SimSiam}


def run(name: str, args: argparse.Namespace, out: str) -> dict:
    if args.quick:
        cli = ["--model.backbone", "tiny_cnn", "--data.dataset", "synthetic", "--data.batch_size", "64",
               "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "8", "--trainer.accelerator", "cpu",
               "--data.knn_bank_subset", "512", "--data.val_subset", "128"]
        if name == "moco":
            cli += ["--model.queue_size", "512"]
    else:
        cli = ["--config", f"recipes/fashion_mnist_{name}.yaml", "--data.data_dir", args.data_dir,
               "--data.download", "false", "--trainer.max_epochs", str(args.epochs),
               "--trainer.check_val_every_n_epoch", str(args.epochs)]
    cli += ["--out", f"{out}/{name}", "--log_to", "csv", "--trainer.enable_progress_bar", "false"]
    summary = main(METHODS[name], name, cli)
    history = summary["knn_history"]
    return {"method": name, "knn_init": history[0][1], "knn_final": history[-1][1],
            "epochs": summary["epochs"], "img_per_s": summary["img_per_s"],
            "fit_minutes": summary["fit_seconds"] / 60}


def main_cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CPU smoke test on synthetic data")
    parser.add_argument("--data_dir", default="./data/fashion-mnist")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--json", default=None, help="write full results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        rows = [run(name, args, out) for name in args.methods]
    reference = next((r["img_per_s"] for r in rows if r["method"] == "simclr"), None)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    print(f"\n{date.today()}  {device}  torch {torch.__version__}")
    print("| method | epochs | kNN top-1 init | kNN top-1 final | img/s | vs SimCLR | fit minutes |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        ratio = f"{r['img_per_s'] / reference:.2f}" if reference and r["img_per_s"] else "-"
        speed = f"{r['img_per_s']:,.0f}" if r["img_per_s"] else "-"
        print(f"| {r['method']} | {r['epochs']} | {r['knn_init']:.4f} | {r['knn_final']:.4f} | {speed} | "
              f"{ratio} | {r['fit_minutes']:.2f} |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"device": device, "torch": torch.__version__, "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main_cli()
