"""The linear-probe recipe on real Fashion-MNIST: exported backbones, fine-tuning, W&B artifacts, bad files.

Every method's Lightning checkpoint (a plain ``Trainer``'s, and the recipes' LightningCLI's whose
hyper-parameters carry ``_instantiator``) goes through ``load_backbone`` and this recipe in tests/test_registry.py.
"""

import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from ssl_siamese import SimCLR, SSLDataModule, export_backbone, load_backbone
from ssl_siamese.recipes.linear_probe import main, run_linear_probe

from helpers import fashion_mnist_dir, needs_fashion_mnist

FASHION_MNIST = fashion_mnist_dir()
pytestmark = [
    needs_fashion_mnist,
    pytest.mark.filterwarnings("ignore:.*overridden `on_after_batch_transfer`"),
]
QUICK = {"dataset": "fashion_mnist", "data_dir": FASHION_MNIST, "subset": 1500, "epochs": 30,
         "download": False, "progress": False}


@pytest.fixture(autouse=True)
def offline_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def lightning_checkpoint(method, path, **kwargs):
    pl.seed_everything(0, verbose=False)  # a width-8 tiny_cnn: truncating the file does not depend on its size
    model = method(backbone="tiny_cnn", backbone_kwargs={"width": 8}, view_size=28, batch_size=32, **kwargs)
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, datamodule=SSLDataModule("synthetic", batch_size=32, train_subset=64))
    trainer.save_checkpoint(path)
    return model


def test_exported_backbone_is_well_above_chance(tmp_path):
    torch.manual_seed(0)
    path = export_backbone(SimCLR(backbone="tiny_cnn", view_size=28), tmp_path / "backbone.pt")
    result = run_linear_probe(path, out=tmp_path / "out", log_to="wandb", **QUICK)
    assert result["mode"] == "linear" and result["method"] == "SimCLR"
    assert result["num_train"] == result["num_test"] == 1500
    assert result["top1"] > 0.5 and result["top5"] > result["top1"]  # chance: 0.1 and 0.5
    assert sum(map(sum, result["confusion"])) == 1500
    assert Path(result["confusion_png"]).is_file()
    assert json.loads((tmp_path / "out" / "results.json").read_text())["top1"] == result["top1"]
    assert list((tmp_path / "out").glob("wandb/offline-run-*"))
    interactive = "wandb/offline-run-*/files/media/table/linear_probe/confusion_matrix_interactive_table_*.table.json"
    assert list((tmp_path / "out").glob(interactive))  # W&B's own confusion matrix beside the PNG


def test_truncated_checkpoint_is_a_clear_error(tmp_path, capsys):
    lightning_checkpoint(SimCLR, tmp_path / "last.ckpt")
    data = (tmp_path / "last.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        load_backbone(tmp_path / "cut.ckpt")
    with pytest.raises(SystemExit, match="truncated"):
        main(["--ckpt", str(tmp_path / "cut.ckpt"), "--data.data_dir", str(FASHION_MNIST), "--log_to", "none"])


def test_finetune_from_the_command_line_runs_the_finetune_recipe(tmp_path, capsys):
    torch.manual_seed(0)
    path = export_backbone(SimCLR(backbone="tiny_cnn", view_size=28), tmp_path / "backbone.pt")
    result = main(["--ckpt", str(path), "--data.dataset", "fashion_mnist", "--data.data_dir", str(FASHION_MNIST),
                   "--data.download", "false", "--finetune", "--epochs", "3", "--batch_size", "64", "--subset", "600",
                   "--out", str(tmp_path / "out"), "--log_to", "none"])
    assert result["mode"] == "finetune" and result["method"] == "SimCLR" and result["top1"] > 0.4
    assert result["num_train"] == result["num_test"] == 600 and result["weight_decay"] == 5e-4
    assert result["top5"] >= result["top1"]
    assert "top-1" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "results.json").read_text())["mode"] == "finetune"


def test_backbone_from_a_wandb_model_artifact(tmp_path, monkeypatch):
    """``--ckpt wandb:ENTITY/PROJECT/NAME:ALIAS`` downloads the artifact (a stand-in for W&B's API: no network
    here) and probes the exported folder in it."""
    import wandb

    from ssl_siamese.export import export_pretrained

    torch.manual_seed(0)
    folder = export_pretrained(SimCLR(backbone="tiny_cnn", view_size=28), tmp_path / "artifact", data="fashion_mnist")
    asked = []

    class Artifact:
        def download(self, root=None):
            return str(folder)

    class Api:
        def artifact(self, name, type=None):
            asked.append((name, type))
            return Artifact()

    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setattr(wandb, "Api", Api)
    result = run_linear_probe("wandb:me/ssl_siamese/simclr-fashion_mnist-backbone:best", out=tmp_path / "out",
                              log_to="none", **QUICK)
    assert asked == [("me/ssl_siamese/simclr-fashion_mnist-backbone:best", "model")]
    assert result["method"] == "SimCLR" and result["top1"] > 0.5
