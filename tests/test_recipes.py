"""The recipes through the real LightningCLI on synthetic data, and their user-facing errors."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ssl_siamese import MoCo, SimCLR, SimSiam, load_backbone
from ssl_siamese.cli import main
from ssl_siamese.data import SSLDataModule

from helpers import fashion_mnist_dir, needs_fashion_mnist

METHODS = {"simclr": SimCLR, "moco": MoCo, "simsiam": SimSiam}
TINY = ["--model.backbone", "tiny_cnn", "--data.dataset", "synthetic", "--data.batch_size", "32",
        "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false"]


def wandb_records(out: Path, expected: tuple[bytes, ...], timeout_s: float = 30.0) -> bytes:
    """The raw bytes of the offline W&B run file(s) under ``out`` (metric names are stored as text).

    wandb's service process writes the file asynchronously, shortly after ``run.finish()`` returns,
    so wait until every name in ``expected`` appears (or the timeout passes).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        files = list(out.glob("wandb/offline-run-*/run-*.wandb"))
        records = b"".join(f.read_bytes() for f in files)
        if all(name in records for name in expected) or time.monotonic() > deadline:
            assert files, f"no offline W&B run under {out}"
            return records
        time.sleep(0.2)


@pytest.fixture(autouse=True)
def offline_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


@pytest.mark.parametrize("name", METHODS)
def test_recipe_fast_dev_run(name, tmp_path):
    extra = ["--model.queue_size", "64"] if name == "moco" else []
    main(METHODS[name], name, TINY + extra + ["--trainer.fast_dev_run", "true", "--out", str(tmp_path)])
    backbone, _, metadata = load_backbone(tmp_path / "exported_models" / "backbone.pt")
    assert metadata["method"] == METHODS[name].__name__ and metadata["architecture"] == "tiny_cnn"
    assert backbone(torch.zeros(2, 3, 32, 32)).shape == (2, 128)


# the metrics, pictures and checkpoint come from the recipe's callbacks, the same for every method: one method (MoCo,
# with a queue and an EMA target, the most to go wrong) proves them; test_recipe_fast_dev_run goes through each method's recipe
@pytest.mark.parametrize("name", ["moco"])
def test_recipe_logs_metrics_to_offline_wandb(name, tmp_path):
    extra = ["--model.queue_size", "64"] if name == "moco" else []
    main(METHODS[name], name, TINY + extra + [
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "6", "--trainer.log_every_n_steps", "1",
        "--data.val_subset", "64", "--data.knn_bank_subset", "256", "--out", str(tmp_path)])
    metrics = (b"train/loss", b"train/ema_momentum", b"knn/top1", b"knn/top5", b"train/embedding_std", b"train/img_per_s",
               b"probe/val_top1", b"pictures/embedding_pca", b"pictures/neighbours", b"pictures/embeddings")
    records = wandb_records(tmp_path, expected=metrics)
    for metric in metrics:
        assert metric in records, f"{metric!r} missing from the W&B run"
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    pictures = {p.name for p in (tmp_path / "pictures").glob("*.png")}
    assert {"embedding_pca_epoch001.png", "neighbours_epoch001.png"} <= pictures, pictures


def run_module(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout)


def test_help_and_print_config_with_overrides(capsys):
    # --help as a command is test_cli_usability's (one interpreter costs ~6 s); here in-process
    with pytest.raises(SystemExit) as exit_info:
        main(SimCLR, "simclr", ["--help"])
    assert exit_info.value.code in (0, None) and "--model.temperature" in capsys.readouterr().out
    result = run_module("ssl_siamese.recipes.moco", "--config", "recipes/cifar10_moco.yaml",
                        "--model.temperature", "0.2", "--trainer.max_epochs", "800", "--print_config")
    assert result.returncode == 0, result.stderr
    assert "temperature: 0.2" in result.stdout and "max_epochs: 800" in result.stdout


def test_missing_cifar10_offline_stops_with_a_clear_message(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(SimCLR, "simclr", ["--data.data_dir", str(tmp_path / "nothing"), "--data.download", "false",
                                "--out", str(tmp_path / "out")])
    message = str(exit_info.value.code)
    assert str((tmp_path / "nothing").resolve()) in message or "nothing" in message


def test_unknown_backbone_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(SimCLR, "simclr", TINY + ["--model.backbone", "resnet1000", "--out", str(tmp_path)])
    assert "Valid names" in str(exit_info.value.code)


def test_log_to_none_trains_without_a_logger(tmp_path):
    """The learning-rate monitor needs a logger; with none it is dropped instead of crashing."""
    main(SimCLR, "simclr", TINY + ["--trainer.fast_dev_run", "true", "--log_to", "none", "--out", str(tmp_path)])
    assert (tmp_path / "exported_models" / "backbone.pt").is_file()


def test_empty_image_folder_is_a_clear_error(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main(SimCLR, "simclr", TINY + ["--data.dataset", "folder", "--data.data_dir", str(tmp_path / "images"),
                                       "--out", str(tmp_path / "out")])
    message = str(exit_info.value.code)
    assert "No image files" in message and "it is empty" in message and "--data.data_dir" in message


def test_unknown_option_lists_the_valid_ones(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(SimCLR, "simclr", TINY + ["--model.tempurature", "0.2", "--out", str(tmp_path)])
    message = str(exit_info.value.code)
    assert "did you mean --model.temperature" in message and "projection_dim" in message


def test_resuming_a_checkpoint_of_another_method_is_a_clear_error(tmp_path):
    main(SimSiam, "simsiam", TINY + ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
                                     "--data.val_subset", "64", "--data.knn_bank_subset", "128",
                                     "--knn_at_start", "false", "--log_to", "none", "--out", str(tmp_path / "simsiam")])
    checkpoint = tmp_path / "simsiam" / "checkpoints" / "last.ckpt"
    with pytest.raises(SystemExit) as exit_info:
        main(MoCo, "moco", TINY + ["--model.queue_size", "64", "--ckpt_path", str(checkpoint),
                                   "--log_to", "none", "--out", str(tmp_path / "moco")])
    message = str(exit_info.value.code)
    assert "does not fit this MoCo (it was saved by SimSiam)" in message and "missing" in message


def test_lars_bf16_channels_last_and_warmup_run_on_cpu(tmp_path):
    """The speed options fall back cleanly on a CPU: LARS, bf16 autocast, channels_last, warm-up."""
    summary = main(MoCo, "moco", TINY + [
        "--model.queue_size", "64", "--model.optimizer", "lars", "--model.channels_last", "true",
        "--model.warmup_epochs", "0.5", "--trainer.precision", "bf16-mixed", "--trainer.max_epochs", "1",
        "--trainer.limit_train_batches", "3", "--data.val_subset", "64", "--data.knn_bank_subset", "128",
        "--knn_at_start", "false", "--log_to", "none", "--out", str(tmp_path)])
    assert summary["epochs"] == 1 and torch.isfinite(torch.tensor(summary["knn_history"][-1][1]))


def test_resuming_with_an_added_step_checkpoint_keeps_last_ckpt_the_newest(tmp_path):
    """Resumed with a ModelCheckpoint added (the README's mid-epoch flags), Lightning used to write
    last-v1.ckpt and leave last.ckpt at the first run's end, so the next --ckpt_path resumed from stale state."""
    args = TINY + ["--log_to", "none", "--knn_at_start", "false", "--trainer.limit_train_batches", "4",
                   "--out", str(tmp_path)]
    main(SimCLR, "simclr", args + ["--trainer.max_epochs", "1"])
    main(SimCLR, "simclr", args + ["--trainer.max_epochs", "2", "--trainer.callbacks+=ModelCheckpoint",
                                   "--trainer.callbacks.every_n_train_steps", "2",
                                   "--ckpt_path", str(tmp_path / "checkpoints" / "last.ckpt")])
    names = sorted(path.name for path in (tmp_path / "checkpoints").glob("last*.ckpt"))
    assert names == ["last.ckpt"]
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 8


def test_a_resumed_run_does_not_measure_or_draw_the_untrained_weights_again(tmp_path, caplog):
    """The at-initialisation kNN ran before fit() loaded the checkpoint: on resume it measured (and drew,
    and logged) a random network as if it were the start of the run."""
    args = TINY + ["--log_to", "csv", "--trainer.limit_train_batches", "2", "--data.val_subset", "64",
                   "--data.knn_bank_subset", "256", "--pictures_every_n_epochs", "1", "--out", str(tmp_path)]
    first = main(SimCLR, "simclr", args + ["--trainer.max_epochs", "1"])
    start_picture = tmp_path / "pictures" / "embedding_pca_epoch000.png"
    drawn = start_picture.stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level("INFO"):
        resumed = main(SimCLR, "simclr", args + ["--trainer.max_epochs", "2",
                                                 "--ckpt_path", str(tmp_path / "checkpoints" / "last.ckpt")])
    assert "at initialisation ..." not in caplog.text and "Resuming: the kNN accuracy" in caplog.text
    assert start_picture.stat().st_mtime_ns == drawn
    assert resumed["knn_history"][:2] == first["knn_history"] and [e for e, *_ in resumed["knn_history"]] == [-1, 0, 1]


@needs_fashion_mnist
def test_knn_figures_name_their_step_beside_the_raw_pixel_baseline_and_the_last_is_the_final_weights(
        tmp_path, capsys):
    """Stopped by max_steps mid-epoch (6 steps, 4 per epoch) without the kNN at start: before, the step-4
    figure was printed as "at start -> ... after 2 epochs" and written beside "steps": 6, with no raw-pixel
    baseline. Now the last figure is measured at step 6 and says so, and the raw pixels' kNN, from the same
    bank and queries, is printed, logged and exported (checked against a float64 reference here)."""
    from test_knn import reference_scores

    out = tmp_path / "out"
    summary = main(SimCLR, "simclr", [
        "--model.backbone", "tiny_cnn", "--data.dataset", "fashion_mnist", "--data.data_dir", str(fashion_mnist_dir()),
        "--data.batch_size", "16", "--data.train_subset", "64", "--data.knn_bank_subset", "64",
        "--data.val_subset", "32", "--trainer.max_steps", "6", "--trainer.accelerator", "cpu",
        "--trainer.enable_progress_bar", "false", "--knn_at_start", "false", "--knn.k", "5", "--log_to", "csv",
        "--pictures_every_n_epochs", "0", "--out", str(out)])
    printed = capsys.readouterr().out
    assert [(m.epoch, m.step) for m in summary["knn_history"]] == [(0, 4), (1, 6)]
    last = summary["knn_history"][-1]
    # the raw-pixel reference: the recipe's bank and queries, normalised as for evaluation, flattened
    data = SSLDataModule("fashion_mnist", str(fashion_mnist_dir()), batch_size=16, train_subset=64,
                         knn_bank_subset=64, val_subset=32)
    data.setup("fit")
    normalise = SimCLR(backbone="tiny_cnn", view_size=28, mean=data.mean, std=data.std).augmentation.normalize
    bank, query = (normalise(split.images).flatten(1).double() for split in (data.bank_data, data.query_data))
    scores = reference_scores(query, bank, data.bank_data.labels, k=5, t=0.1)
    pixels_top1 = float((scores.argmax(1) == data.query_data.labels.numpy()).mean())
    assert summary["knn_pixels"].top1 == pytest.approx(pixels_top1, abs=1e-6)
    assert (f"kNN top-1: {summary['knn_history'][0].top1:.4f} at step 4 (1 epoch) -> {last.top1:.4f} at step 6 "
            f"(1.5 epochs); raw pixels {pixels_top1:.4f} (same k, bank and queries)  [k=5, t=0.1, bank 64 training "
            "images, 32 queries: test split of fashion_mnist]") in printed
    folder = out / "exported_models" / "backbone"
    config = json.loads((folder / "config.json").read_text())["ssl_siamese"]
    assert config["steps"] == config["knn_evaluation"]["step"] == 6
    assert config["metrics"]["knn_top1"] == pytest.approx(last.top1)
    assert config["metrics"]["knn_top1_raw_pixels"] == pytest.approx(pixels_top1)
    card = (folder / "README.md").read_text()
    assert f"| kNN top-1 at step 6 (1.5 epochs) | {last.top1:.4f} |" in card
    assert f"| Data | fashion_mnist {Path(fashion_mnist_dir()).resolve()} |" in card
    assert "Queries (kNN and probe): test split of fashion_mnist" in card and "(test split)" not in card
    assert "knn/pixels_top1" in "".join(path.read_text() for path in out.rglob("metrics.csv"))
