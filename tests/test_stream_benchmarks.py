"""``benchmarks/stream_memory.py --quick`` and ``benchmarks/input_pipeline.py --quick`` run end to end on a few
Imagenette images, so these benchmarks (and input_pipeline's GPU model-ceiling path) cannot rot. No timings
are asserted; the checks are on what was counted."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IMAGENETTE_TAR = ROOT.parent / "shared" / "data" / "imagenette-224" / "imagenette-224.tar"

pytestmark = pytest.mark.skipif(not IMAGENETTE_TAR.is_file(), reason=f"needs {IMAGENETTE_TAR}")


def run_quick(script: str, tmp_path: Path) -> tuple[list[str], dict]:
    """(table lines, JSON) of ``script --quick`` in a subprocess writing into ``tmp_path``."""
    result = subprocess.run([sys.executable, f"benchmarks/{script}", "--quick", "--work_dir", str(tmp_path / "work"),
                             "--json", str(tmp_path / "r.json")], cwd=ROOT, capture_output=True, text=True,
                            timeout=900, env={**os.environ, "WANDB_MODE": "offline"})
    assert result.returncode == 0, result.stderr[-3000:]
    return [line for line in result.stdout.splitlines() if line.startswith("| ")], json.loads(
        (tmp_path / "r.json").read_text())


def test_stream_memory_quick(tmp_path):
    table, report = run_quick("stream_memory.py", tmp_path)
    rows = {(r["path"], r["data"]): r for r in report["rows"]}
    assert set(rows) == {(p, d) for p in ("stream", "memory") for d in ("whole", "quarter")}
    assert len(table) == 2 + len(rows)
    for (path, data), row in rows.items():
        # one epoch of the loader: every full batch of the files (drop_last), in both paths
        assert row["images_seen"] == row["files"] // report["batch_size"] * report["batch_size"], (path, data)
        assert 0 < row["peak_pss_tree_mb"] <= row["peak_rss_tree_mb"]
        assert row["peak_rss_main_mb"] <= row["peak_rss_tree_mb"]
    assert rows["stream", "quarter"]["files"] == rows["memory", "quarter"]["files"] < rows["stream", "whole"]["files"]
    for path in ("stream", "memory"):
        expected = rows[path, "whole"]["peak_pss_tree_mb"] / rows[path, "quarter"]["peak_pss_tree_mb"]
        assert report["whole_over_quarter"][path] == pytest.approx(expected)


def test_input_pipeline_quick(tmp_path):
    table, report = run_quick("input_pipeline.py", tmp_path)
    speeds = {r["pipeline"]: r["images_per_s"] for r in report["rows"]}
    assert set(speeds) == {"ours", "lightly", "decode torchvision", "decode PIL", "ceiling"}
    assert all(speed > 0 for speed in speeds.values())
    assert len(table) == 2 + len(speeds)
    assert report["ours_over_lightly"] == pytest.approx(speeds["ours"] / speeds["lightly"])
    assert report["torchvision_over_pil_decode"] == pytest.approx(speeds["decode torchvision"] / speeds["decode PIL"])
    assert "resnet18" in report["ceiling"] and report["device"] == "cpu" and report["threads"] >= 1
