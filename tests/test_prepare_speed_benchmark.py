"""``benchmarks/prepare_speed.py --quick`` runs (a few hundred images), so the benchmark cannot rot."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_prepare_speed_benchmark_quick(tmp_path):
    result = subprocess.run([sys.executable, "benchmarks/prepare_speed.py", "--quick", "--start_method", "fork",
                             "--json", str(tmp_path / "r.json"), "--work_dir", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    report = json.loads((tmp_path / "r.json").read_text())
    assert len(table) == 2 + len(report["rows"]) and report["rows"][-1]["source"].startswith("synthetic")
    for row in report["rows"]:
        assert row["written"] == row["files"] and row["skipped"] == 0
        assert row["images_per_s"] > 0 and 0 < row["mb_on_disk"]
    assert report["rows"][-1]["mb_on_disk"] < report["rows"][-1]["mb_in"]  # 500 px re-encoded at 256 px
