"""A run that dies and resumes from last.ckpt ends with exactly the uninterrupted run's weights.

Both runs use ``max_steps=8`` (so the LR schedule and the momentum schedules are the same), 4 batches per
epoch; the crash (an exception in a callback) comes at an epoch boundary or mid-epoch. What must
survive the resume: weights, optimizer and LR scheduler (Lightning), the augmentation RNG (the global torch RNG:
``RNGStateCheckpoint``), the data order and position in the epoch (``ResumableBatchLoader``'s state in the
checkpoint), and each method's own state, proved here in-process for every method: MoCo's key encoder and queue
(the epoch-boundary and mid-epoch tests), and in ``test_each_methods_own_state_resumes_exactly`` the EMA targets
and momentum of BYOL and DINO, DINO's centre, frozen last layer and teacher-temperature warm-up, MAE's masks
(drawn from the global RNG) and its AdamW, Barlow Twins' and VICReg's weights. SupervisedSiamese's P x K loader
position: ``test_siamese_resume``. Where Lightning's loop can be killed (SIGKILL mid-epoch, at and after an epoch
boundary, epoch-end checkpoints only, Ctrl-C) is proved once through the real command on SimCLR:
``test_resume_cli``.
"""

from __future__ import annotations


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
from ssl_siamese.methods import BYOL, DINO, MAE, NNCLR, BarlowTwins, MoCo, SimCLR, SimSiam, VICReg

MAX_STEPS = 8
BATCHES_PER_EPOCH = 4
TINY_CNN = {"backbone": "tiny_cnn", "backbone_kwargs": {"width": 8}}  # resumes are exact at any width
TINY_VIT = {"backbone": "timm/vit_tiny_patch16_224", "decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2,
            "backbone_kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 24, "depth": 1, "num_heads": 2}}
METHODS = {"simclr": (SimCLR, {"projection_dim": 16, "hidden_dim": 32}),
           "moco": (MoCo, {"projection_dim": 16, "hidden_dim": 32, "queue_size": 80}),
           "simsiam": (SimSiam, {"projection_dim": 32, "predictor_hidden_dim": 8}),
           "byol": (BYOL, {"projection_dim": 16, "hidden_dim": 32, "optimizer": "adamw", "lr": 0.002}),
           "barlow_twins": (BarlowTwins, {"projection_dim": 32, "hidden_dim": 32}),
           "vicreg": (VICReg, {"projection_dim": 32, "hidden_dim": 32}),
           # 2 local views, the teacher temperature warming up over both epochs, last layer frozen in epoch 0
           "dino": (DINO, {"output_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16, "local_views": 2,
                           "local_size": 14, "warmup_teacher_temp_epochs": 2}),
           "mae": (MAE, {**TINY_VIT, "lr": 1e-3}),
           "nnclr": (NNCLR, {"projection_dim": 16, "hidden_dim": 32, "prediction_hidden_dim": 32, "support_set_size": 48})}


class Crash(Exception):
    pass


class CrashAtStep(pl.Callback):
    """Simulates a crash at the start of step ``step`` (after its predecessor's checkpoint is written)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise Crash


def recipe_callbacks() -> list[pl.Callback]:
    """What ``ssl_siamese.cli`` adds on labelled data besides ``RNGStateCheckpoint`` (pictures every epoch)."""
    return [OnlineLinearProbe(), EmbeddingPictures(every_n_epochs=1), ThroughputMonitor(sync_every=1, skip_steps=1),
            CollapseMonitor(), LearningRateMonitor("step"), NonFiniteLossGuard(), KNNEvaluation()]


def fit(tmp_path, name: str, crash_at: int | None = None, ckpt_path=None, rng_callback: bool = True,
        recipe_defaults: bool = False) -> pl.LightningModule:
    pl.seed_everything(0, verbose=False)
    cls, kwargs = METHODS[name]
    model = cls(**{**TINY_CNN, "batch_size": 32, "warmup_epochs": 0.5, **kwargs})
    data = SSLDataModule("synthetic", batch_size=32, train_subset=32 * BATCHES_PER_EPOCH, num_workers=0,
                         val_subset=64, knn_bank_subset=64)
    callbacks = [ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=1, save_top_k=0)]
    callbacks += [RNGStateCheckpoint()] if rng_callback else []
    callbacks += [CrashAtStep(crash_at)] if crash_at is not None else []
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


class Uninterrupted(dict):
    """The uninterrupted run of each method, fitted when a test first asks for it."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        super().__init__()
        self.tmp_path_factory = tmp_path_factory

    def __missing__(self, name: str) -> pl.LightningModule:
        self[name] = fit(self.tmp_path_factory.mktemp(f"full_{name}"), name)
        return self[name]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Uninterrupted:
    return Uninterrupted(tmp_path_factory)


@pytest.mark.parametrize("name", ["simclr", "moco", "simsiam"])
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


# per method besides SimCLR, MoCo and SimSiam (the tests above): the steps at which a chain of runs crashes (each
# resuming the last), and the state_dict entries that are the method's own state beyond its backbone and heads
# (named so that a renamed buffer cannot drop out)
OWN_STATE = {"byol": ([3, BATCHES_PER_EPOCH + 2], ["target_encoder.", "ema_momentum"]),  # and AdamW's moments
             "barlow_twins": ([BATCHES_PER_EPOCH + 1], []),  # nothing beyond the weights: one crash
             "vicreg": ([BATCHES_PER_EPOCH + 2], []),
             # in the frozen first epoch, then mid-epoch 1 (the teacher temperature still warming up)
             "dino": ([2, BATCHES_PER_EPOCH + 2], ["teacher.", "criterion.center", "ema_momentum"]),
             "mae": ([3, BATCHES_PER_EPOCH + 1], ["decoder."]),  # the masks come from the RNG state
             "nnclr": ([3, BATCHES_PER_EPOCH + 2], ["support_set.keys", "support_set.pointer"])}  # wraps at step 2


@pytest.mark.parametrize("name", list(OWN_STATE))
def test_each_methods_own_state_resumes_exactly(tmp_path, uninterrupted, name):
    """Each method with state of its own crashes mid-epoch (twice where it has schedules) and resumes to the
    uninterrupted run's every weight and buffer, bit for bit."""
    crashes, own_state = OWN_STATE[name]
    ckpt_path = None
    for crash_at in crashes:
        fit(tmp_path, name, crash_at=crash_at, ckpt_path=ckpt_path)
        ckpt_path = tmp_path / "last.ckpt"
        assert torch.load(ckpt_path, weights_only=True)["global_step"] == crash_at
    resumed, reference = fit(tmp_path, name, ckpt_path=ckpt_path).state_dict(), uninterrupted[name].state_dict()
    assert resumed.keys() == reference.keys()
    different = [key for key in reference if not torch.equal(resumed[key], reference[key])]
    assert not different, f"{len(different)} of {len(reference)} tensors differ after the resume: {different[:5]}"
    missing = [prefix for prefix in own_state if not any(key.startswith(prefix) for key in reference)]
    assert not missing, f"{name}'s own state is no longer in its state_dict: {missing}"
    if name == "mae":  # MAE's AdamW (betas 0.9, 0.95; no decay on norms and biases) came back from the checkpoint
        groups = torch.load(ckpt_path, weights_only=True)["optimizer_states"][0]["param_groups"]
        assert [(g["name"], g["weight_decay"], tuple(g["betas"])) for g in groups] == [
            ("decay", 0.05, (0.9, 0.95)), ("no_decay", 0.0, (0.9, 0.95))]


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
