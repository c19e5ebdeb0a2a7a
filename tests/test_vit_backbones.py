"""Vision Transformer backbones: timm ViTs with their own arguments, torchvision's vit_b_16, class-token or mean
pooling, every method training with one, and the export round trip (ssl_siamese, timm by file and by folder, the
model card's timm snippet) rebuilding the same model from what the export records.

The pooled features are checked against the libraries' own token outputs (timm's ``forward_features``,
torchvision's encoder), not against our code.
"""

from __future__ import annotations

import json
import re

import pytest
import timm
import torch
import torchvision
from helpers import fashion_mnist_dir, needs_fashion_mnist
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from ssl_siamese import export_backbone, load_backbone
from ssl_siamese.backbones import build_backbone, check_input_size, vit_pooling
from ssl_siamese.cli import main
from ssl_siamese.export import export_pretrained
from ssl_siamese.methods import BYOL, DINO, BarlowTwins, MoCo, SimCLR, SimSiam, VICReg

# a tiny ViT (embed 48, 2 blocks, 3 heads) for 32-pixel images in 8-pixel patches
TINY_VIT = "timm/vit_tiny_patch16_224"
TINY_KWARGS = {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 3}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing may download


@pytest.mark.parametrize("pooling", ["token", "mean"])
def test_timm_vit_takes_its_arguments_and_pools_as_asked(pooling):
    torch.manual_seed(0)
    vit, dim = build_backbone(TINY_VIT, pooling=pooling, **TINY_KWARGS)
    assert dim == 48 and vit.patch_embed.num_patches == 16 and vit_pooling(vit) == pooling
    images = torch.randn(3, 3, 32, 32)
    tokens = vit.eval().forward_features(images)  # timm's normalised tokens (class token first)
    expected = tokens[:, 0] if pooling == "token" else vit.fc_norm(tokens[:, 1:].mean(dim=1))
    torch.testing.assert_close(vit(images), expected, rtol=0, atol=0)


@torch.no_grad()  # the same attention kernels for every model compared (torch's fast path without gradients)
def test_torchvision_vit_b_16_pools_its_encoder_tokens_and_round_trips_with_its_pooling(tmp_path):
    torch.manual_seed(0)
    model = SimSiam(backbone="vit_b_16", backbone_kwargs={"image_size": 32, "pooling": "mean"}, view_size=32,
                    projection_dim=32).eval()  # 2 x 2 patches of 16 pixels; nothing downloaded
    assert model.feature_dim == 768 and vit_pooling(model.backbone) == "mean"
    plain = torchvision.models.vit_b_16(image_size=32)  # torchvision's own forward, as a user would load it
    plain.heads = nn.Identity()
    plain.load_state_dict(model.backbone.state_dict(), strict=True)
    plain.eval()
    images = torch.randn(2, 3, 32, 32)
    tokens = plain._process_input(images)
    tokens = plain.encoder(torch.cat([plain.class_token.expand(2, -1, -1), tokens], dim=1))
    torch.testing.assert_close(model(images), tokens[:, 1:].mean(dim=1), rtol=0, atol=1e-6)
    backbone, _, metadata = load_backbone(export_backbone(model, tmp_path / "vit.pt"))
    assert metadata["pooling"] == "mean" and metadata["architecture"] == "vit_b_16"
    torch.testing.assert_close(backbone(images), model(images), rtol=0, atol=0)
    backbone.pooling = "token"  # class-token pooling is torchvision's own forward
    torch.testing.assert_close(backbone(images), plain(images), rtol=0, atol=0)


def test_clear_errors_for_pooling_sizes_and_arguments():
    with pytest.raises(ValueError, match="pooling='mean' is an option of Vision Transformers"):
        build_backbone("resnet18", pooling="mean")
    with pytest.raises(ValueError, match="Unknown pooling 'max'"):
        build_backbone(TINY_VIT, pooling="max", **TINY_KWARGS)
    with pytest.raises(ValueError, match="does not take the arguments"):
        build_backbone("vit_b_16", patch_size=4)  # the name fixes torchvision's patch size
    vit, _ = build_backbone(TINY_VIT, **TINY_KWARGS)
    with pytest.raises(ValueError, match=re.escape("takes 32 x 32 images but the views are 28 x 28")):
        check_input_size(vit, 28)


def _views(size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(4, 3, size, size), torch.randn(4, 3, size, size)


@pytest.mark.parametrize("method, options", [
    (SimCLR, {"hidden_dim": 32, "projection_dim": 16}), (MoCo, {"hidden_dim": 32, "projection_dim": 16,
                                                             "queue_size": 16}),
    (SimSiam, {"projection_dim": 32}), (BYOL, {"hidden_dim": 32, "projection_dim": 16}),
    (BarlowTwins, {"hidden_dim": 32, "projection_dim": 32}), (VICReg, {"hidden_dim": 32, "projection_dim": 32}),
])
def test_every_method_trains_a_vit_backbone(method, options):
    torch.manual_seed(0)
    model = method(backbone=TINY_VIT, backbone_kwargs={**TINY_KWARGS, "pooling": "mean"}, view_size=32, **options)
    loss, embeddings = model.shared_step(*_views())
    loss.backward()
    assert torch.isfinite(loss) and embeddings.shape[0] == 4
    assert model.backbone.patch_embed.proj.weight.grad.abs().sum() > 0  # the gradient reaches the ViT


def test_dino_multi_crop_runs_a_vit_that_takes_any_size():
    """Local views are smaller than global ones: timm's ``dynamic_img_size`` resamples the position embedding."""
    torch.manual_seed(0)
    model = DINO(backbone=TINY_VIT, backbone_kwargs={**TINY_KWARGS, "dynamic_img_size": True}, view_size=32,
                 output_dim=64, hidden_dim=32, bottleneck_dim=16, local_views=2, local_size=16)
    loss, embeddings = model.shared_step(*_views(32), *_views(16))
    loss.backward()
    assert torch.isfinite(loss) and embeddings.shape == (4, 48)
    assert model.backbone.patch_embed.proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("pooling", ["token", "mean"])
def test_export_records_the_arguments_and_pooling_and_every_loader_rebuilds_the_same_vit(pooling, tmp_path,
                                                                                          monkeypatch):
    torch.manual_seed(0)
    model = SimCLR(backbone=TINY_VIT, backbone_kwargs={**TINY_KWARGS, "pooling": pooling}, view_size=32,
                   hidden_dim=32, projection_dim=16).eval()
    pt = export_backbone(model, tmp_path / "vit.pt", data="synthetic")
    folder = export_pretrained(model, tmp_path / "vit", data="synthetic")
    images = torch.randn(3, 3, 32, 32)
    expected = model(images)
    for path in (pt, folder, folder / "model.safetensors"):
        backbone, _, metadata = load_backbone(path)
        assert metadata["pooling"] == pooling and metadata["backbone_kwargs"]["patch_size"] == 8
        torch.testing.assert_close(backbone(images), expected, rtol=0, atol=0)
    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        header = handle.metadata()
    assert header["pooling"] == pooling and json.loads(header["backbone_kwargs"])["embed_dim"] == 48
    config = json.loads((folder / "config.json").read_text())
    assert config["ssl_siamese"]["pooling"] == pooling
    assert config["model_args"]["global_pool"] == {"token": "token", "mean": "avg"}[pooling]
    # timm itself: by file with the same arguments, and from the folder's config.json alone
    timm_args = {**TINY_KWARGS, "global_pool": {"token": "token", "mean": "avg"}[pooling]}
    by_file = timm.create_model("vit_tiny_patch16_224", pretrained=True, num_classes=0, **timm_args,
                                pretrained_cfg_overlay=dict(file=str(folder / "model.safetensors"))).eval()
    by_folder = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    assert set(load_file(folder / "model.safetensors")) == set(by_file.state_dict())  # timm's own keys
    for loaded in (by_file, by_folder):
        torch.testing.assert_close(loaded(images), expected, rtol=0, atol=0)
    card = (folder / "README.md").read_text()  # the model card's timm snippet, run as written
    (snippet,) = [code for code in re.findall(r"```python\n(.*?)```", card, flags=re.S) if "import timm" in code]
    monkeypatch.chdir(folder)
    namespace: dict = {}
    exec(compile(snippet, "README.md", "exec"), namespace)  # noqa: S102 - our own generated snippet
    torch.testing.assert_close(namespace["features"], model(namespace["images"]), rtol=0, atol=0)


@needs_fashion_mnist
def test_simclr_recipe_trains_a_timm_vit_from_the_command_line(tmp_path):
    """``--model.backbone_kwargs`` as YAML on the command line, a few steps on real Fashion-MNIST (28 px)."""
    summary = main(SimCLR, "simclr", [
        "--model.backbone", TINY_VIT, "--model.backbone_kwargs",
        "{img_size: 28, patch_size: 7, embed_dim: 48, depth: 2, num_heads: 3, pooling: mean}",
        "--model.hidden_dim", "32", "--model.projection_dim", "16", "--model.optimizer", "adamw", "--model.lr", "1e-3",
        "--data.dataset", "fashion_mnist", "--data.data_dir", str(fashion_mnist_dir()),
        "--data.batch_size", "32", "--data.train_subset", "128", "--data.val_subset", "64",
        "--data.knn_bank_subset", "128", "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu",
        "--trainer.enable_progress_bar", "false", "--log_to", "none", "--knn_at_start", "false",
        "--pictures_every_n_epochs", "0", "--out", str(tmp_path)])
    assert summary["knn_history"] and 0.0 < summary["knn_history"][-1][1] <= 1.0
    backbone, transform, metadata = load_backbone(summary["backbone_folder"])
    assert metadata["backbone_kwargs"]["patch_size"] == 7 and metadata["pooling"] == "mean"
    assert type(backbone).__name__ == "VisionTransformer" and backbone.patch_embed.num_patches == 16
    images = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    assert backbone(transform(images)).shape == (2, 48)
