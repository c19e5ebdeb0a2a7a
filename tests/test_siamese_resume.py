"""SupervisedSiamese resumed from ``last.ckpt`` ends with the weights of the uninterrupted run, bit for bit; its
recipe resumed with ``--ckpt_path`` continues its W&B run.

SupervisedSiamese's own state is proved in-process (``test_resume_with_max_epochs_continues_the_epochs_batches``):
weights, optimizer and LR schedule (Lightning), the augmentation RNG (``RNGStateCheckpoint``) and the position in
the epoch's P x K batches (``IndexedBatchLoader``'s state), with the recipe's own checkpoint callback, mid-epoch
and from an epoch-end checkpoint. Where a run can be killed (SIGKILL at any step, Ctrl-C) is Lightning's loop,
proved once through a real command in ``test_resume_cli``; the recipe's ``--ckpt_path`` is
``test_a_resumed_run_continues_its_wandb_run``'s.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from ssl_siamese.callbacks.rng_state import RNGStateCheckpoint
from ssl_siamese.data import make_synthetic
from ssl_siamese.data.pk import PKDataModule
from ssl_siamese.data.loader import IndexedBatchLoader
from ssl_siamese.methods.siamese import SupervisedSiamese
from ssl_siamese.recipes.siamese import checkpoint_callback
from ssl_siamese.data.samplers import PKBatchSampler
from test_resume import Crash, CrashAtStep

from helpers import fashion_mnist_dir, offline_wandb_run_ids

DATA = fashion_mnist_dir()
ARGS = ["--data.dataset", "fashion_mnist", "--data.data_dir", str(DATA), "--data.download", "false",
        "--train_classes", "0-6", "--eval_classes", "Sneaker,Bag,Ankle boot", "--train_subset", "700",
        "--eval_subset", "150", "--p", "4", "--k", "4", "--batches_per_epoch", "6", "--epochs", "1",
        "--episodes", "20", "--log_to", "none"]


def test_indexed_loader_resumes_at_the_first_batch_not_trained():
    labels = make_synthetic(200, seed=0).labels
    loader = IndexedBatchLoader(torch.arange(200), labels, PKBatchSampler(labels, p=3, k=4, num_batches=6, seed=1),
                                batches_done=lambda: 4)
    loader.set_epoch(2)
    epoch_2 = [index.tolist() for index, _ in loader]
    state = loader.state_dict()
    assert state == {"epoch": 2, "batches_done": 4}
    resumed = IndexedBatchLoader(torch.arange(200), labels, PKBatchSampler(labels, p=3, k=4, num_batches=6, seed=1))
    resumed.load_state_dict(state)
    assert [index.tolist() for index, _ in resumed] == epoch_2[4:]
    assert [index.tolist() for index, _ in resumed] == epoch_2  # the next pass is the whole epoch again
    resumed.set_epoch(3)
    assert [index.tolist() for index, _ in resumed] != epoch_2


def fit_epochs(folder: Path, crash_at: int | None = None, ckpt_path: Path | None = None,
               every_n_steps: int = 1) -> SupervisedSiamese:
    """2 epochs of 4 P x K batches, bounded by ``max_epochs`` (so the LR schedule counts the loader's batches)."""
    pl.seed_everything(0, verbose=False)
    data = PKDataModule("synthetic", train_classes=range(6), eval_classes=range(6, 10), p=3, k=4,
                        batches_per_epoch=4, train_subset=300, eval_subset=40)
    model = SupervisedSiamese(backbone="tiny_cnn", backbone_kwargs={"width": 8}, batch_size=data.batch_size,
                              view_size=32, embedding_dim=16)
    callbacks = [RNGStateCheckpoint(), checkpoint_callback(folder, every_n_steps)]
    callbacks += [CrashAtStep(crash_at)] if crash_at else []
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=callbacks)
    try:
        trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    except Crash:
        pass
    return model


@pytest.mark.parametrize(("every_n_steps", "crash_at", "saved_step"), [(1, 2, 2), (0, 6, 4)])
def test_resume_with_max_epochs_continues_the_epochs_batches(tmp_path, every_n_steps, crash_at, saved_step):
    """``configure_optimizers`` counts the steps (``estimated_stepping_batches``) before the checkpoint is
    restored; the loader built for that count must not hide the checkpoint's position in the epoch.
    Mid-epoch (a checkpoint every step) and from the epoch-end checkpoint of a run that went on (the
    recipe's default, which Lightning's ModelCheckpoint(save_top_k=0) would not have written)."""
    expected = fit_epochs(tmp_path / "full").state_dict()
    fit_epochs(tmp_path / "killed", crash_at=crash_at, every_n_steps=every_n_steps)
    last = tmp_path / "killed" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == saved_step
    resumed = fit_epochs(tmp_path / "killed", ckpt_path=last, every_n_steps=every_n_steps).state_dict()
    assert all(torch.equal(expected[key], resumed[key]) for key in expected)


@pytest.mark.skipif(not (DATA / "train-images-idx3-ubyte.gz").is_file(), reason=f"no Fashion-MNIST IDX files at {DATA}")
@pytest.mark.parametrize("log_to", ["csv", "wandb"])
def test_recipe_logs_training_loss_and_before_after_metrics(tmp_path, monkeypatch, log_to):
    """``--log_to`` as in the other recipes: the training loss per step, the evaluation before and after."""
    from ssl_siamese.recipes.siamese import main

    monkeypatch.setenv("WANDB_MODE", "offline")
    args = list(ARGS)
    args[args.index("--log_to") + 1] = log_to
    result = main([*args, "--out", str(tmp_path)])
    if log_to == "csv":
        rows = list(csv_rows(tmp_path / "csv"))
        losses = [float(row["train/loss"]) for row in rows if row.get("train/loss")]
        assert len(losses) >= 1 and all(loss > 0 for loss in losses)
        logged = {key: float(value) for row in rows for key, value in row.items() if key.startswith("eval/") and value}
        for column in ("before", "after"):
            for metric in ("fewshot_1shot", "auc", "eer", "recall@1"):
                assert logged[f"eval/{column}/{metric}"] == pytest.approx(result[column][metric])
    else:  # the offline run file stores names and values (JSON) as text
        expected = [f"eval/{column}/{metric}".encode() for column in ("before", "after")
                    for metric in ("fewshot_1shot", "auc", "eer", "recall@1")]
        expected += [json.dumps(float(result[column][metric])).encode() for column in ("before", "after")
                     for metric in ("fewshot_1shot", "auc")]
        expected += [b"eval/roc", b"eval/roc_interactive"]  # the ROC as an image and as W&B's line chart
        records = wandb_records(tmp_path, (b"train/loss", b"eval/metrics", *expected))
        missing = [name for name in (b"train/loss", b"eval/metrics", *expected) if name not in records]
        assert not missing, missing  # the loss, the metrics table and each metric with its value
        assert list(tmp_path.glob("wandb/offline-run-*/files/media/table/eval/roc_interactive_table_*.table.json"))
    assert Path(result["roc_png"]).is_file()


@pytest.mark.skipif(not (DATA / "train-images-idx3-ubyte.gz").is_file(), reason=f"no Fashion-MNIST IDX files at {DATA}")
def test_a_resumed_run_continues_its_wandb_run(tmp_path, monkeypatch):
    from ssl_siamese.recipes.siamese import main

    monkeypatch.setenv("WANDB_MODE", "offline")
    args = [*ARGS, "--out", str(tmp_path)]
    args[args.index("--log_to") + 1] = "wandb"
    main(args)
    main([*args, "--epochs", "2", "--ckpt_path", str(tmp_path / "checkpoints" / "last.ckpt")])
    run_ids = offline_wandb_run_ids(tmp_path)
    assert len(run_ids) == 2 and len(set(run_ids)) == 1, run_ids


def wandb_records(out: Path, expected: tuple[bytes, ...], timeout_s: float = 30.0) -> bytes:
    """The bytes of the offline W&B run file under ``out``, once ``expected`` appear in it (W&B writes it
    from its own service process, shortly after the run finishes) or the timeout passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        records = b"".join(f.read_bytes() for f in out.glob("wandb/offline-run-*/run-*.wandb"))
        if all(name in records for name in expected) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def csv_rows(folder: Path):
    import csv

    (metrics,) = folder.glob("version_*/metrics.csv")
    with open(metrics, newline="") as file:
        yield from csv.DictReader(file)
