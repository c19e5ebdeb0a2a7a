"""Text retrieval on Debian's package descriptions: BM25, the hashed-bag encoder trained from scratch, and their hybrid, in ONE run.

The query is a package's short description, the document its long description, searched among all
held-out documents. The split (``--data.test_fraction``, whole source packages and identical texts kept on
one side) and the training are the text_siamese recipe's, run through its entry point with
``recipes/text_siamese_debian.yaml`` (``encoder: hashed``); the table gives BM25 (``bm25s``), the dense
encoder and the reciprocal-rank fusion of both (Recall@1/10, MRR@10, nDCG@10), the training's wall and
process CPU time, and whether the issue's targets hold: the dense encoder above BM25 on Recall@1, Recall@10
and MRR@10, the hybrid at Recall@1 >= 0.80, at most 15 CPU minutes of training.

    python benchmarks/text_retrieval.py --json out/text_retrieval.json      # the whole corpus
    python benchmarks/text_retrieval.py --quick                             # 3,000 pairs, seconds (CI)
    python benchmarks/text_retrieval.py --set model.lr=0.02 --set trainer.max_epochs=8   # any recipe option

Needs apt's English descriptions (``apt-get update -o Acquire::Languages=en``, as root).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "recipes" / "text_siamese_debian.yaml"
METRICS = ("recall@1", "recall@10", "mrr@10", "ndcg@10")
QUICK = {"data.max_pairs": "3000", "data.test_fraction": "0.2", "data.batch_size": "256", "model.dim": "64",
         "model.buckets": "16384", "trainer.max_epochs": "3"}
CPU_BUDGET_S = 15 * 60


def cpu_seconds() -> float:
    """Process CPU time (user + system, all threads) of this process and its finished children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def recipe_args(out: Path, options: dict[str, str]) -> list[str]:
    args = ["--config", str(CONFIG), "--out", str(out), "--log_to", "none",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_checkpointing", "false"]
    for key, value in options.items():
        args += [f"--{key}", value]
    return args


def targets(rows: dict[str, dict[str, float]], fit_cpu: float) -> dict[str, bool]:
    """The issue's bar: dense above BM25 on R@1, R@10 and MRR@10; hybrid R@1 >= 0.80; training <= 15 CPU min."""
    return {"dense_beats_bm25": all(rows["dense"][m] > rows["bm25"][m] for m in METRICS[:3]),
            "hybrid_recall@1>=0.80": rows["hybrid_rrf"]["recall@1"] >= 0.80,
            "training<=15_cpu_min": fit_cpu <= CPU_BUDGET_S}


def table(rows: dict[str, dict[str, float]]) -> str:
    lines = ["| method | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(f"{rows[name][m]:.3f}" for m in METRICS) + " |"
              for name in ("bm25", "dense_at_init", "dense", "hybrid_rrf") if name in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3,000 pairs, a small model, 3 epochs (CI smoke test).")
    parser.add_argument("--set", action="append", default=[], metavar="GROUP.OPTION=VALUE",
                        help="Override a recipe option, e.g. model.lr=0.02 (repeatable).")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: the CPU time is the work itself, not the spinning of idle threads).")
    parser.add_argument("--out", default=None, help="Recipe output folder (default: a temporary folder).")
    parser.add_argument("--json", default=None, help="Write the results here.")
    args = parser.parse_args(argv)
    options = dict(QUICK) if args.quick else {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set takes GROUP.OPTION=VALUE, got {item!r}")
        options[key] = value
    torch.set_num_threads(args.threads)

    from ssl_siamese.recipes import text_siamese

    started, started_cpu = time.perf_counter(), cpu_seconds()
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(args.out) if args.out else Path(scratch) / "run"
        results = text_siamese.main(recipe_args(out, options))
    wall, cpu = time.perf_counter() - started, cpu_seconds() - started_cpu
    rows = results["metrics"]
    report = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "quick": args.quick,
              "config": str(CONFIG.relative_to(REPO)), "overrides": options, "threads": args.threads,
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
              "train_pairs": results["train_pairs"], "queries": results["queries"],
              "documents": results["documents"], "steps": results["steps"], "metrics": rows,
              "fit_wall_s": results["fit_seconds"], "fit_cpu_s": results["fit_cpu_seconds"],
              "total_wall_s": wall, "total_cpu_s": cpu, "split": results["split"]}
    report["targets"] = targets(rows, report["fit_cpu_s"])
    print(f"\n{report['queries']} held-out queries, {report['documents']} held-out documents, "
          f"{report['train_pairs']} training pairs, {report['steps']} steps; {args.threads} torch thread(s)")
    print(table(rows))
    print(f"training: {report['fit_wall_s']:.0f} s wall, {report['fit_cpu_s']:.0f} s CPU; whole run: {wall:.0f} s wall, "
          f"{cpu:.0f} s CPU")
    print("targets: " + ", ".join(f"{name} {'yes' if ok else 'NO'}" for name, ok in report["targets"].items()))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
