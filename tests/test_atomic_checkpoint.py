"""A crash while a checkpoint is being written leaves the previous last.ckpt whole and loadable.

No checkpoint plugin of our own is needed: Lightning 2.6's ``TorchCheckpointIO`` saves through
``lightning_fabric.utilities.cloud_io._atomic_save``, which serialises into memory first and then writes
inside an fsspec transaction (a temporary file, moved over the target on commit; discarded on error).
Caveat: fsspec makes the temporary file in the system temp folder, so the final move is an atomic
rename only when that folder and the checkpoint folder are on the same filesystem.
"""

from __future__ import annotations

import fsspec.implementations.local
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

FAIL_AT_STEP = 3


class Killed(BaseException):
    """Stands for the process dying mid-save (not an Exception, so nothing handles it)."""


class Regression(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        return torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def break_serialisation(monkeypatch) -> None:
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("global_step") == FAIL_AT_STEP:
            f.write(b"partial")
            raise Killed
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


def break_file_write(monkeypatch) -> None:
    opener = fsspec.implementations.local.LocalFileOpener
    real_write, calls = opener.write, []

    def write(self, data):
        calls.append(1)
        if len(calls) == FAIL_AT_STEP:  # the third checkpoint file: half of it, then death
            real_write(self, data[: len(data) // 2])
            raise Killed
        return real_write(self, data)

    monkeypatch.setattr(opener, "write", write)


@pytest.mark.parametrize("breaker", [break_serialisation, break_file_write])
def test_crash_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch, breaker):
    torch.manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(64, 4), torch.randn(64, 1)), batch_size=8)
    trainer = pl.Trainer(max_steps=6, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path,
                         callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=1,
                                                    save_top_k=0)])
    breaker(monkeypatch)
    with pytest.raises(Killed):
        trainer.fit(Regression(), data)
    monkeypatch.undo()

    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == FAIL_AT_STEP - 1
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".ckpt"] == ["last.ckpt"]
    Regression.load_from_checkpoint(tmp_path / "last.ckpt")
    resumed = pl.Trainer(max_steps=6, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
    resumed.fit(Regression(), data, ckpt_path=tmp_path / "last.ckpt")
    assert resumed.global_step == 6
