"""Real learning on real data: a few CPU minutes of SimCLR beat the same backbone at random init.

Fashion-MNIST where the library finds it (conftest.py: ./data, Debian's copy, ../shared/data). Both
numbers are printed (pytest -s shows them) and recorded in BENCHMARKS.md.
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
        "--trainer.max_epochs", "4", "--trainer.enable_progress_bar", "false",
        "--log_to", "csv", "--out", str(tmp_path)])
    history = summary["knn_history"]
    at_init, trained = history[0][1], history[-1][1]
    print(f"\nFashion-MNIST kNN top-1 (tiny_cnn, 16k images, 4 epochs): random init {at_init:.4f}, "
          f"SimCLR {trained:.4f}")
    assert history[0][0] == -1, "the first kNN measurement is the untrained backbone"
    assert trained > at_init + 0.04, f"SimCLR {trained:.4f} is not clearly above random init {at_init:.4f}"
