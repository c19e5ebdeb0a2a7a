"""MAE: the loss against a float64 loop written from the paper's formula, the mask ratio, that visible patches carry
no loss (nor change the encoder's input), the encoder exported alone as a plain timm ViT, and a learning check
through ``python -m ssl_siamese.recipes.mae`` on real Fashion-MNIST.
"""

from __future__ import annotations


import pytest
import timm
import torch
from helpers import fashion_mnist_dir, needs_fashion_mnist, recipe_knn
from lightly.models import utils

from ssl_siamese import export_backbone, load_backbone
from ssl_siamese.methods.mae import MAE, masked_patch_loss

TINY = {"backbone": "timm/vit_tiny_patch16_224", "view_size": 32, "decoder_dim": 32, "decoder_depth": 1,
        "decoder_heads": 2, "backbone_kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 2,
                                                "num_heads": 3}}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def reference_loss(predictions, patches, mask, normalize: bool) -> float:
    """The paper's loss in float64 loops: per-patch normalised target (mean, unbiased variance, eps 1e-6), squared
    error averaged over a patch's pixels, then over the masked patches only."""
    total, count = 0.0, 0
    for b in range(patches.shape[0]):
        for n in range(patches.shape[1]):
            if not mask[b, n]:
                continue
            x = [float(v) for v in patches[b, n]]
            target = x
            if normalize:
                mean = sum(x) / len(x)
                var = sum((v - mean) ** 2 for v in x) / (len(x) - 1)
                target = [(v - mean) / (var + 1e-6) ** 0.5 for v in x]
            total += sum((float(p) - t) ** 2 for p, t in zip(predictions[b, n], target)) / len(x)
            count += 1
    return total / count


@pytest.mark.parametrize("normalize", [True, False])
def test_loss_matches_the_papers_formula_in_float64(normalize):
    torch.manual_seed(0)
    patches, predictions = torch.randn(3, 10, 12) * 3 + 1, torch.randn(3, 10, 12)
    mask = torch.rand(3, 10) < 0.75
    loss = masked_patch_loss(predictions, patches, mask, normalize=normalize)
    assert loss.item() == pytest.approx(reference_loss(predictions, patches, mask, normalize), rel=1e-5)


def test_visible_patches_carry_no_loss_and_no_gradient():
    torch.manual_seed(0)
    patches, predictions = torch.randn(2, 16, 12), torch.randn(2, 16, 12, requires_grad=True)
    mask = torch.rand(2, 16) < 0.75
    loss = masked_patch_loss(predictions, patches, mask)
    changed = predictions.detach().clone()
    changed[~mask] = torch.randn_like(changed[~mask]) * 100
    changed[0, (~mask[0]).nonzero()[0]] = float("nan")  # not even a NaN on a visible patch gets through
    assert masked_patch_loss(changed, patches, mask).item() == loss.item()
    loss.backward()
    assert predictions.grad[~mask].abs().max() == 0 and predictions.grad[mask].abs().sum() > 0


@pytest.mark.parametrize("num_patches, ratio", [(16, 0.75), (49, 0.75), (64, 0.5)])
def test_mask_hides_the_ratio_of_patches_and_keeps_the_class_token(num_patches, ratio):
    side = int(num_patches ** 0.5)
    kwargs = {**TINY["backbone_kwargs"], "img_size": side * 4, "patch_size": 4}
    model = MAE(**{**TINY, "backbone_kwargs": kwargs, "view_size": side * 4}, mask_ratio=ratio)
    keep, hidden = model.random_mask(8, torch.device("cpu"))
    kept = num_patches - hidden.shape[1]
    assert kept == int(num_patches * (1 - ratio)) and keep.shape == (8, 1 + kept)
    assert (keep[:, 0] == 0).all()  # the class token always goes to the encoder
    for row_keep, row_hidden in zip(keep, hidden):  # every patch exactly once: kept (offset by 1) or hidden
        assert sorted((row_keep[1:] - 1).tolist() + row_hidden.tolist()) == list(range(num_patches))
    assert len({tuple(row.tolist()) for row in hidden}) > 1  # a new draw per image


def test_model_loss_is_that_of_its_masked_patches_and_the_encoder_sees_only_the_kept_ones():
    torch.manual_seed(0)
    model = MAE(**TINY).eval()
    images = torch.randn(2, 3, 32, 32)
    keep, hidden = model.random_mask(2, images.device)
    predictions, encoded = model.reconstruct(images, keep)
    predictions.retain_grad()
    mask = torch.zeros(2, 16, dtype=torch.bool).scatter_(1, hidden, True)
    loss = masked_patch_loss(predictions, utils.patchify(images, 8), mask)
    assert loss.item() == pytest.approx(reference_loss(predictions.detach(), utils.patchify(images, 8), mask, True),
                                        rel=1e-5)
    loss.backward()
    assert predictions.grad[~mask].abs().max() == 0
    # repaint the hidden patches: the encoder's output does not move
    repainted = utils.unpatchify(torch.where(mask[..., None], torch.randn(2, 16, 192),
                                             utils.patchify(images, 8)), 8, 3)
    torch.testing.assert_close(model.reconstruct(repainted, keep)[1], encoded, rtol=0, atol=0)


def test_exported_backbone_is_the_encoder_alone_as_a_plain_timm_vit(tmp_path):
    torch.manual_seed(0)
    model = MAE(**TINY).eval()
    backbone, _, metadata = load_backbone(export_backbone(model, tmp_path / "vit.pt"))
    reference = timm.create_model("vit_tiny_patch16_224", num_classes=0, **TINY["backbone_kwargs"])
    assert type(backbone) is type(reference) and set(backbone.state_dict()) == set(reference.state_dict())
    assert metadata["method"] == "MAE" and metadata["pooling"] == "token"
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(backbone(images), model(images), rtol=0, atol=0)
    loss, embeddings = model.shared_step(images)
    assert torch.isfinite(loss) and embeddings.shape == (2, 48)
    # a Lightning checkpoint of MAE: load_backbone finds the method and returns its encoder
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, tmp_path / "mae.ckpt")
    from_checkpoint, _, metadata = load_backbone(tmp_path / "mae.ckpt")
    assert metadata["method"] == "MAE" and type(from_checkpoint) is type(reference)
    torch.testing.assert_close(from_checkpoint(images), model(images), rtol=0, atol=0)


def test_clear_errors_for_a_cnn_or_a_vit_of_another_size():
    with pytest.raises(ValueError, match="MAE needs a timm Vision Transformer"):
        MAE(backbone="tiny_cnn")
    with pytest.raises(ValueError, match="takes 224 x 224 images but the views are 32 x 32"):
        MAE(backbone="timm/vit_tiny_patch16_224", view_size=32)
    with pytest.raises(ValueError, match="mask_ratio"):
        MAE(**TINY, mask_ratio=1.0)


LEARN_ARGS = ["--model.backbone", "timm/vit_tiny_patch16_224", "--model.backbone_kwargs",
              "{img_size: 28, patch_size: 4, embed_dim: 48, depth: 2, num_heads: 3, pooling: mean}",
              "--model.decoder_dim", "32", "--model.decoder_depth", "1", "--model.decoder_heads", "2",
              "--model.lr", "4e-3", "--model.warmup_epochs", "0.5", "--data.dataset", "fashion_mnist",
              "--data.batch_size", "128", "--data.train_subset", "6400", "--data.val_subset", "1000",
              "--data.knn_bank_subset", "4096", "--trainer.max_epochs", "6", "--trainer.accelerator", "cpu",
              "--trainer.check_val_every_n_epoch", "6",
              "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
              "--log_to", "none", "--online_probe", "false", "--pictures_every_n_epochs", "0"]


@pytest.mark.slow
@needs_fashion_mnist
def test_mae_recipe_learns_on_fashion_mnist(tmp_path, monkeypatch):
    """The recipe as a user runs it (in-process: helpers.recipe_knn): kNN of the tiny ViT after 300 steps above the
    same model at init."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start, end, pixels = recipe_knn("mae", [*LEARN_ARGS, "--data.data_dir", str(fashion_mnist_dir()),
                                            "--out", str(tmp_path)])
    print(f"MAE recipe, tiny ViT on Fashion-MNIST: kNN top-1 {start:.4f} at init -> {end:.4f} after 300 steps "
          f"(raw pixels {pixels:.4f})")
    assert end > start + 0.02, (start, end)
    backbone, _, metadata = load_backbone(tmp_path / "exported_models" / "backbone")
    assert metadata["method"] == "MAE" and metadata["pooling"] == "mean"
