"""Resume through the real recipe command: SIGKILL at every kind of step, resume from last.ckpt, same weights.

Where a run can be killed is a property of Lightning's loop, not of the method, so it is proved here once, on
``python -m ssl_siamese.recipes.simclr`` with its default callbacks (throughput, collapse, learning-rate monitors,
NaN guard, RNG state, online probe, embedding pictures, kNN) on a small real Fashion-MNIST subset. Each
method's own state (MoCo's queue, the EMA targets, DINO's centre, MAE's masks, the P x K loader position) is
proved by an in-process resume of its own: ``test_resume.test_each_methods_own_state_resumes_exactly`` and
``test_siamese_resume``.

One uninterrupted run is the reference; one chain of runs is killed and resumed from ``last.ckpt``, its runs
switching checkpoint options as a user may (the checkpoint callbacks draw no random numbers, so they leave the
weights alone): with the README's mid-epoch checkpoints (``--trainer.callbacks+=ModelCheckpoint
--trainer.callbacks.every_n_train_steps 1 ...``) mid-epoch, exactly at an epoch boundary (the step checkpoint is
written before the epoch's validation) and right after one; then with only the epoch-end checkpoints of
Lightning's default ``ModelCheckpoint`` (taken while training went on), killed in epoch 2, so that the run goes on
from epoch 1's end; then a Ctrl-C (a real SIGINT) in epoch 2, step checkpoints on again: the step finishes,
``last.ckpt`` holds the next step, and the resume command the recipe prints takes the run to its end. The final
weights must equal the reference's bit for bit. ``test_extending_a_finished_run`` stops a run by ``max_steps``
mid-epoch and extends it with a larger ``max_epochs``: the learning-rate schedule is re-derived over the new
length and said so, and the weights move at a learning rate above zero (in-process ``main``: the command line
itself is the chain's).

The SIGKILL comes from ``KillAtStep`` below, added on the command line like any callback
(``--trainer.callbacks+=test_resume_cli.KillAtStep``): no exception handler, no cleanup, as with ``kill -9``.
"""

from __future__ import annotations

import csv
import logging
import os
import shlex
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

REPO = Path(__file__).resolve().parents[1]
FASHION_DIRS = [REPO.parent / "shared" / "data", REPO / "data"]
FASHION_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
DATA_DIR = next((d for d in FASHION_DIRS if all((d / "fashion-mnist" / f).is_file() for f in FASHION_FILES)), None)
pytestmark = pytest.mark.skipif(DATA_DIR is None, reason="Fashion-MNIST IDX files not found in "
                                + " or ".join(str(d / "fashion-mnist") for d in FASHION_DIRS))

BATCH, TRAIN_IMAGES, EPOCHS = 16, 64, 3  # 4 steps per epoch, 12 in all
STEPS_PER_EPOCH = TRAIN_IMAGES // BATCH
# a width-8 tiny_cnn: where a kill lands does not depend on the network's size (4 times faster steps)
SIMCLR_ARGS = ["--model.backbone_kwargs", "{width: 8}", "--model.hidden_dim", "32", "--model.projection_dim", "16"]
STEP_CHECKPOINTS = ["--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.every_n_train_steps", "1",
                    "--trainer.callbacks.save_last", "true"]


class KillAtStep(pl.Callback):
    """``kill``s its own process with ``signal`` (SIGKILL; SIGINT: Ctrl-C) when the batch of global step ``step``
    starts (its predecessor is saved)."""

    def __init__(self, step: int, signal: str = "SIGKILL") -> None:
        self.step = step
        self.signal = signal

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: object,
                             batch_idx: int) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), getattr(signal, self.signal))


def recipe_args(out: Path, *extra: str) -> list[str]:
    """The recipe's command line after ``python -m ssl_siamese.recipes.simclr``, on the tiny setup."""
    return ["--model.backbone", "tiny_cnn",
            "--data.dataset", "fashion_mnist", "--data.data_dir", str(DATA_DIR), "--data.batch_size", str(BATCH),
            "--data.train_subset", str(TRAIN_IMAGES), "--data.val_subset", "32", "--data.knn_bank_subset", "64",
            "--trainer.max_epochs", str(EPOCHS), "--trainer.accelerator", "cpu", "--trainer.deterministic", "true",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.log_every_n_steps", "1", "--log_to", "csv", "--knn_at_start", "false",
            "--out", str(out), *SIMCLR_ARGS, *extra]


def recipe(out: Path, *extra: str, kill_at: int | None = None, signal: str = "SIGKILL") -> subprocess.Popen:
    """Start ``python -m ssl_siamese.recipes.simclr`` with the recipe's defaults on the tiny setup."""
    args = [sys.executable, "-m", "ssl_siamese.recipes.simclr", *recipe_args(out, *extra)]
    if kill_at is not None:
        args += ["--trainer.callbacks+=test_resume_cli.KillAtStep", "--trainer.callbacks.step", str(kill_at),
                 "--trainer.callbacks.signal", signal]
    return subprocess.Popen(args, cwd=REPO, env=recipe_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def recipe_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO)]),
            "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}


def finish(process: subprocess.Popen, killed: bool = False) -> str:
    output, _ = process.communicate(timeout=600)
    expected = -signal.SIGKILL if killed else 0
    assert process.returncode == expected, f"exit {process.returncode}, expected {expected}:\n{output[-4000:]}"
    return output


def checkpoint(out: Path) -> dict:
    return torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} of {len(a)} tensors differ, e.g. {different[:5]}"


# the chain: each run's checkpoint flags, the step at which it is SIGKILLed and the step its last.ckpt then holds;
# each run after the first resumes the previous one's last.ckpt
CHAIN = [
    (STEP_CHECKPOINTS, 2, 2),  # mid-epoch 0
    (STEP_CHECKPOINTS, STEPS_PER_EPOCH, STEPS_PER_EPOCH),  # exactly at the boundary (written before validation)
    (STEP_CHECKPOINTS, STEPS_PER_EPOCH + 1, STEPS_PER_EPOCH + 1),  # right after it
    # Lightning's default checkpoints only, killed in epoch 2: last.ckpt is epoch 1's end, taken on the way
    ([], 2 * STEPS_PER_EPOCH + 1, 2 * STEPS_PER_EPOCH),
]


@pytest.mark.slow
def test_sigkilled_recipe_resumes_to_the_uninterrupted_weights(tmp_path):
    """The chain above, then a Ctrl-C in step 9 (last.ckpt: step 10) and the printed resume command to the end.
    Its runs switch checkpoint options, so the weights equal the reference's only if those options leave them
    alone (verified 2026-12-07: the references with and without step checkpoints are bit-identical)."""
    full_out, out = tmp_path / "full", tmp_path / "killed"
    full = recipe(full_out, *STEP_CHECKPOINTS)  # the reference runs alongside the chain
    resume: list[str] = []
    for flags, kill_at, saved in CHAIN:
        finish(recipe(out, *flags, *resume, kill_at=kill_at), killed=True)
        assert checkpoint(out)["global_step"] == saved
        resume = ["--ckpt_path", str(out / "checkpoints" / "last.ckpt")]
    interrupt_and_resume_with_the_printed_command(out, [*STEP_CHECKPOINTS, *resume], 2 * STEPS_PER_EPOCH + 1)
    finish(full)
    resumed, reference = checkpoint(out), checkpoint(full_out)
    assert resumed["global_step"] == reference["global_step"] == EPOCHS * STEPS_PER_EPOCH
    assert_same_weights(resumed["state_dict"], reference["state_dict"])
    assert sorted(p.name for p in (out / "checkpoints").glob("last*.ckpt")) == ["last.ckpt"]
    assert (out / "exported_models" / "backbone.pt").is_file()


def logged_lrs(out: Path) -> list[tuple[int, float]]:
    """``(step, lr)`` of every learning rate the CSV logs under ``out`` hold (every ``lr-*`` column)."""
    rows = []
    for path in sorted(out.glob("csv/**/metrics.csv")):
        with path.open() as f:
            rows += [(int(r["step"]), float(v)) for r in csv.DictReader(f)
                     for k, v in r.items() if k.startswith("lr-") and v]
    return rows


def run_in_process(out: Path, caplog: pytest.LogCaptureFixture, *extra: str) -> str:
    """One recipe run through ``main`` in this process (the chain above drives the real command): its log and
    warnings as text. Not ``deterministic``: ``torch.use_deterministic_algorithms`` would stay on for later tests."""
    from ssl_siamese.cli.lightning import main
    from ssl_siamese.methods.simclr import SimCLR

    caplog.clear()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the chain's OMP_NUM_THREADS=1: a second thread costs more than it gives here
    try:
        with caplog.at_level(logging.INFO), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            main(SimCLR, "simclr", recipe_args(out, *STEP_CHECKPOINTS, "--trainer.deterministic", "false", *extra))
    finally:
        torch.set_num_threads(threads)
    return caplog.text + "\n".join(str(w.message) for w in caught)


def test_extending_a_run_rederives_the_schedule(tmp_path, caplog):
    """Stopped by max_steps mid-epoch, resumed to 2 epochs, then extended to 3: epoch 3 trains at lr > 0."""
    out = tmp_path / "run"
    resume = ["--ckpt_path", str(out / "checkpoints" / "last.ckpt")]
    stop = STEPS_PER_EPOCH + 2
    run_in_process(out, caplog, "--trainer.max_epochs", "2", "--trainer.max_steps", str(stop))
    assert checkpoint(out)["global_step"] == stop
    output = run_in_process(out, caplog, *resume, "--trainer.max_epochs", "2")
    assert f"cosine schedule re-derived over {2 * STEPS_PER_EPOCH} steps instead of {stop}" in output, output[-3000:]
    before = checkpoint(out)
    assert before["global_step"] == 2 * STEPS_PER_EPOCH
    output = run_in_process(out, caplog, *resume)  # max_epochs 3
    total = EPOCHS * STEPS_PER_EPOCH
    assert f"cosine schedule re-derived over {total} steps instead of {2 * STEPS_PER_EPOCH}" in output, output[-3000:]
    assert "exceeds max_steps" not in output
    after = checkpoint(out)
    assert after["global_step"] == total
    # lightly's cosine reaches its end value (0) at the last step; every step of epoch 3 before it trains
    lrs = {step: lr for step, lr in logged_lrs(out) if step >= 2 * STEPS_PER_EPOCH}
    assert sorted(lrs) == list(range(2 * STEPS_PER_EPOCH, total)), lrs
    assert all(lrs[step] > 0 for step in range(2 * STEPS_PER_EPOCH, total - 1)), lrs
    moved = [k for k in before["state_dict"] if k.startswith("backbone.")
             and not torch.equal(before["state_dict"][k], after["state_dict"][k])]
    assert moved, "no backbone weight changed in epoch 3"


def interrupt_and_resume_with_the_printed_command(out: Path, args: list[str], step: int) -> None:
    """Ctrl-C (a real SIGINT) in ``step``: the step finishes, last.ckpt holds ``step + 1`` (before: the newest step
    or epoch-end checkpoint, and no word on how to go on); the command printed resumes the run to its end."""
    process = recipe(out, *args, kill_at=step, signal="SIGINT")
    output, _ = process.communicate(timeout=600)
    assert process.returncode != 0, output[-3000:]
    assert checkpoint(out)["global_step"] == step + 1, output[-3000:]
    resume_lines = [line for line in output.splitlines() if line.strip().startswith("python -m ssl_siamese")]
    assert len(resume_lines) == 1, output[-3000:]
    command = shlex.split(resume_lines[0])
    assert command[-2:] == ["--ckpt_path", str(out / "checkpoints" / "last.ckpt")]
    assert command[command.index("--out") + 1] == str(out) and "--model.hidden_dim" in command
    resumed = subprocess.run([sys.executable, *command[1:]], cwd=REPO, env=recipe_env(), capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
