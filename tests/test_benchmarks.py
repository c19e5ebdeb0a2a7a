"""The benchmark scripts' quick modes run on the CPU, so they cannot rot.

The scripts of the selected tests run one after another in ONE interpreter (``RUNNER``), which pays the ~6 s of
importing Lightning once instead of once per script; each script still runs as ``__main__`` with its own
``sys.argv``, and its stdout, stderr and outcome are kept apart for its test.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IMAGENETTE = ROOT.parent / "shared" / "data" / "imagenette-224" / "imagenette-224.tar"
SCRIPTS = {"test_methods_benchmark_quick": "methods.py", "test_knn_speed_benchmark_quick": "knn_speed.py",
           "test_ddp_accuracy_benchmark_quick": "ddp_accuracy.py",
           "test_weight_decay_groups_benchmark_quick": "weight_decay_groups.py",
           "test_stream_learning_benchmark_quick": "stream_learning.py"}
# Runs benchmarks/<script> --quick --json <folder>/<script>.json for each script named in argv[2:], as
# ``python benchmarks/<script>`` would, writing <script>.out, .err and .status (``ok`` or what went wrong); the
# process-wide settings a script may change (torch threads, the multiprocessing start method, warning filters)
# are put back before the next one.
RUNNER = """
import contextlib, multiprocessing, runpy, sys, traceback, warnings
from pathlib import Path
import torch
folder, scripts = Path(sys.argv[1]), sys.argv[2:]
for script in scripts:
    threads, start = torch.get_num_threads(), multiprocessing.get_start_method(allow_none=True)
    sys.argv, sys.path[0] = [f"benchmarks/{script}", "--quick", "--json", str(folder / f"{script}.json")], "benchmarks"
    status = "ok"
    with open(folder / f"{script}.out", "w") as out, open(folder / f"{script}.err", "w") as err, \\
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        try:
            runpy.run_path(f"benchmarks/{script}", run_name="__main__")
        except SystemExit as exit:
            status = "ok" if exit.code in (0, None) else f"exit status {exit.code}"
        except BaseException:
            traceback.print_exc()
            status = "raised (traceback in stderr)"
    (folder / f"{script}.status").write_text(status)
    torch.set_num_threads(threads)
    multiprocessing.set_start_method(start, force=True)
"""


@pytest.fixture(scope="module")
def quick_runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of the quick runs of this module's selected tests' scripts, all in one subprocess."""
    folder = tmp_path_factory.mktemp("quick")
    scripts = [SCRIPTS[item.originalname] for item in request.session.items
               if item.module is request.module and item.originalname in SCRIPTS]
    if not IMAGENETTE.is_file():
        scripts = [script for script in scripts if script != "stream_learning.py"]
    result = subprocess.run([sys.executable, "-c", RUNNER, str(folder), *scripts], cwd=ROOT, capture_output=True,
                            text=True, timeout=1800, env={**os.environ, "WANDB_MODE": "offline"})
    (folder / "runner.err").write_text(f"exit status {result.returncode}\n{result.stderr}")
    return folder


def quick(folder: Path, script: str) -> tuple[str, dict]:
    """(stdout, JSON report) of ``benchmarks/<script> --quick``; fails naming the script when it did not finish."""
    status = folder / f"{script}.status"
    if not status.is_file():  # the runner itself died (during this script or before it)
        pytest.fail(f"benchmarks/{script} --quick did not finish: {(folder / 'runner.err').read_text()[-3000:]}")
    err = (folder / f"{script}.err").read_text()
    assert status.read_text() == "ok", f"benchmarks/{script} --quick: {status.read_text()}\n{err[-3000:]}"
    return (folder / f"{script}.out").read_text(), json.loads((folder / f"{script}.json").read_text())


def test_methods_benchmark_quick(quick_runs):
    stdout, report = quick(quick_runs, "methods.py")
    table = [line for line in stdout.splitlines() if line.startswith("| ")]
    # header, separator, one row per method, the raw-pixel reference row
    methods = ["simclr", "moco", "simsiam", "byol", "barlow_twins", "vicreg", "dino", "mae"]
    assert len(table) == 3 + len(methods), stdout[-2000:]
    assert [line.split("|")[1].strip() for line in table[2:]] == methods + ["raw pixels (reference)"]
    assert all(line.count(" -> ") == 3 and line.count("±") == 2 for line in table[2:-1])
    assert 0.0 <= report["raw_pixel_knn_top1"] <= 1.0
    for row in report["rows"]:
        for stage in ("init", "trained"):
            scores = row[stage]
            assert set(scores) == {"knn_top1", "linear_top1", "fewshot_5w1s", "fewshot_ci95"}
            assert all(0.0 <= scores[key] <= 1.0 for key in ("knn_top1", "linear_top1", "fewshot_5w1s"))
        assert row["init"] != row["trained"]  # the trained backbone is not the random-init one


def test_knn_speed_benchmark_quick(quick_runs):
    stdout, report = quick(quick_runs, "knn_speed.py")
    assert [row["classes"] for row in report["rows"]] == [10, 1000]
    for row in report["rows"]:
        assert row["ours_s"] > 0 and row["lightly_s"] > 0
        assert row["top1_agreement"] > 0.99, "ours and lightly's knn_predict must predict the same classes"
    assert stdout.count("\n| ") == 4, stdout  # header, separator, one row per class count


def test_ddp_accuracy_benchmark_quick(quick_runs):
    stdout, report = quick(quick_runs, "ddp_accuracy.py")
    results = report["results"]
    assert list(results) == ["random init (seed 0)", "1 process, seed 0", "2 DDP processes, seed 0",
                             "1 process, seed 1"]
    assert all(0.0 <= r["knn_top1"] <= 1.0 and 0.0 <= r["linear_top1"] <= 1.0 for r in results.values())
    assert "DDP - single" in stdout
    for key in ("raw_pixel_knn_top1", "raw_pixel_linear_top1"):  # the baseline beside the figures (issue 23)
        assert isinstance(report[key], float) and 0.0 <= report[key] <= 1.0
    assert "| raw pixels (reference) |" in stdout


def test_weight_decay_groups_benchmark_quick(quick_runs):
    stdout, report = quick(quick_runs, "weight_decay_groups.py")
    (row,) = report["rows"]
    assert 0.0 <= row["one_group_knn_top1"] <= 1.0 and 0.0 <= row["two_groups_knn_top1"] <= 1.0
    assert isinstance(row["raw_pixel_knn_top1"], float) and 0.0 <= row["raw_pixel_knn_top1"] <= 1.0
    assert stdout.count("\n| ") == 3, stdout  # header, separator, one row per seed


@pytest.mark.skipif(not IMAGENETTE.is_file(), reason="needs ../shared/data/imagenette-224")
def test_stream_learning_benchmark_quick(quick_runs):
    """The learning check from shards (issue 13) runs end to end: prepare, stream, kNN before and after."""
    stdout, report = quick(quick_runs, "stream_learning.py")
    assert "kNN top-1 at init" in stdout
    assert report["knn_history"][0][0] == -1 and report["epochs"] == 1
    assert 0.0 <= report["knn_top1_at_init"] <= 1.0 and 0.0 <= report["knn_top1_after"] <= 1.0
    assert isinstance(report["raw_pixel_knn_top1"], float) and 0.0 <= report["raw_pixel_knn_top1"] <= 1.0
    assert "raw pixels (same kNN)" in stdout
    mix = report["batch_mix"]  # classes per batch of the recipes' loader beside a uniform shuffle's (issue 23)
    assert "classes per batch of 8" in stdout and mix["classes"] == 3 and mix["batches"] > 0
    assert 1 <= mix["classes_per_batch"] <= 3 and 1 < mix["uniform_classes_per_batch"] <= 3
