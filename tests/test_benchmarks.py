"""The benchmark scripts' quick modes run on the CPU, so they cannot rot."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_methods_benchmark_quick(tmp_path):
    result = subprocess.run([sys.executable, "benchmarks/methods.py", "--quick", "--json", str(tmp_path / "r.json")],
                            cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "WANDB_MODE": "offline"})
    assert result.returncode == 0, result.stderr[-2000:]
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert len(table) == 5 and all(name in result.stdout for name in ("simclr", "moco", "simsiam"))
    assert (tmp_path / "r.json").is_file()
