"""Real learning on real data: a few CPU minutes of SimCLR beat the same backbone at random init.

Fashion-MNIST where the library finds it (conftest.py: ./data, Debian's copy, ../shared/data). The
quickstart's SimCLR settings (``recipes/quickstart.yaml``: lr, temperature, views) on a smaller run: 8,192
images in batches of 128 for 3 epochs (192 steps) with a tiny_cnn of width 16. The kNN figures at random
init, after training and of the raw pixels are printed (pytest -s shows them): 0.5865 -> 0.6690, raw pixels
0.7405 (2026-12-07). BENCHMARKS.md records the former run (16,384 images, width 32, 4 epochs: 0.6180 -> 0.6885).
"""

from pathlib import Path

import pytest

from ssl_siamese import SimCLR
from ssl_siamese.cli import main

from helpers import fashion_mnist_dir, needs_fashion_mnist

DATA = fashion_mnist_dir()


@pytest.mark.slow
@needs_fashion_mnist
def test_simclr_beats_random_init_on_fashion_mnist(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    summary = main(SimCLR, "simclr", [
        "--config", str(Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"),
        "--data.data_dir", str(DATA), "--data.download", "false",
        "--data.train_subset", "8192", "--data.batch_size", "128", "--model.backbone_kwargs", "{width: 16}",
        "--trainer.max_epochs", "3", "--trainer.enable_progress_bar", "false", "--pictures_every_n_epochs", "0",
        "--log_to", "csv", "--out", str(tmp_path)])
    history = summary["knn_history"]
    at_init, trained = history[0][1], history[-1][1]
    print(f"\nFashion-MNIST kNN top-1 (tiny_cnn width 16, 8k images, 3 epochs): random init {at_init:.4f}, "
          f"SimCLR {trained:.4f}, raw pixels {summary['knn_pixels'].top1:.4f}")
    assert history[0][0] == -1, "the first kNN measurement is the untrained backbone"
    assert trained > at_init + 0.04, f"SimCLR {trained:.4f} is not clearly above random init {at_init:.4f}"
