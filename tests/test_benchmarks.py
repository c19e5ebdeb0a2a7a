"""The benchmark scripts' quick modes run on the CPU, so they cannot rot.

The scripts of the selected tests run one after another in ONE interpreter (``RUNNER``), which pays the ~6 s of
importing Lightning once instead of once per script; each script still runs as ``__main__`` with its own
``sys.argv``, and its stdout, stderr and outcome are kept apart for its test.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IMAGENETTE = ROOT.parent / "shared" / "data" / "imagenette-224" / "imagenette-224.tar"
# test -> (script, its arguments besides --quick and --json <file>; WORK: a folder of its own)
SCRIPTS = {"test_methods_benchmark_quick": ("methods.py", []), "test_knn_speed_benchmark_quick": ("knn_speed.py", []),
           "test_ddp_accuracy_benchmark_quick": ("ddp_accuracy.py", []),
           "test_weight_decay_groups_benchmark_quick": ("weight_decay_groups.py", []),
           "test_stream_learning_benchmark_quick": ("stream_learning.py", []),
           "test_throughput_benchmark_quick": ("throughput.py", []),
           "test_prepare_speed_benchmark_quick": ("prepare_speed.py", ["--start_method", "fork", "--work_dir", "WORK"]),
           "test_shard_engines_quick": ("shard_engines.py", []),
           "test_stream_memory_quick": ("stream_memory.py", ["--work_dir", "WORK"]),
           "test_input_pipeline_quick": ("input_pipeline.py", ["--work_dir", "WORK"]),
           "test_text_retrieval_benchmark_quick": ("text_retrieval.py", []),
           "test_text_bag_ablations_quick": ("text_bag_ablations.py",
                                             ["--idf", "--heads", "2", "--sibling_negatives", "0.5"])}
NEEDS_IMAGENETTE = {"stream_learning.py", "shard_engines.py", "stream_memory.py", "input_pipeline.py"}
NEEDS_DEBIAN_DESCRIPTIONS = {"text_retrieval.py", "text_bag_ablations.py"}
NO_JSON = {"text_bag_ablations.py"}  # prints its table only
# Runs benchmarks/<script> <arguments> for each (script, arguments) of the JSON list argv[2], as ``python benchmarks/<script>`` would, writing <script>.out, .err and .status (``ok`` or
# what went wrong); the process-wide settings a script may change (torch threads, the multiprocessing start
# method, warning filters) are put back before the next one.
RUNNER = """
import contextlib, json, multiprocessing, runpy, sys, traceback, warnings
from pathlib import Path
import torch
folder = Path(sys.argv[1])
for script, arguments in json.loads(sys.argv[2]):
    threads, start = torch.get_num_threads(), multiprocessing.get_start_method(allow_none=True)
    sys.argv = [f"benchmarks/{script}", *arguments]
    sys.path[0] = "benchmarks"
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
    runs = [SCRIPTS[item.originalname] for item in request.session.items
            if item.module is request.module and item.originalname in SCRIPTS]
    runs = [(script, ["--quick", *([] if script in NO_JSON else ["--json", str(folder / f"{script}.json")]),
                      *(str(folder / f"{script}.work") if a == "WORK" else a for a in arguments)])
            for script, arguments in runs if (IMAGENETTE.is_file() or script not in NEEDS_IMAGENETTE)
            and (script not in NEEDS_DEBIAN_DESCRIPTIONS or debian_descriptions_missing() is None)]
    for script, _ in runs:
        (folder / f"{script}.work").mkdir()
    # one OpenMP thread: smoke tests on a shared 2-core machine, where idle threads spinning only slow them
    result = subprocess.run([sys.executable, "-c", RUNNER, str(folder), json.dumps(runs)], cwd=ROOT,
                            capture_output=True, text=True, timeout=1800,
                            env={**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"})
    (folder / "runner.err").write_text(f"exit status {result.returncode}\n{result.stderr}")
    return folder


def debian_descriptions_missing() -> str | None:
    """Why apt's English package descriptions are missing, or None (tests/test_text_recipe.py runs apt-get update
    on a clean CI machine)."""
    from ssl_siamese.text.debian import DebianDescriptionsMissing, translation_files

    try:
        translation_files()
    except DebianDescriptionsMissing as error:
        return str(error)
    return None


def quick(folder: Path, script: str) -> tuple[str, dict | None]:
    """(stdout, JSON report) of ``benchmarks/<script> --quick``; fails naming the script when it did not finish."""
    status = folder / f"{script}.status"
    if not status.is_file():  # the runner itself died (during this script or before it)
        pytest.fail(f"benchmarks/{script} --quick did not finish: {(folder / 'runner.err').read_text()[-3000:]}")
    err = (folder / f"{script}.err").read_text()
    assert status.read_text() == "ok", f"benchmarks/{script} --quick: {status.read_text()}\n{err[-3000:]}"
    report = folder / f"{script}.json"
    return (folder / f"{script}.out").read_text(), json.loads(report.read_text()) if report.is_file() else None


def test_methods_benchmark_quick(quick_runs):
    stdout, report = quick(quick_runs, "methods.py")
    table = [line for line in stdout.splitlines() if line.startswith("| ")]
    # header, separator, one row per method, the raw-pixel reference row
    methods = ["simclr", "moco", "simsiam", "byol", "barlow_twins", "vicreg", "dino", "mae", "dcl", "nnclr"]
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


THROUGHPUT_PRESETS = ["simclr", "moco_v2", "simsiam", "byol"]
THROUGHPUT_PIPELINES = ["ceiling"] * 3 + ["ours"] * 3 + ["lightly", "kornia"] + ["aug-only ours", "aug-only kornia"] * 4


def test_throughput_benchmark_quick(quick_runs):
    stdout, report = quick(quick_runs, "throughput.py")
    assert "torch " + __import__("torch").__version__ in stdout and "CPU" in stdout
    table = [line for line in stdout.splitlines() if line.startswith("| ")]
    assert table[0] == "| pipeline | method | img/s | x ceiling | x lightly | note |"
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table[2:]]
    assert [row[0] for row in rows] == THROUGHPUT_PIPELINES
    assert [row[1] for row in rows[:6]] == ["simclr", "moco", "simsiam"] * 2
    assert [row[1] for row in rows[8:]] == [preset for preset in THROUGHPUT_PRESETS for _ in range(2)]  # ours, kornia
    assert all(row[3] == "1.00" for row in rows[:3]) and rows[6][4] == "1.00"

    assert {"date", "device", "torch", "data", "args", "rows", "aug_speedup_vs_kornia"} <= set(report)
    assert report["args"]["quick"] and report["args"]["backbone"] == "tiny_cnn" and report["args"]["batch_size"] == 32
    assert [row["pipeline"] for row in report["rows"]] == THROUGHPUT_PIPELINES
    for row in report["rows"]:
        assert {"pipeline", "method", "img_per_s", "vs_ceiling", "vs_lightly"} <= set(row)
        if row["pipeline"] in ("ceiling", "ours", "lightly", "aug-only ours"):
            assert row["img_per_s"] > 0 and row["vs_ceiling"] > 0 and row["vs_lightly"] > 0
    if importlib.util.find_spec("kornia") is None:
        assert "kornia not installed" in stdout and report["aug_speedup_vs_kornia"] is None
    else:
        assert report["aug_speedup_vs_kornia"] > 0
        assert sorted(report["aug_speedup_vs_kornia_by_preset"]) == sorted(THROUGHPUT_PRESETS)


def test_prepare_speed_benchmark_quick(quick_runs):
    """``benchmarks/prepare_speed.py --quick`` runs (a few hundred images)."""
    stdout, report = quick(quick_runs, "prepare_speed.py")
    table = [line for line in stdout.splitlines() if line.startswith("| ")]
    assert len(table) == 2 + len(report["rows"]) and report["rows"][-1]["source"].startswith("synthetic")
    for row in report["rows"]:
        assert row["written"] == row["files"] and row["skipped"] == 0
        assert row["images_per_s"] > 0 and 0 < row["mb_on_disk"]
    assert report["rows"][-1]["mb_on_disk"] < report["rows"][-1]["mb_in"]  # 500 px re-encoded at 256 px


@pytest.mark.skipif(not IMAGENETTE.exists(), reason=f"{IMAGENETTE} missing")
def test_shard_engines_quick(quick_runs):
    """The engine comparison: the reference is the ImageFolder listing itself, each engine must hand back every
    index of the chosen images exactly once per epoch, with the label ImageFolder gives its file."""
    stdout, report = quick(quick_runs, "shard_engines.py")
    table = [line for line in stdout.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| engine | prepare img/s | MB on disk | read img/s raw | read img/s decoded |")

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


# stream_memory and input_pipeline run end to end on a few Imagenette images, so these benchmarks (and
# input_pipeline's GPU model-ceiling path) cannot rot. No timings are asserted; the checks are on what was counted.
@pytest.mark.skipif(not IMAGENETTE.is_file(), reason=f"needs {IMAGENETTE}")
def test_stream_memory_quick(quick_runs):
    stdout, report = quick(quick_runs, "stream_memory.py")
    table = [line for line in stdout.splitlines() if line.startswith("| ")]
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


@pytest.mark.skipif(not IMAGENETTE.is_file(), reason=f"needs {IMAGENETTE}")
def test_input_pipeline_quick(quick_runs):
    stdout, report = quick(quick_runs, "input_pipeline.py")
    table = [line for line in stdout.splitlines() if line.startswith("| ")]
    speeds = {r["pipeline"]: r["images_per_s"] for r in report["rows"]}
    assert set(speeds) == {"ours", "lightly", "decode torchvision", "decode PIL", "ceiling"}
    assert all(speed > 0 for speed in speeds.values())
    assert len(table) == 2 + len(speeds)
    assert report["ours_over_lightly"] == pytest.approx(speeds["ours"] / speeds["lightly"])
    assert report["torchvision_over_pil_decode"] == pytest.approx(speeds["decode torchvision"] / speeds["decode PIL"])
    assert "resnet18" in report["ceiling"] and report["device"] == "cpu" and report["threads"] >= 1


def test_text_retrieval_benchmark_quick(quick_runs):
    if (missing := debian_descriptions_missing()) is not None:
        pytest.skip(missing)
    stdout, report = quick(quick_runs, "text_retrieval.py")
    assert "| bm25 |" in stdout and "| hybrid_rrf |" in stdout and "targets:" in stdout
    rows = report["metrics"]
    assert rows["dense"]["recall@10"] > rows["dense_at_init"]["recall@10"] + 0.05  # it learns
    assert rows["bm25"]["recall@1"] > 0.5 and report["fit_cpu_s"] > 0
    assert set(report["targets"]) == {"dense_beats_bm25", "hybrid_recall@1>=0.80", "training<=15_cpu_min"}


def test_text_bag_ablations_quick(quick_runs):
    if (missing := debian_descriptions_missing()) is not None:
        pytest.skip(missing)
    stdout, _ = quick(quick_runs, "text_bag_ablations.py")
    rows = {line.split("|")[1].strip(): [float(x) for x in line.split("|")[2:6]]
            for line in stdout.splitlines() if line.startswith("| ") and line[2:3] != "m"}
    assert set(rows) == {"dense_at_init", "bm25", "dense", "hybrid_rrf"}
    assert rows["dense"][1] > rows["dense_at_init"][1] + 0.05  # Recall@10: it learns
    assert "top-1 right: both" in stdout
