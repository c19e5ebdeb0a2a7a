"""MAE resumes bit for bit after SIGKILL through ``python -m ssl_siamese.recipes.mae``: the chain of
``test_resume_cli`` (same tiny real Fashion-MNIST setup, default callbacks, step checkpoints) with a tiny timm ViT,
AdamW with MAE's betas, and a random mask drawn each step (its RNG state is in the checkpoint)."""

from __future__ import annotations

import pytest
import test_resume_cli as chain

MAE_ARGS = ["--model.backbone", "timm/vit_tiny_patch16_224", "--model.backbone_kwargs",
            "{img_size: 28, patch_size: 7, embed_dim: 24, depth: 1, num_heads: 2}", "--model.decoder_dim", "16",
            "--model.decoder_depth", "1", "--model.decoder_heads", "2", "--model.lr", "1e-3",
            "--model.warmup_epochs", "1"]


@pytest.mark.slow
@pytest.mark.skipif(chain.DATA_DIR is None, reason="Fashion-MNIST IDX files not found")
def test_sigkilled_mae_recipe_resumes_to_the_uninterrupted_weights(tmp_path, monkeypatch):
    monkeypatch.setitem(chain.METHOD_ARGS, "mae", MAE_ARGS)  # after the chain's tiny_cnn: the later flag wins
    monkeypatch.setitem(chain.CHAINS, "mae", (chain.STEP_CHECKPOINTS, [3, 2 * chain.STEPS_PER_EPOCH + 1]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    chain.test_sigkilled_recipe_resumes_to_the_uninterrupted_weights("mae", tmp_path)
    groups = chain.checkpoint(tmp_path / "killed")["optimizer_states"][0]["param_groups"]
    assert [(g["name"], g["weight_decay"], tuple(g["betas"])) for g in groups] == [  # MAE's AdamW, resumed
        ("decay", 0.05, (0.9, 0.95)), ("no_decay", 0.0, (0.9, 0.95))]
