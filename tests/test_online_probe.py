"""The online linear probe: it never touches the backbone's gradients, learns, skips unlabelled images, resumes."""

import pytest
import pytorch_lightning as pl
import torch

from ssl_siamese import SimCLR, SSLDataModule
from ssl_siamese.evaluation.online_probe import OnlineLinearProbe

pytestmark = pytest.mark.filterwarnings("ignore:.*overridden `on_after_batch_transfer`")


@pytest.fixture(autouse=True)
def offline_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")


def fit(callbacks, max_steps=-1, max_epochs=1, **data):
    pl.seed_everything(0, verbose=False)
    model = SimCLR(backbone="tiny_cnn", view_size=32, batch_size=32, lr=0.05)
    datamodule = SSLDataModule("synthetic", batch_size=32, **data)
    trainer = pl.Trainer(max_steps=max_steps, max_epochs=max_epochs, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, callbacks=callbacks)
    trainer.fit(model, datamodule=datamodule)
    return model, trainer


def test_backbone_gradients_are_unchanged_by_the_probe():
    without, _ = fit([], max_steps=1)
    probe = OnlineLinearProbe(lr=0.5)
    with_probe, _ = fit([probe], max_steps=1)
    assert probe.classifier.weight.abs().sum() > 0  # the probe did take a step
    for (name, a), (_, b) in zip(without.backbone.named_parameters(), with_probe.backbone.named_parameters()):
        assert a.grad is not None, name
        assert torch.equal(a.grad, b.grad), name
        assert torch.equal(a, b), name
    for (name, a), (_, b) in zip(without.backbone.named_buffers(), with_probe.backbone.named_buffers()):
        assert torch.equal(a, b), name  # no extra forward: BatchNorm statistics untouched


def test_probe_learns_on_separable_synthetic_data():
    probe = OnlineLinearProbe(optimizer="adam", lr=0.01)
    _, trainer = fit([probe], max_epochs=2, train_subset=512, knn_bank_subset=64, val_subset=256)
    metrics = trainer.callback_metrics
    assert {"probe/train_acc", "probe/val_top1"} <= set(metrics)
    assert metrics["probe/val_top1"] > 0.5  # 10 classes: chance is 0.1


def test_unlabelled_rows_are_skipped():
    probe = OnlineLinearProbe(num_classes=3)
    probe.build(4, 3)
    assert probe.train_step(torch.randn(5, 4), torch.full((5,), -1)) == (0, 0)
    assert probe.classifier.weight.abs().sum() == 0 and not probe.optimizer.state
    _, seen = probe.train_step(torch.randn(5, 4), torch.tensor([0, -1, 2, -1, 1]))
    assert seen == 3


def test_state_round_trips_through_a_checkpoint(tmp_path):
    probe = OnlineLinearProbe(optimizer="sgd", lr=0.1)
    _, trainer = fit([probe], max_steps=2)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)["callbacks"][probe.state_key]
    assert set(saved) == {"classifier", "optimizer", "train_counts"} and saved["optimizer"]["state"]
    restored = OnlineLinearProbe(optimizer="sgd", lr=0.1)
    restored.load_state_dict(saved)
    assert restored._train_counts == probe._train_counts  # a mid-epoch resume logs the whole epoch's accuracy
    restored.build(probe.classifier.in_features, probe.classifier.out_features)
    torch.testing.assert_close(restored.classifier.state_dict(), probe.classifier.state_dict(), rtol=0, atol=0)
    momentum = restored.optimizer.state_dict()["state"][0]["momentum_buffer"]
    assert torch.equal(momentum, probe.optimizer.state_dict()["state"][0]["momentum_buffer"])
