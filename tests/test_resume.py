"""A run that dies and resumes from last.ckpt ends with exactly the uninterrupted run's weights.

Both runs use ``max_steps=8`` (so the LR schedule and MoCo's momentum schedule are the same), 4 batches per
epoch; the crash comes at an epoch boundary, mid-epoch, or as a real SIGKILL of a child process. What must
survive the resume: weights, optimizer and LR scheduler (Lightning), MoCo's key encoder and queue (module
state), the augmentation RNG (the global torch RNG: ``RNGStateCheckpoint``) and the data order and position
in the epoch (``ResumableBatchLoader``'s state in the checkpoint).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger

from ssl_siamese.callbacks import CollapseMonitor, ThroughputMonitor
from ssl_siamese.callbacks.nan_guard import NonFiniteLossGuard
from ssl_siamese.callbacks.rng_state import RNGStateCheckpoint
from ssl_siamese.data import SSLDataModule
from ssl_siamese.evaluation.knn import KNNEvaluation
from ssl_siamese.evaluation.online_probe import OnlineLinearProbe
from ssl_siamese.evaluation.pictures import EmbeddingPictures
from ssl_siamese.methods import MoCo, SimCLR, SimSiam

MAX_STEPS = 8
BATCHES_PER_EPOCH = 4
METHODS = {"simclr": (SimCLR, {"projection_dim": 16, "hidden_dim": 32}),
           "moco": (MoCo, {"projection_dim": 16, "hidden_dim": 32, "queue_size": 80}),
           "simsiam": (SimSiam, {"projection_dim": 32, "predictor_hidden_dim": 8})}


class Crash(Exception):
    pass


class CrashAtStep(pl.Callback):
    """Simulates a crash at the start of step ``step`` (after its predecessor's checkpoint is written)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise Crash


class KillAtStep(CrashAtStep):
    """The real thing: SIGKILL, no exception handler, no cleanup."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def recipe_callbacks() -> list[pl.Callback]:
    """What ``ssl_siamese.cli`` adds on labelled data besides ``RNGStateCheckpoint`` (pictures every epoch)."""
    return [OnlineLinearProbe(), EmbeddingPictures(every_n_epochs=1), ThroughputMonitor(sync_every=1, skip_steps=1),
            CollapseMonitor(), LearningRateMonitor("step"), NonFiniteLossGuard(), KNNEvaluation()]


def fit(tmp_path, name: str, crash_at: int | None = None, ckpt_path=None, rng_callback: bool = True,
        kill_at: int | None = None, recipe_defaults: bool = False) -> pl.LightningModule:
    pl.seed_everything(0, verbose=False)
    cls, kwargs = METHODS[name]
    model = cls(backbone="tiny_cnn", batch_size=32, warmup_epochs=0.5, **kwargs)
    data = SSLDataModule("synthetic", batch_size=32, train_subset=32 * BATCHES_PER_EPOCH, num_workers=0,
                         val_subset=64, knn_bank_subset=64)
    callbacks = [ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=1, save_top_k=0)]
    callbacks += [RNGStateCheckpoint()] if rng_callback else []
    callbacks += [CrashAtStep(crash_at)] if crash_at is not None else []
    callbacks += [KillAtStep(kill_at)] if kill_at is not None else []
    callbacks += recipe_callbacks() if recipe_defaults else []
    trainer = pl.Trainer(max_steps=MAX_STEPS, accelerator="cpu", deterministic=True,
                         logger=CSVLogger(tmp_path) if recipe_defaults else False,
                         limit_val_batches=None if recipe_defaults else 0, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, callbacks=callbacks)
    if crash_at is None:
        trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
        assert trainer.global_step == MAX_STEPS
    else:
        with pytest.raises(Crash):
            trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    return model


def max_weight_diff(a: pl.LightningModule, b: pl.LightningModule) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return max((sa[k].double() - sb[k].double()).abs().max().item() for k in sa)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, pl.LightningModule]:
    return {name: fit(tmp_path_factory.mktemp(f"full_{name}"), name) for name in METHODS}


@pytest.mark.parametrize("name", list(METHODS))
def test_resume_at_epoch_boundary_is_exact(tmp_path, uninterrupted, name):
    fit(tmp_path, name, crash_at=BATCHES_PER_EPOCH)
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["global_step"] == BATCHES_PER_EPOCH
    resumed = fit(tmp_path, name, ckpt_path=tmp_path / "last.ckpt")
    assert max_weight_diff(resumed, uninterrupted[name]) == 0.0
    if name == "moco":
        assert torch.equal(resumed.queue.keys, uninterrupted[name].queue.keys)
        assert torch.equal(resumed.queue.pointer, uninterrupted[name].queue.pointer)


def test_without_rng_state_the_resume_diverges(tmp_path, uninterrupted):
    """Why ``RNGStateCheckpoint`` exists: Lightning alone restarts the global RNG from the seed."""
    fit(tmp_path, "simclr", crash_at=BATCHES_PER_EPOCH, rng_callback=False)
    resumed = fit(tmp_path, "simclr", ckpt_path=tmp_path / "last.ckpt", rng_callback=False)
    assert max_weight_diff(resumed, uninterrupted["simclr"]) > 1e-6


@pytest.mark.parametrize(("name", "crash_at"), [("simclr", 2), ("moco", BATCHES_PER_EPOCH + 1),
                                               ("simsiam", BATCHES_PER_EPOCH + 3)])
def test_mid_epoch_resume_is_exact(tmp_path, uninterrupted, name, crash_at):
    fit(tmp_path, name, crash_at=crash_at)
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == crash_at
    resumed = fit(tmp_path, name, ckpt_path=tmp_path / "last.ckpt")
    assert max_weight_diff(resumed, uninterrupted[name]) == 0.0


def test_sigkill_mid_epoch_then_resume_is_exact(tmp_path, uninterrupted):
    """A child process trains MoCo and SIGKILLs itself mid-epoch; this process resumes from its last.ckpt."""
    script = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_resume; "
              f"test_resume.fit(__import__('pathlib').Path({str(tmp_path)!r}), 'moco', "
              f"kill_at={BATCHES_PER_EPOCH + 2})")
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == BATCHES_PER_EPOCH + 2
    resumed = fit(tmp_path, "moco", ckpt_path=tmp_path / "last.ckpt")
    assert max_weight_diff(resumed, uninterrupted["moco"]) == 0.0
    assert torch.equal(resumed.queue.keys, uninterrupted["moco"].queue.keys)


@pytest.mark.parametrize(("name", "crash_at"), [("simclr", 2), ("moco", BATCHES_PER_EPOCH + 1)])
def test_recipe_callbacks_survive_a_mid_epoch_resume(tmp_path, uninterrupted, name, crash_at):
    """The recipes' default callbacks (monitors, probe, pictures, kNN, with validation) restart mid-epoch.

    A run resumed mid-epoch skips ``on_train_epoch_start``; state made only there is missing after it.
    The callbacks draw no random numbers, so the weights still equal the plain uninterrupted run's.
    """
    fit(tmp_path, name, crash_at=crash_at, recipe_defaults=True)
    resumed = fit(tmp_path, name, ckpt_path=tmp_path / "last.ckpt", recipe_defaults=True)
    assert max_weight_diff(resumed, uninterrupted[name]) == 0.0
    knn = next(c for c in resumed.trainer.callbacks if isinstance(c, KNNEvaluation))
    assert [epoch for epoch, *_ in knn.history] == [0, 1]  # one per epoch, from the checkpoint and after it


def test_second_resume_after_an_epoch_boundary_checkpoint_is_exact(tmp_path, uninterrupted):
    """Resumed from the checkpoint of an epoch's last batch, then killed mid-epoch again and resumed.

    Lightning (2.6) skips the next epoch's start after such a resume and its epoch counters lag by one; a
    checkpoint saved later in that epoch then resumed at the epoch's start (batches trained twice).
    """
    fit(tmp_path, "simsiam", crash_at=BATCHES_PER_EPOCH)
    fit(tmp_path, "simsiam", crash_at=BATCHES_PER_EPOCH + 2, ckpt_path=tmp_path / "last.ckpt")
    progress = torch.load(tmp_path / "last.ckpt", weights_only=True)["loops"]["fit_loop"]["epoch_progress"]
    assert progress["current"]["ready"] == progress["current"]["started"] == 2  # epoch 1 was started
    resumed = fit(tmp_path, "simsiam", ckpt_path=tmp_path / "last.ckpt")
    assert max_weight_diff(resumed, uninterrupted["simsiam"]) == 0.0
