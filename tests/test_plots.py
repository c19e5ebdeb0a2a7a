"""Evaluation figures render to non-empty images, log_figure always writes a PNG, EmbeddingPictures draws."""

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

from ssl_siamese import SimCLR, SSLDataModule
from ssl_siamese.evaluation.pictures import EmbeddingPictures
from ssl_siamese.evaluation.plots import (
    confusion_matrix_figure,
    embedding_projection_figure,
    figure_to_array,
    log_figure,
    neighbour_grid_figure,
    pca_2d,
    roc_figure,
)

pytestmark = pytest.mark.filterwarnings("ignore:.*overridden `on_after_batch_transfer`")


@pytest.fixture(autouse=True)
def offline_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def assert_picture(array):
    assert array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3
    assert array.shape[0] > 100 and array.shape[1] > 100
    assert array.min() < 128 < array.max()  # something is drawn on the white background


def test_pca_matches_the_top_principal_components():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(300, 6, generator=generator) * torch.tensor([5.0, 3.0, 0.1, 0.1, 0.1, 0.1])
    points = pca_2d(features)
    centred = (features - features.mean(0)).double()
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)  # float64 reference
    reference = centred @ vh[:2].T
    torch.testing.assert_close(points.double().abs(), reference.abs(), atol=1e-3, rtol=1e-3)  # signs are free
    torch.manual_seed(123)
    state = torch.get_rng_state()
    pca_2d(features)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random stream is untouched


def test_figures_render(tmp_path):
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(200) % 4
    features = torch.randn(200, 16, generator=generator) + 3 * torch.eye(16)[labels]
    images = torch.randint(0, 256, (3, 5, 1, 28, 28), dtype=torch.uint8, generator=generator)
    figures = {
        "pca": embedding_projection_figure(features, labels, ["a", "b", "c", "d"]),
        "grid": neighbour_grid_figure(images[:, 0], images[:, 1:], torch.tensor([0, 1, 2]),
                                      torch.tensor([[0, 1, 0, 0], [1, 1, 2, 1], [2, 2, 2, 0]])),
        "rgb_grid": neighbour_grid_figure(torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8),
                                          torch.randint(0, 256, (2, 3, 3, 8, 8), dtype=torch.uint8)),
        "confusion": confusion_matrix_figure(torch.tensor([[5, 1, 0], [2, 7, 1], [0, 0, 9]]), ["x", "y", "z"]),
        "roc": roc_figure(np.array([0.0, 0.1, 0.5, 1.0]), np.array([0.0, 0.7, 0.95, 1.0]), auc=0.9, eer=0.2),
    }
    for name, figure in figures.items():
        assert_picture(figure_to_array(figure))
        path = log_figure(None, f"eval/{name}", figure, tmp_path)
        assert path == tmp_path / f"eval_{name}.png"
        assert_picture(np.asarray(Image.open(path).convert("RGB")))


def test_log_figure_writes_png_without_logger_and_logs_to_wandb(tmp_path):
    figure = roc_figure([0, 1], [0, 1], auc=0.5, eer=0.5)
    path = log_figure([], "roc/test", figure, tmp_path / "no_logger")
    assert path.is_file() and path.name == "roc_test.png"
    array = np.full((20, 30, 3), 200, dtype=np.uint8)
    logger = pl.loggers.WandbLogger(save_dir=str(tmp_path), offline=True, project="test")
    path = log_figure(logger, "pictures/array", array, tmp_path / "with_wandb", step=3)
    assert np.array_equal(np.asarray(Image.open(path)), array)
    logger.experiment.finish()
    assert list(tmp_path.glob("wandb/offline-run-*/files/media/images/pictures/array_*.png"))


def train_with_pictures(tmp_path, every_n_epochs: int, validate_first: bool = False) -> EmbeddingPictures:
    """Two epochs of SimCLR on synthetic data with an ``EmbeddingPictures`` writing under ``tmp_path``."""
    pl.seed_everything(0, verbose=False)
    model = SimCLR(backbone="tiny_cnn", view_size=32, batch_size=32)
    datamodule = SSLDataModule("synthetic", batch_size=32, train_subset=64, knn_bank_subset=96, val_subset=64)
    pictures = EmbeddingPictures(every_n_epochs=every_n_epochs, max_queries=50, grid_queries=4, neighbours=3)
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
                         callbacks=[pictures])
    if validate_first:  # the untrained backbone: epoch 0
        trainer.validate(model, datamodule=datamodule, verbose=False)
    trainer.fit(model, datamodule=datamodule)
    return pictures


def test_embedding_pictures_callback_writes_both_pictures(tmp_path):
    pictures = train_with_pictures(tmp_path, every_n_epochs=5)  # 2 is not a multiple of 5: drawn at fit end
    assert sorted(p.name for p in pictures.saved) == ["embedding_pca_epoch002.png", "neighbours_epoch002.png"]
    for path in pictures.saved:
        assert path.parent == tmp_path / "pictures"
        assert_picture(np.asarray(Image.open(path).convert("RGB")))


def test_embedding_pictures_keep_one_file_per_drawing(tmp_path):
    """Drawn every epoch and at validate time: no drawing overwrites another's file."""
    train_with_pictures(tmp_path, every_n_epochs=1, validate_first=True)
    names = sorted(path.name for path in (tmp_path / "pictures").glob("*.png"))
    assert names == [f"{kind}_epoch{epoch:03d}.png" for kind in ("embedding_pca", "neighbours") for epoch in (0, 1, 2)]
    assert len({path.read_bytes() for path in (tmp_path / "pictures").glob("embedding_pca_*.png")}) == 3
