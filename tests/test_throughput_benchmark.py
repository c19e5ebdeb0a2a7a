"""benchmarks/throughput.py --quick runs on the CPU in CI, so the benchmark cannot rot (no timing asserts)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ["simclr", "moco_v2", "simsiam", "byol"]
PIPELINES = ["ceiling"] * 3 + ["ours"] * 3 + ["lightly", "kornia"] + ["aug-only ours", "aug-only kornia"] * 4


def test_throughput_benchmark_quick(tmp_path):
    result = subprocess.run([sys.executable, "benchmarks/throughput.py", "--quick", "--json", str(tmp_path / "t.json")],
                            cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "WANDB_MODE": "offline"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "torch " + __import__("torch").__version__ in result.stdout and "CPU" in result.stdout
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert table[0] == "| pipeline | method | img/s | x ceiling | x lightly | note |"
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table[2:]]
    assert [row[0] for row in rows] == PIPELINES
    assert [row[1] for row in rows[:6]] == ["simclr", "moco", "simsiam"] * 2
    assert [row[1] for row in rows[8:]] == [preset for preset in PRESETS for _ in range(2)]  # ours, kornia
    assert all(row[3] == "1.00" for row in rows[:3]) and rows[6][4] == "1.00"

    report = json.loads((tmp_path / "t.json").read_text())
    assert {"date", "device", "torch", "data", "args", "rows", "aug_speedup_vs_kornia"} <= set(report)
    assert report["args"]["quick"] and report["args"]["backbone"] == "tiny_cnn" and report["args"]["batch_size"] == 32
    assert [row["pipeline"] for row in report["rows"]] == PIPELINES
    for row in report["rows"]:
        assert {"pipeline", "method", "img_per_s", "vs_ceiling", "vs_lightly"} <= set(row)
        if row["pipeline"] in ("ceiling", "ours", "lightly", "aug-only ours"):
            assert row["img_per_s"] > 0 and row["vs_ceiling"] > 0 and row["vs_lightly"] > 0
    try:
        import kornia  # noqa: F401
    except ImportError:
        assert "kornia not installed" in result.stdout and report["aug_speedup_vs_kornia"] is None
    else:
        assert report["aug_speedup_vs_kornia"] > 0
        assert sorted(report["aug_speedup_vs_kornia_by_preset"]) == sorted(PRESETS)
