"""W&B media: the embeddings Table, the interactive ROC and confusion charts, read back from offline runs."""

import json
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from sklearn.decomposition import PCA

from ssl_siamese.evaluation.wandb_media import (
    embedding_columns,
    embedding_table,
    log_confusion_matrix,
    log_roc_curve,
    log_table,
    pairs_from_confusion,
)


@pytest.fixture(autouse=True)
def offline_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


def test_table_rows_neighbours_and_thumbnails():
    torch.manual_seed(0)
    features, labels = torch.randn(30, 16), torch.arange(30) % 3
    images = torch.randint(0, 256, (30, 3, 100, 80), dtype=torch.uint8)
    table = embedding_table(features, labels, images, class_names=["a", "b", "c"], neighbours=4)
    assert table.columns[:6] == ["index", "image", "label", "pca_x", "pca_y", "neighbours"]
    assert table.columns[6:] == [f"e{i}" for i in range(16)]  # 16 <= 64: the features themselves
    similarity = F.normalize(features, dim=1) @ F.normalize(features, dim=1).T
    for row in table.data:
        i = row[0]
        assert row[2] == "abc"[int(labels[i])]
        brute = sorted(((similarity[i, j].item(), j) for j in range(30) if j != i), reverse=True)[:4]
        assert [int(j) for j in row[5].split()] == [j for _, j in brute]
        np.testing.assert_allclose(row[6:], features[i].numpy(), rtol=0, atol=1e-6)
        assert max(row[1].image.size) == 64  # thumbnails at most 64 px, aspect kept (100 x 80 -> 64 x 51)


def test_wide_embeddings_become_principal_components():
    torch.manual_seed(0)
    features = torch.randn(200, 8) @ torch.randn(8, 300) + 0.01 * torch.randn(200, 300)
    columns = embedding_columns(features, max_columns=8)
    reference = PCA(n_components=8).fit_transform(features.double().numpy())
    for k in range(8):  # each component up to its sign
        a, b = columns[:, k], reference[:, k]
        assert min(np.abs(a - b).max(), np.abs(a + b).max()) < 1e-2 * np.abs(b).max()


def test_pairs_from_confusion_give_back_the_matrix():
    confusion = torch.tensor([[5, 1, 0], [2, 7, 1], [0, 0, 9]])
    labels, predictions = pairs_from_confusion(confusion)
    rebuilt = torch.zeros_like(confusion)
    rebuilt.index_put_((labels, predictions), torch.ones_like(labels), accumulate=True)
    assert torch.equal(rebuilt, confusion)


def test_nothing_is_logged_without_wandb():
    assert not log_table(None, "x", object())
    assert not log_roc_curve([], "roc", [0, 1], [0, 1])
    assert not log_confusion_matrix([pl.loggers.CSVLogger("/tmp")], "cm", [0, 1], [1, 0])


def test_offline_run_holds_the_table_and_charts(tmp_path):
    logger = pl.loggers.WandbLogger(save_dir=str(tmp_path), offline=True, project="test")
    torch.manual_seed(0)
    images = torch.randint(0, 256, (12, 1, 28, 28), dtype=torch.uint8)
    assert log_table([logger], "pictures/embeddings", embedding_table(torch.randn(12, 5), torch.arange(12) % 2, images),
                     step=3)
    assert log_roc_curve([logger], "eval/roc_interactive", np.array([0, 0.2, 1.0]), np.array([0, 0.8, 1.0]), auc=0.8)
    assert log_confusion_matrix([logger], "probe/confusion", [0, 1, 1, 2], [0, 1, 2, 2], ["x", "y", "z"])
    logger.experiment.finish()
    run = next(tmp_path.glob("wandb/offline-run-*"))
    table = json.loads(next(run.glob("files/media/table/pictures/embeddings_*.table.json")).read_text())
    assert len(table["data"]) == 12 and table["columns"][:3] == ["index", "image", "label"]
    # offline runs keep an image cell as the word "Image" (wandb/wandb#4611, open); online runs upload it
    assert {row[1] for row in table["data"]} <= {"Image"} or len(list(run.glob("files/media/images/*.png"))) == 12
    roc = json.loads(next(run.glob("files/media/table/eval/roc_interactive_table_*.table.json")).read_text())
    assert roc["data"] == [[0.0, 0.0], [0.2, 0.8], [1.0, 1.0]]
    assert list(run.glob("files/media/table/probe/confusion_table_*.table.json"))


def test_recipe_run_has_group_tags_config_and_model_artifact(tmp_path):
    """The real pretraining entry point: the W&B run carries its group, tags, job type, the whole resolved config
    (trainer and callbacks included) and the exported backbone folder as a model artifact."""
    from ssl_siamese.cli import main
    from ssl_siamese.methods.simclr import SimCLR
    from test_recipes import TINY, wandb_records

    result = main(SimCLR, "simclr", TINY + ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3",
                                            "--data.val_subset", "64", "--data.knn_bank_subset", "128",
                                            "--out", str(tmp_path)])
    records = wandb_records(tmp_path, (b"simclr-synthetic", b"pretrain", b"simclr-synthetic-backbone"))
    for expected in (b"simclr-synthetic", b"pretrain", b"tiny_cnn", b"simclr-synthetic-backbone",
                     b"max_epochs", b"limit_train_batches", b"temperature", b"knn_bank_subset"):
        assert expected in records, expected
    assert b"model.safetensors" in records  # the artifact's manifest lists the exported folder's files
    assert result["backbone_folder"].is_dir()


def test_wandb_artifact_reference_errors_are_clear(monkeypatch):
    from ssl_siamese.cli.loggers import fetch_wandb_artifact

    with pytest.raises(ValueError, match="wandb:ENTITY/PROJECT/NAME:ALIAS"):
        fetch_wandb_artifact("wandb:just-a-name")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", "/nonexistent")
    with pytest.raises(ValueError, match="wandb login"):
        fetch_wandb_artifact("wandb:me/proj/simclr-cifar10-backbone:best")


def test_sweep_example_parses_as_the_agent_runs_it(capsys):
    """W&B's agent runs the sweep's command with ``${args}`` as ``--name=value``: the recipe must accept it."""
    import yaml

    from ssl_siamese.cli import main
    from ssl_siamese.methods.simclr import SimCLR

    sweep = yaml.safe_load((Path(__file__).parents[1] / "recipes" / "sweep_quickstart.yaml").read_text())
    assert sweep["metric"] == {"name": "knn/top1", "goal": "maximize"}
    command = sweep["command"]
    assert command[:4] == ["${env}", "python", "-m", "ssl_siamese.recipes.simclr"] and command[-1] == "${args}"
    args = command[4:-1] + ["--model.temperature=0.5", "--model.lr=0.3", "--print_config"]
    with pytest.raises(SystemExit) as stop:
        main(SimCLR, "simclr", args)
    assert stop.value.code in (0, None)
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["model"]["temperature"] == 0.5 and config["model"]["lr"] == 0.3
    assert set(sweep["parameters"]) == {"model.temperature", "model.lr"}
