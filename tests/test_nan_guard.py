"""NonFiniteLossGuard stops at the first NaN loss and leaves the last good checkpoint in place."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from ssl_siamese.callbacks.nan_guard import NonFiniteLossError, NonFiniteLossGuard

NAN_AT_STEP = 3


class NaNAtStep(pl.LightningModule):
    """A linear regression whose loss becomes NaN at global step ``NAN_AT_STEP``."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        return loss * math.nan if self.global_step == NAN_AT_STEP else loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit_until_nan(tmp_path, checkpoint: ModelCheckpoint) -> tuple[NaNAtStep, pytest.ExceptionInfo]:
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
    model = NaNAtStep()
    trainer = pl.Trainer(max_steps=10, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path,
                         callbacks=[checkpoint, NonFiniteLossGuard()])
    with pytest.raises(NonFiniteLossError) as error:
        trainer.fit(model, DataLoader(data, batch_size=8))
    return model, error


def test_nan_loss_stops_with_step_and_epoch_and_keeps_last_good_checkpoint(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=1, save_top_k=-1)
    model, error = fit_until_nan(tmp_path, checkpoint)
    assert f"global step {NAN_AT_STEP} (epoch 0)" in str(error.value)
    assert isinstance(error.value, RuntimeError)

    last = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert last["global_step"] == NAN_AT_STEP  # saved after the last good optimizer step
    for name, weight in model.state_dict().items():  # the guard raised before backward: weights untouched
        assert torch.isfinite(weight).all()
        assert torch.equal(last["state_dict"][name], weight)
    restored = NaNAtStep.load_from_checkpoint(tmp_path / "last.ckpt")
    assert torch.equal(restored.layer.weight, model.layer.weight)
    assert not any("step=4" in p.name for p in tmp_path.iterdir())


def test_save_on_exception_writes_finite_weights(tmp_path):
    """Even a checkpoint written because of the exception holds the last good (finite) weights."""
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=2,
                                 save_on_exception=True)
    model, _ = fit_until_nan(tmp_path, checkpoint)
    last = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert last["global_step"] == NAN_AT_STEP
    assert all(torch.isfinite(w).all() for w in last["state_dict"].values())
    assert torch.equal(last["state_dict"]["layer.weight"], model.layer.weight)
