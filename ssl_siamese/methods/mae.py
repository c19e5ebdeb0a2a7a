"""MAE (He et al., 2021): a ViT encodes a random quarter of the patches, a light decoder paints the rest.

Example:
    >>> model = MAE(backbone="timm/vit_small_patch16_224", backbone_kwargs={"img_size": 32, "patch_size": 4},
    ...             view_size=32, decoder_depth=4)
    >>> pl.Trainer(max_epochs=800).fit(model, datamodule=SSLDataModule("cifar10"))
    >>> export_backbone(model, "vit.pt")  # the encoder alone: a plain timm ViT feature extractor

What is lightly's here: the masked encoder (``MaskedVisionTransformerTIMM``: MAE's initialisation of the ViT,
fixed 2-D sine-cosine position embedding, encoding only the kept tokens), the decoder blocks with their mask
token and fixed position embedding (``MaskedVisionTransformerDecoderTIMM``, which lightly 1.6 recommends over
the deprecated ``MAEDecoderTIMM``), ``random_token_mask``, ``patchify``, ``get_at_index``, ``set_at_index``,
``repeat_token`` and ``normalize_mean_var``. What is ours, and why:

- ``masked_patch_loss``: lightly has no MAE loss (its examples use ``MSELoss`` on the masked patches as
  returned); ours takes the prediction of every patch and a boolean mask, as the paper's code, so that the
  loss provably ignores visible patches (``torch.where``, not a multiplication a NaN would pass through).
- The masked encoder is held outside the module tree: lightly's wrapper registers the ViT as its own child
  ``vit``, which would store the encoder twice in checkpoints (as ``backbone.*`` and ``vit.*``) and add an
  encoder mask token that MAE never uses (an unused parameter under DDP). ``self.backbone`` stays the plain
  timm ViT, so exports and ``load_backbone`` give the encoder alone, with timm's own keys.
- The mask is drawn over the patch tokens only and the prefix tokens (class, registers) are always kept:
  ``random_token_mask`` spares the class token alone and would mask register tokens.
"""

from __future__ import annotations

from typing import Any

import torch
from lightly.models import utils
from torch import Tensor, nn

from ssl_siamese.views.augment import ViewAugmentation
from ssl_siamese.backbones import check_input_size, vit_pooling
from ssl_siamese.extras import require
from ssl_siamese.methods.base import SiameseModule
from ssl_siamese.views.presets import mae_augmentation

# lightly defines its masked ViT pieces only when timm is installed: without timm, say which extra to install
require("timm", "MAE (a timm ViT encoder in lightly's masked-ViT modules)")
from lightly.models.modules import MaskedVisionTransformerDecoderTIMM, MaskedVisionTransformerTIMM  # noqa: E402
from lightly.models.modules.masked_vision_transformer_timm import init_weights  # noqa: E402


def masked_patch_loss(predictions: Tensor, patches: Tensor, mask: Tensor, normalize: bool = True,
                      eps: float = 1e-6) -> Tensor:
    """MAE's loss: mean squared error between predicted and true pixels of the masked patches only.

    With ``normalize`` (the paper's "normalized pixels" target, its best setting) each target patch is first
    normalised by its own mean and (unbiased) variance: ``(x - mean) / sqrt(var + eps)``. The error is
    averaged over the pixels of a patch, then over the masked patches of the batch.

    Args:
        predictions: ``(B, N, P)`` predicted pixels of every patch (``P = patch_size**2 * channels``).
        patches: ``(B, N, P)`` the image's patches (``lightly.models.utils.patchify``).
        mask: ``(B, N)`` boolean, True where the patch was hidden from the encoder.

    Example:
        >>> patches = torch.randn(2, 4, 12)
        >>> mask = torch.tensor([[True, False, True, False], [False, True, True, True]])
        >>> float(masked_patch_loss(utils.normalize_mean_var(patches), patches, mask))  # exact prediction
        0.0
    """
    target = utils.normalize_mean_var(patches.float(), dim=-1, eps=eps) if normalize else patches.float()
    per_patch = (predictions.float() - target).pow(2).mean(dim=-1)
    masked = torch.where(mask, per_patch, torch.zeros_like(per_patch))  # visible patches: no value passes
    return masked.sum() / mask.sum().clamp_min(1)


class MAE(SiameseModule):
    """Masked autoencoder: encode the visible patches, decode all, regress the masked patches' pixels.

    Each step draws, per image, ``mask_ratio`` of the patches to hide (``int(N * (1 - mask_ratio))`` are
    kept; the class token is always kept); the ViT encodes only the kept ones; the decoder (``decoder_embed``
    to ``decoder_dim``, ``decoder_depth`` transformer blocks, ``decoder_pred`` to pixels) sees the encoded
    tokens with a shared mask token in the hidden places and predicts the pixels of every patch; the loss is
    ``masked_patch_loss`` on the hidden ones. One view per image (``mae_augmentation``). The exported
    backbone is the encoder alone, a plain timm ViT whose features are pooled as it was built (``pooling``:
    class token by default; a mean-pooled ViT's ``fc_norm``, which MAE's encoder never reaches, is frozen).

    Defaults are the paper's ViT-B/16 pre-training (appendix A.1): mask ratio 0.75, decoder 8 blocks of
    width 512 with 16 heads, AdamW with betas (0.9, 0.95), learning rate 1.5e-4 per 256 images, weight
    decay 0.05 (not on biases and norms: the base's groups), 40 warm-up epochs then cosine decay.

    Args:
        mask_ratio: fraction of the patches hidden from the encoder, in [0, 1).
        decoder_dim: width of the decoder's tokens.
        decoder_depth: number of decoder transformer blocks.
        decoder_heads: attention heads of the decoder blocks.
        norm_pix_loss: normalise each target patch by its mean and variance (the paper's best setting).
        betas: AdamW's betas (MAE's 0.95 instead of torch's 0.999 as second value).
        **kwargs: the shared options of ``SiameseModule``; ``backbone`` must be a timm Vision Transformer
            (``timm/vit_...``, sized for the views through ``backbone_kwargs``, e.g. ``{"img_size": 32,
            "patch_size": 4}``).
    """

    def __init__(self, backbone: str | nn.Module = "timm/vit_base_patch16_224", mask_ratio: float = 0.75,
                 decoder_dim: int = 512, decoder_depth: int = 8, decoder_heads: int = 16,
                 norm_pix_loss: bool = True, optimizer: str = "adamw", lr: float = 1.5e-4,
                 weight_decay: float = 0.05, warmup_epochs: float = 40.0, betas: tuple[float, float] = (0.9, 0.95),
                 **kwargs: Any) -> None:
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1) (the fraction of patches hidden), got {mask_ratio}.")
        super().__init__(backbone=backbone, optimizer=optimizer, lr=lr, weight_decay=weight_decay,
                         warmup_epochs=warmup_epochs, **kwargs)
        vit = self.backbone
        if not (hasattr(vit, "patch_embed") and hasattr(vit, "num_prefix_tokens") and hasattr(vit, "blocks")):
            raise ValueError(f"MAE needs a timm Vision Transformer backbone, got {type(vit).__name__} ({backbone!r}): "
                             "use e.g. --model.backbone timm/vit_small_patch16_224 --model.backbone_kwargs "
                             "'{img_size: 32, patch_size: 4}' (torchvision's ViTs and CNNs: the other methods).")
        check_input_size(vit, self.hparams.view_size)
        # lightly's masked encoder around our ViT (MAE's initialisation happens here); held in a tuple so it is
        # not a second registered copy of the ViT (see the module docstring)
        self._masked_encoder = (MaskedVisionTransformerTIMM(vit=vit),)
        for unused in (getattr(vit, "fc_norm", None), getattr(vit, "attn_pool", None)):
            if isinstance(unused, nn.Module):
                unused.requires_grad_(False)  # after pooling: never reached by the masked encoder
        patch_h, patch_w = vit.patch_embed.patch_size
        if patch_h != patch_w:
            raise ValueError(f"MAE needs square patches, got {patch_h} x {patch_w}.")
        self.patch_size = patch_h
        self.num_prefix_tokens = int(vit.num_prefix_tokens)
        self.decoder_embed = nn.Linear(vit.embed_dim, decoder_dim)
        self.decoder = MaskedVisionTransformerDecoderTIMM(
            num_patches=vit.patch_embed.num_patches, embed_dim=decoder_dim, depth=decoder_depth,
            num_heads=decoder_heads, num_prefix_tokens=self.num_prefix_tokens)
        self.decoder_pred = nn.Linear(decoder_dim, patch_h * patch_w * vit.patch_embed.proj.in_channels)
        self.decoder_embed.apply(init_weights)
        self.decoder_pred.apply(init_weights)

    def preset_augmentations(self, view_size: int, mean: tuple[float, float, float], std: tuple[float, float, float]
                             ) -> tuple[ViewAugmentation, None]:
        return mae_augmentation(view_size, mean, std), None

    def view_augmentations(self) -> list[ViewAugmentation]:
        """One view per image."""
        return [self.augmentation]

    def random_mask(self, batch_size: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """``(token indices to keep (B, prefix + kept), patch indices hidden (B, hidden))`` for one step.

        The prefix tokens (class, registers) are always kept; ``mask_ratio`` of the patches are hidden.
        """
        num_patches = self.backbone.patch_embed.num_patches
        keep, hidden = utils.random_token_mask((batch_size, num_patches), self.hparams.mask_ratio,
                                               mask_class_token=True, device=device)
        prefix = torch.arange(self.num_prefix_tokens, device=device).expand(batch_size, -1)
        return torch.cat([prefix, keep + self.num_prefix_tokens], dim=1), hidden

    def reconstruct(self, images: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
        """``(predicted pixels (B, N, P) of every patch, encoded kept tokens)``: the encoder sees only ``keep``."""
        encoded = self._masked_encoder[0].encode(images, idx_keep=keep)
        tokens = self.decoder_embed(encoded)
        full = utils.repeat_token(self.decoder.mask_token, (images.shape[0], self.decoder.sequence_length))
        full = utils.set_at_index(full, keep, tokens.type_as(full))
        decoded = self.decoder(full)[:, self.num_prefix_tokens:]
        return self.decoder_pred(decoded), encoded

    def shared_step(self, view: Tensor) -> tuple[Tensor, Tensor]:
        """MAE's loss on one batch of views, and the encoder's pooled (visible-token) features for the monitors."""
        keep, hidden = self.random_mask(view.shape[0], view.device)
        predictions, encoded = self.reconstruct(view, keep)
        mask = torch.zeros(predictions.shape[:2], dtype=torch.bool, device=view.device).scatter_(1, hidden, True)
        patches = utils.patchify(view, self.patch_size)
        loss = masked_patch_loss(predictions, patches, mask, normalize=self.hparams.norm_pix_loss)
        encoded = encoded.float()  # the collapse monitor's embeddings: pooled as the backbone pools
        pooled = encoded[:, 0] if vit_pooling(self.backbone) == "token" else encoded[:, self.num_prefix_tokens:].mean(1)
        return loss, pooled

    def configure_optimizers(self) -> Any:
        """The base's optimizer and schedule, with MAE's AdamW betas."""
        optimizers, schedulers = super().configure_optimizers()
        if self.hparams.optimizer == "adamw":
            for group in optimizers[0].param_groups:
                group["betas"] = tuple(self.hparams.betas)
        return optimizers, schedulers
