"""The method registry: every method's Lightning checkpoint loads through ``load_backbone`` and the recipes.

One tiny fit per method (module-scoped), its ``last.ckpt`` then goes through ``load_backbone``, the
``linear_probe`` recipe on real Fashion-MNIST, and (for BYOL, whose checkpoint comes from the real
``ssl-siamese byol`` entry point) ``embed`` and ``finetune``. Before the registry, BYOL, Barlow Twins,
VICReg and DINO checkpoints were refused ("does not match any of SimCLR, MoCo, SimSiam, SupervisedSiamese, MAE").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

import ssl_siamese
import ssl_siamese.methods
from ssl_siamese import SSLDataModule, load_backbone
from ssl_siamese.cli.console import main as console_main
from ssl_siamese.data.pk import PKDataModule
from ssl_siamese.methods.base import SiameseModule
from ssl_siamese.methods.registry import METHODS, method_class
from ssl_siamese.recipes import linear_probe
from ssl_siamese.recipes.embed import run_embed

from helpers import fashion_mnist_dir, needs_fashion_mnist

REPO = Path(__file__).resolve().parents[1]
FASHION_MNIST = fashion_mnist_dir()
# MAE's encoder: a two-block timm ViT on 32 px (tests/test_methods_mae.py's)
TINY_VIT = {"backbone": "timm/vit_tiny_patch16_224", "view_size": 32, "decoder_dim": 32, "decoder_depth": 1,
            "decoder_heads": 2, "backbone_kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 2,
                                                    "num_heads": 3}}
# small heads: the defaults (Barlow Twins' and VICReg's 3 x 8192, DINO's 65536 prototypes) take a minute on 2 cores
SMALL_HEADS = {"SimCLR": {"hidden_dim": 64, "projection_dim": 32}, "MoCo": {"hidden_dim": 64, "queue_size": 32},
               "SimSiam": {"projection_dim": 64, "predictor_hidden_dim": 32},
               "SupervisedSiamese": {"embedding_dim": 16}, "BYOL": {"hidden_dim": 64, "projection_dim": 32},
               "BarlowTwins": {"hidden_dim": 64, "projection_dim": 64},
               "VICReg": {"hidden_dim": 64, "projection_dim": 64},
               "DINO": {"output_dim": 256, "hidden_dim": 64, "bottleneck_dim": 32, "local_views": 2}}
PROBE = ["--data.dataset", "fashion_mnist", "--data.data_dir", str(FASHION_MNIST), "--data.download", "false",
         "--subset", "200", "--batch_size", "100", "--log_to", "none"]


def byol_from_the_recipe(out: Path) -> Path:
    """``ssl-siamese byol`` (= ``python -m ssl_siamese.recipes.byol``) on real Fashion-MNIST, tiny_cnn, 3 steps."""
    console_main(["byol", "--model.backbone", "tiny_cnn", "--model.hidden_dim", "64", "--model.projection_dim", "32",
                  "--data.dataset", "fashion_mnist", "--data.data_dir", str(FASHION_MNIST), "--data.download", "false",
                  "--data.batch_size", "32", "--data.train_subset", "256", "--data.val_subset", "64",
                  "--data.knn_bank_subset", "128", "--trainer.max_steps", "3", "--trainer.accelerator", "cpu",
                  "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
                  "--online_probe", "false", "--pictures_every_n_epochs", "0", "--log_to", "none", "--out", str(out)])
    return out / "checkpoints" / "last.ckpt"


def fit_in_process(name: str, path: Path) -> Path:
    """Two steps of ``name`` on a tiny backbone with small heads, saved as Lightning saves ``last.ckpt``."""
    pl.seed_everything(0, verbose=False)
    if name == "SupervisedSiamese":  # labelled P x K batches
        data = PKDataModule("synthetic", train_classes=range(6), eval_classes=range(6, 10), p=3, k=4,
                            batches_per_epoch=2, train_subset=120, eval_subset=40)
    else:
        data = SSLDataModule("synthetic", batch_size=12, train_subset=36)
    kwargs = TINY_VIT if name == "MAE" else {"backbone": "tiny_cnn", "view_size": 28}
    model = method_class(name)(**kwargs, **SMALL_HEADS.get(name, {}), batch_size=12)
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, datamodule=data)
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """``{method name: last.ckpt}`` for every registered method: BYOL's from the recipe, the others in-process."""
    folder = tmp_path_factory.mktemp("checkpoints")
    found = {}
    for name in METHODS:
        if name == "BYOL" and FASHION_MNIST.is_dir():
            found[name] = byol_from_the_recipe(folder / "byol")
        else:
            found[name] = fit_in_process(name, folder / f"{name}.ckpt")
    return found


def features_of(path: Path) -> torch.Tensor:
    """The backbone inside a checkpoint, read by hand, on fixed images: what ``load_backbone`` must give."""
    payload = torch.load(path, weights_only=True, map_location="cpu")
    name = payload["ssl_siamese_method"]
    hparams = {key: value for key, value in payload["hyper_parameters"].items() if not key.startswith("_")}
    model = method_class(name)(**hparams)
    model.load_state_dict(payload["state_dict"])
    return model.backbone.eval()(fixed_images(model.hparams.view_size))


def fixed_images(size: int) -> torch.Tensor:
    return torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", list(METHODS))
def test_every_methods_checkpoint_loads_by_its_recorded_method(checkpoints, name):
    backbone, transform, metadata = load_backbone(checkpoints[name])
    assert metadata["method"] == name and transform is not None and not backbone.training
    torch.testing.assert_close(backbone(fixed_images(metadata["image_size"])), features_of(checkpoints[name]))


@needs_fashion_mnist
@pytest.mark.parametrize("name", list(METHODS))
def test_every_methods_checkpoint_goes_through_the_linear_probe_recipe(checkpoints, name, tmp_path):
    result = linear_probe.main(["--backbone", str(checkpoints[name]), "--epochs", "20", "--out", str(tmp_path),
                                *PROBE])
    assert result["method"] == name and result["num_train"] == result["num_test"] == 200
    assert result["top1"] > 0.35, result["top1"]  # chance 0.1; measured 0.49 (BarlowTwins) to 0.645 (SimCLR, BYOL)


@needs_fashion_mnist
def test_recipe_checkpoint_is_its_export_and_goes_through_embed_and_finetune(checkpoints, tmp_path):
    """BYOL's ``last.ckpt`` from ``ssl-siamese byol`` (LightningCLI's hyper-parameters carry ``_instantiator``):
    the same backbone as the recipe's export, and ``embed`` and ``finetune`` read it with ``load_backbone``."""
    ckpt = checkpoints["BYOL"]
    assert "_instantiator" in torch.load(ckpt, weights_only=True)["hyper_parameters"]
    backbone, transform, metadata = load_backbone(ckpt)
    exported, _, _ = load_backbone(ckpt.parents[1] / "exported_models" / "backbone.pt")
    assert metadata["architecture"] == "tiny_cnn" and metadata["data"] == "fashion_mnist"
    images = transform(torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8))
    torch.testing.assert_close(backbone(images), exported(images))
    (tmp_path / "images").mkdir()
    rng = np.random.default_rng(0)
    for index in range(3):
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(tmp_path / "images" / f"{index}.png")
    embedded = run_embed(ckpt, tmp_path / "images", out=tmp_path / "embeddings.npz", progress=False)
    saved = np.load(tmp_path / "embeddings.npz")
    assert embedded["num_images"] == 3 and saved["embeddings"].shape == (3, metadata["feature_dim"])
    assert np.isfinite(saved["embeddings"]).all()
    result = linear_probe.main(["--backbone", str(ckpt), "--finetune", "--epochs", "1", "--out",
                                str(tmp_path / "finetune"), *PROBE])
    assert result["mode"] == "finetune" and result["method"] == "BYOL" and result["num_test"] == 200


@pytest.mark.parametrize("name", ["SimCLR", "MoCo", "SimSiam", "SupervisedSiamese"])
def test_checkpoint_without_the_recorded_method_is_matched_by_trying_each(checkpoints, name, tmp_path):
    """Checkpoints of these four may predate ``ssl_siamese_method`` (2026-11-23): every method is tried in turn."""
    payload = torch.load(checkpoints[name], weights_only=True, map_location="cpu")
    del payload["ssl_siamese_method"]
    torch.save(payload, tmp_path / "old.ckpt")
    backbone, _, metadata = load_backbone(tmp_path / "old.ckpt")
    assert metadata["method"] == name
    torch.testing.assert_close(backbone(fixed_images(metadata["image_size"])), features_of(checkpoints[name]))


def test_checkpoint_of_an_unregistered_method_says_what_to_do(checkpoints, tmp_path):
    payload = torch.load(checkpoints["SimCLR"], weights_only=True, map_location="cpu")
    payload["ssl_siamese_method"] = "MyMethod"  # a user's SiameseModule subclass writes its own name
    torch.save(payload, tmp_path / "mine.ckpt")
    with pytest.raises(ValueError, match=r"MyMethod.*not a registered method.*SimCLR.*export_backbone"):
        load_backbone(tmp_path / "mine.ckpt")


def test_names_resolve_by_class_and_by_recipe_name():
    assert method_class("BYOL").__name__ == "BYOL" and method_class("barlow_twins").__name__ == "BarlowTwins"
    assert method_class("siamese").__name__ == "SupervisedSiamese"
    with pytest.raises(ValueError, match=r"Unknown method 'BYLO'; did you mean BYOL\?.*SimCLR, MoCo"):
        method_class("BYLO")


def test_the_registry_is_the_one_list_of_methods():
    """Each row: a ``SiameseModule`` of that name, a public name of the package, its recipe module, named in
    the README, and a YAML config (SupervisedSiamese: its recipe's Markdown notes)."""
    for name, module in METHODS.items():
        cls = method_class(name)
        assert issubclass(cls, SiameseModule) and cls.__name__ == name and cls.__module__ == module
        assert getattr(ssl_siamese, name) is cls and getattr(ssl_siamese.methods, name) is cls
        assert name in ssl_siamese.__all__ and name in ssl_siamese.methods.__all__
        recipe = module.rsplit(".", 1)[1]
        assert name in (REPO / "ssl_siamese" / "recipes" / f"{recipe}.py").read_text(), recipe
        assert f"`{name}`" in (REPO / "README.md").read_text(), name
        assert list((REPO / "recipes").glob(f"*{recipe}*")), recipe


def test_supervised_siamese_starts_from_an_export_built_with_backbone_kwargs(tmp_path):
    """``pretrained=`` rebuilds the exported backbone with its recorded constructor arguments (width 8 here)."""
    import torch

    from ssl_siamese import SimCLR, SupervisedSiamese, export_backbone

    source = SimCLR(backbone="tiny_cnn", backbone_kwargs={"width": 8}, view_size=16)
    path = export_backbone(source, tmp_path / "backbone.pt")
    model = SupervisedSiamese(pretrained=str(path), view_size=16)
    assert model.feature_dim == 32
    for name, value in source.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[name], value), name
