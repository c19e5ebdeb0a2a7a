"""kornia pipelines as the views of a method: from Python and from a recipe YAML, seeded, on real data."""

from __future__ import annotations

from pathlib import Path

import kornia.augmentation as K
import pytest
import torch
import yaml

from ssl_siamese.cli import main
from ssl_siamese.views.kornia_views import KorniaViews
from ssl_siamese.methods.simclr import SimCLR
from ssl_siamese.methods.vicreg import VICReg

FASHION_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-mnist"
MEAN, STD = (0.2860, 0.2860, 0.2860), (0.3530, 0.3530, 0.3530)


def crop_flip_elastic(size: int = 28) -> list[torch.nn.Module]:
    return [K.RandomResizedCrop((size, size), scale=(0.2, 1.0)), K.RandomHorizontalFlip(),
            K.RandomElasticTransform(p=0.5)]


def test_views_are_the_kornia_pipeline_normalised_with_the_models_statistics():
    images = torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8)
    views = KorniaViews(crop_flip_elastic(), size=28)
    model = SimCLR(backbone="tiny_cnn", view_size=28, mean=MEAN, std=STD, augmentation=views)
    assert model.augmentation is views and views.mean.flatten().tolist() == pytest.approx(MEAN)
    torch.manual_seed(3)
    got = views(images)
    torch.manual_seed(3)  # the reference: the same kornia ops run directly, then (x - mean) / std
    reference = K.AugmentationSequential(*crop_flip_elastic())(images.float().div(255).expand(-1, 3, -1, -1))
    expected = (reference - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    assert got.shape == (6, 3, 28, 28)
    torch.testing.assert_close(got, expected)
    torch.manual_seed(3)
    assert torch.equal(views(images), got)  # seeded: the same views again
    assert not torch.equal(views(images), got)  # unseeded draws differ
    assert [v.shape for v in views.views(images, 3)] == [(6, 3, 28, 28)] * 3


def test_wrong_inputs_say_how_to_fix_them():
    images = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"made \(24, 24\) views, the model expects 32 x 32"):
        KorniaViews([K.RandomCrop((24, 24))], size=32)(images)
    with pytest.raises(ValueError, match="images of one size"):
        KorniaViews([K.RandomResizedCrop((32, 32))], size=32)(images, sizes=torch.full((2, 2), 32))
    with pytest.raises(ValueError, match="kornia augmentation modules"):
        KorniaViews([], size=32)
    with pytest.raises(ValueError, match="both mean and std"):
        KorniaViews([K.RandomResizedCrop((32, 32))], mean=(0.5, 0.5, 0.5))


def test_a_method_with_kornia_views_on_both_views_trains():
    model = VICReg(backbone="tiny_cnn", view_size=28, projection_dim=32, hidden_dim=32, batch_size=8,
                   augmentation=KorniaViews(crop_flip_elastic(), size=28),
                   augmentation_view1=KorniaViews([K.RandomResizedCrop((28, 28)),
                                                   K.RandomGaussianBlur((3, 3), (0.1, 2.0))], size=28))
    images = torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8)
    view0, view1 = (augment(images) for augment in model.view_augmentations())
    loss, _ = model.shared_step(view0, view1)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.backbone.parameters()), "the loss reaches the backbone"


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason=f"real Fashion-MNIST not found at {FASHION_MNIST}")
def test_recipe_yaml_with_a_kornia_pipeline_runs_and_repeats_under_its_seed(tmp_path):
    config = {
        "seed_everything": 7,
        "model": {"backbone": "tiny_cnn", "augmentation": {
            "class_path": "ssl_siamese.views.kornia_views.KorniaViews",
            "init_args": {"size": 28, "ops": [
                {"class_path": "kornia.augmentation.RandomResizedCrop",
                 "init_args": {"size": [28, 28], "scale": [0.2, 1.0]}},
                {"class_path": "kornia.augmentation.RandomHorizontalFlip"},
                {"class_path": "kornia.augmentation.RandomElasticTransform", "init_args": {"p": 0.5}}]}}},
        "data": {"dataset": "fashion_mnist", "data_dir": str(FASHION_MNIST), "download": False,
                 "train_subset": 256, "val_subset": 128, "knn_bank_subset": 256, "batch_size": 64,
                 "num_workers": 0},
        "trainer": {"max_epochs": 1, "limit_train_batches": 3, "accelerator": "cpu",
                    "enable_progress_bar": False},
        "knn_at_start": False, "online_probe": False, "pictures_every_n_epochs": 0, "log_to": "none",
    }
    path = tmp_path / "kornia.yaml"
    path.write_text(yaml.safe_dump(config))
    weights = []
    for run in ("a", "b"):
        result = main(SimCLR, "simclr", ["--config", str(path), "--out", str(tmp_path / run)])
        assert result["knn_history"], "the kNN monitor ran on the real validation images"
        weights.append(torch.load(result["backbone"], weights_only=True)["state_dict"])
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0]), "same seed, same weights"
    init = SimCLR(backbone="tiny_cnn").backbone.state_dict()
    assert any(not torch.equal(weights[0][k], init[k]) for k in init if k in weights[0]), "training moved weights"
