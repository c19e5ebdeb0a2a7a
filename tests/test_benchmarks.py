"""The benchmark scripts' quick modes run on the CPU, so they cannot rot."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_methods_benchmark_quick(tmp_path):
    result = subprocess.run([sys.executable, "benchmarks/methods.py", "--quick", "--json", str(tmp_path / "r.json")],
                            cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "WANDB_MODE": "offline"})
    assert result.returncode == 0, result.stderr[-2000:]
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    # header, separator, one row per method, the raw-pixel reference row
    methods = ["simclr", "moco", "simsiam", "byol", "barlow_twins", "vicreg", "dino", "mae"]
    assert len(table) == 3 + len(methods), result.stdout[-2000:]
    assert [line.split("|")[1].strip() for line in table[2:]] == methods + ["raw pixels (reference)"]
    assert all(line.count(" -> ") == 3 and line.count("±") == 2 for line in table[2:-1])
    report = json.loads((tmp_path / "r.json").read_text())
    assert 0.0 <= report["raw_pixel_knn_top1"] <= 1.0
    for row in report["rows"]:
        for stage in ("init", "trained"):
            scores = row[stage]
            assert set(scores) == {"knn_top1", "linear_top1", "fewshot_5w1s", "fewshot_ci95"}
            assert all(0.0 <= scores[key] <= 1.0 for key in ("knn_top1", "linear_top1", "fewshot_5w1s"))
        assert row["init"] != row["trained"]  # the trained backbone is not the random-init one


def _run_quick(script: str, tmp_path: Path) -> tuple[str, dict]:
    result = subprocess.run([sys.executable, script, "--quick", "--json", str(tmp_path / "r.json")],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout, json.loads((tmp_path / "r.json").read_text())


def test_knn_speed_benchmark_quick(tmp_path):
    stdout, report = _run_quick("benchmarks/knn_speed.py", tmp_path)
    assert [row["classes"] for row in report["rows"]] == [10, 1000]
    for row in report["rows"]:
        assert row["ours_s"] > 0 and row["lightly_s"] > 0
        assert row["top1_agreement"] > 0.99, "ours and lightly's knn_predict must predict the same classes"
    assert stdout.count("\n| ") == 4, stdout  # header, separator, one row per class count


def test_ddp_accuracy_benchmark_quick(tmp_path):
    stdout, report = _run_quick("benchmarks/ddp_accuracy.py", tmp_path)
    results = report["results"]
    assert list(results) == ["random init (seed 0)", "1 process, seed 0", "2 DDP processes, seed 0",
                             "1 process, seed 1"]
    assert all(0.0 <= r["knn_top1"] <= 1.0 and 0.0 <= r["linear_top1"] <= 1.0 for r in results.values())
    assert "DDP - single" in stdout
    for key in ("raw_pixel_knn_top1", "raw_pixel_linear_top1"):  # the baseline beside the figures (issue 23)
        assert isinstance(report[key], float) and 0.0 <= report[key] <= 1.0
    assert "| raw pixels (reference) |" in stdout


def test_weight_decay_groups_benchmark_quick(tmp_path):
    stdout, report = _run_quick("benchmarks/weight_decay_groups.py", tmp_path)
    (row,) = report["rows"]
    assert 0.0 <= row["one_group_knn_top1"] <= 1.0 and 0.0 <= row["two_groups_knn_top1"] <= 1.0
    assert isinstance(row["raw_pixel_knn_top1"], float) and 0.0 <= row["raw_pixel_knn_top1"] <= 1.0
    assert stdout.count("\n| ") == 3, stdout  # header, separator, one row per seed


@pytest.mark.skipif(not (ROOT.parent / "shared" / "data" / "imagenette-224" / "imagenette-224.tar").is_file(),
                    reason="needs ../shared/data/imagenette-224")
def test_stream_learning_benchmark_quick(tmp_path):
    """The learning check from shards (issue 13) runs end to end: prepare, stream, kNN before and after."""
    stdout, report = _run_quick("benchmarks/stream_learning.py", tmp_path)
    assert "kNN top-1 at init" in stdout
    assert report["knn_history"][0][0] == -1 and report["epochs"] == 1
    assert 0.0 <= report["knn_top1_at_init"] <= 1.0 and 0.0 <= report["knn_top1_after"] <= 1.0
    assert isinstance(report["raw_pixel_knn_top1"], float) and 0.0 <= report["raw_pixel_knn_top1"] <= 1.0
    assert "raw pixels (same kNN)" in stdout
    mix = report["batch_mix"]  # classes per batch of the recipes' loader beside a uniform shuffle's (issue 23)
    assert "classes per batch of 8" in stdout and mix["classes"] == 3 and mix["batches"] > 0
    assert 1 <= mix["classes_per_batch"] <= 3 and 1 < mix["uniform_classes_per_batch"] <= 3
