"""A crash while a checkpoint is being written leaves the previous last.ckpt whole and loadable.

The recipes save through ``ssl_siamese.export.checkpoints.SafeCheckpointIO``: a temporary file in the checkpoint's
own folder, fsynced, then ``os.replace``d over the target; and they read checkpoints weights-only.
"""

from __future__ import annotations

import os
import tempfile

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from ssl_siamese.export.checkpoints import CheckpointError, SafeCheckpointIO, read_checkpoint

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


def break_rename(monkeypatch) -> None:
    """Death after the new file is complete on disk but before it replaces the old one."""
    real_replace, calls = os.replace, []

    def replace(src, dst, *args, **kwargs):
        calls.append(1)
        if len(calls) == FAIL_AT_STEP:
            raise Killed
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize("breaker", [break_serialisation, break_rename])
def test_crash_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch, breaker):
    torch.manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(64, 4), torch.randn(64, 1)), batch_size=8)
    trainer = pl.Trainer(max_steps=6, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, plugins=[SafeCheckpointIO()],
                         callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=1,
                                                    save_top_k=0)])
    breaker(monkeypatch)
    with pytest.raises(Killed):
        trainer.fit(Regression(), data)
    monkeypatch.undo()

    checkpoint = read_checkpoint(tmp_path / "last.ckpt")
    assert checkpoint["global_step"] == FAIL_AT_STEP - 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"], "no stray temporary file either"
    Regression.load_from_checkpoint(tmp_path / "last.ckpt")
    resumed = pl.Trainer(max_steps=6, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
    resumed.fit(Regression(), data, ckpt_path=tmp_path / "last.ckpt")
    assert resumed.global_step == 6


def test_temporary_file_is_made_beside_the_target(tmp_path, monkeypatch):
    """Same folder = same filesystem, so the final os.replace is an atomic rename (not a copy)."""
    folders, real_mkstemp = [], tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        folders.append(kwargs.get("dir"))
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    SafeCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(2)}}, tmp_path / "sub" / "a.ckpt")
    assert folders == [tmp_path / "sub"]
    assert torch.equal(read_checkpoint(tmp_path / "sub" / "a.ckpt")["state_dict"]["w"], torch.ones(2))


class Payload:
    """Stands for an object an attacker pickled into a checkpoint."""


def test_checkpoint_with_pickled_objects_is_refused(tmp_path):
    torch.save({"state_dict": {}, "payload": Payload()}, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match="weights-only loading refuses"):
        SafeCheckpointIO().load_checkpoint(tmp_path / "evil.ckpt")


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    SafeCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(1000)}}, tmp_path / "a.ckpt")
    data = (tmp_path / "a.ckpt").read_bytes()
    (tmp_path / "a.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="is truncated: it starts as a torch.save zip archive"):
        read_checkpoint(tmp_path / "a.ckpt")
