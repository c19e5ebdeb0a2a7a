"""benchmarks/shard_engines.py --quick runs in the suite, so the engine comparison cannot rot (no timing asserts).

The reference is the ImageFolder listing itself: each engine must hand back every index of the chosen images
exactly once per epoch, with the label ImageFolder gives its file.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TAR = ROOT.parent / "shared" / "data" / "imagenette-224" / "imagenette-224.tar"


@pytest.mark.skipif(not TAR.exists(), reason=f"{TAR} missing")
def test_shard_engines_quick(tmp_path):
    result = subprocess.run([sys.executable, "benchmarks/shard_engines.py", "--quick", "--json", str(tmp_path / "s.json")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| engine | prepare img/s | MB on disk | read img/s raw | read img/s decoded |")

    report = json.loads((tmp_path / "s.json").read_text())
    assert report["images"] == 300 and report["args"]["workers"] == 1
    rows = {row["engine"]: row for row in report["rows"]}
    assert list(rows) == ["litdata", "webdataset", "mosaicml-streaming"]
    measured = [row for row in rows.values() if "skipped" not in row]
    expected = {"litdata"} | ({"webdataset"} if importlib.util.find_spec("webdataset") else set())  # webdataset: optional
    assert expected <= {row["engine"] for row in measured}
    for row in measured:
        for mode in ("raw", "decoded"):
            read = row[mode]
            assert read["read"] == 300 and read["missing"] == read["duplicates"] == read["unknown"] == 0
            assert read["wrong_labels"] == 0 and read["bad_images"] == 0 and read["every_index_once"]
        ranks = row["multi_rank_check"]  # two ranks together read one epoch (how evenly is measured, not asserted)
        assert ranks["one_epoch"] and ranks["duplicates"] == ranks["missing"] == 0 and sum(ranks["per_rank"]) == 300
        assert row["megabytes"] > 0 and row["prepare_img_per_s"] > 0 and row["vs_litdata"]["decoded"] > 0
    assert rows["litdata"]["vs_litdata"] == {"prepare": 1.0, "raw": 1.0, "decoded": 1.0}
    resume = rows["litdata"]["resume_check"]
    assert resume["ok"] and resume["duplicates"] == resume["missing"] == 0
    assert resume["before_save"] > 0 and resume["before_save"] + resume["after_load"] == 300
