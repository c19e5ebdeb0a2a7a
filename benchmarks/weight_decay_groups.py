"""Weight decay on every parameter vs. none on biases and norm parameters (issue 12 item 10), one table.

Each seed trains the same SimCLR run twice through the real recipe path (``ssl_siamese.cli.main``), once
with the former single parameter group (weight decay on everything) and once with the library's
``SiameseModule.parameter_groups`` (biases and BatchNorm weights/biases without decay, so lightly's LARS
leaves them unscaled too), and prints the kNN top-1 of each with the difference, beside the raw pixels' kNN
(the recipe's baseline: same k, temperature, bank and queries). Several seeds, because
one seed's difference is smaller than the seed-to-seed spread of this short run.

    # CPU: the learning test's run (recipes/quickstart.yaml, tiny_cnn, 16k Fashion-MNIST images, 4 epochs)
    python benchmarks/weight_decay_groups.py --data_dir ../shared/data --seeds 0 1 2
    # CPU smoke test (what CI runs): synthetic data, seconds
    python benchmarks/weight_decay_groups.py --quick
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from ssl_siamese.cli import main
from ssl_siamese.methods.base import SiameseModule
from ssl_siamese.methods.simclr import SimCLR

ROOT = Path(__file__).resolve().parents[1]


def one_group(module: SiameseModule) -> list[dict[str, Any]]:
    """The former grouping: every trainable parameter with the same weight decay."""
    return [{"params": [p for p in module.parameters() if p.requires_grad],
             "weight_decay": module.hparams.weight_decay}]


class OneGroupSimCLR(SimCLR):
    """SimCLR with the former single parameter group (nothing else differs)."""

    parameter_groups = one_group


def run(model_class: type[SiameseModule], seed: int, out: Path,
        args: argparse.Namespace) -> tuple[float, float | None]:
    """The last kNN top-1 of the run and the raw pixels' (None when the recipe skipped the baseline)."""
    if args.quick:
        data = ["--model.backbone", "tiny_cnn", "--data.dataset", "synthetic", "--data.batch_size", "32",
                "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "4", "--data.val_subset", "64",
                "--data.knn_bank_subset", "256"]
    else:
        data = ["--config", str(ROOT / "recipes" / "quickstart.yaml"), "--data.data_dir", args.data_dir,
                "--data.download", "false", "--trainer.max_epochs", str(args.epochs)]
    summary = main(model_class, "simclr", data + [
        "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false", "--log_to", "none",
        "--pictures_every_n_epochs", "0", "--online_probe", "false", "--seed_everything", str(seed),
        "--out", str(out)])
    pixels = summary["knn_pixels"]
    return float(summary["knn_history"][-1][1]), (float(pixels.top1) if pixels is not None else None)


def main_cli(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default="./data", help="folder holding fashion-mnist/")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="synthetic data, a few steps (smoke test)")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args(argv)
    seeds = args.seeds[:1] if args.quick else args.seeds
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for seed in seeds:
            before, _ = run(OneGroupSimCLR, seed, Path(folder) / f"one-{seed}", args)
            after, pixels = run(SimCLR, seed, Path(folder) / f"two-{seed}", args)  # same seed: same bank, queries
            rows.append({"seed": seed, "one_group_knn_top1": before, "two_groups_knn_top1": after,
                         "raw_pixel_knn_top1": pixels})
    print("\n| seed | one group (decay on all) | two groups (no decay on biases, BN) | difference | raw pixels |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        difference = row["two_groups_knn_top1"] - row["one_group_knn_top1"]
        pixels = row["raw_pixel_knn_top1"]
        print(f"| {row['seed']} | {row['one_group_knn_top1']:.4f} | {row['two_groups_knn_top1']:.4f} | "
              f"{difference:+.4f} | {'-' if pixels is None else f'{pixels:.4f}'} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows}, indent=2))
    return {"rows": rows}


if __name__ == "__main__":
    main_cli()
