"""What the Vision Transformer backbones (torchvision's and timm's) share: how they pool, what size they take.

``pooling`` makes the feature vector: ``"token"`` (the class token, the default) or ``"mean"`` (the mean of the
patch tokens; timm's ``global_pool="avg"``).

Example:
    >>> vit, _ = build_backbone("vit_b_16", image_size=32, pooling="mean")
    >>> vit_pooling(vit), vit_pooling(build_backbone("tiny_cnn")[0])
    ('mean', None)
"""

from __future__ import annotations

from torch import nn

from ssl_siamese.backbones.torchvision_models import TorchvisionViT

POOLINGS = ("token", "mean")
TIMM_POOL = {"token": "token", "mean": "avg"}  # our pooling names -> timm's global_pool


def check_pooling(pooling: str | None, name: str) -> None:
    """Raise a ``ValueError`` naming the choices when ``pooling`` is neither ``None`` nor one of ``POOLINGS``."""
    if pooling is not None and pooling not in POOLINGS:
        raise ValueError(f"Unknown pooling {pooling!r} for {name}; choose one of {POOLINGS} "
                         "('token': the class token, 'mean': the mean of the patch tokens).")


def vit_pooling(module: nn.Module) -> str | None:
    """How a ViT backbone pools its tokens (``"token"``, ``"mean"``, or timm's other ``global_pool``);
    ``None`` for a backbone that is not a Vision Transformer (what an export records as ``pooling``)."""
    if isinstance(module, TorchvisionViT):
        return module.pooling
    global_pool = getattr(module, "global_pool", None)
    if isinstance(global_pool, str) and hasattr(module, "num_prefix_tokens"):  # timm's VisionTransformer family
        return {timm_name: ours for ours, timm_name in TIMM_POOL.items()}.get(global_pool, global_pool or None)
    return None


def check_input_size(backbone: nn.Module, size: int) -> None:
    """Raise a clear ``ValueError`` when a fixed-size backbone (a ViT) cannot take ``size``-pixel views.

    Example:
        >>> vit, _ = build_backbone("timm/vit_tiny_patch16_224")
        >>> check_input_size(vit, 32)
        Traceback (most recent call last):
        ...
        ValueError: The backbone takes 224 x 224 images but the views are 32 x 32: ...
    """
    expected = None
    patch_embed = getattr(backbone, "patch_embed", None)  # timm
    if patch_embed is not None and getattr(patch_embed, "strict_img_size", False) and patch_embed.img_size:
        expected = tuple(patch_embed.img_size)
    elif isinstance(backbone, TorchvisionViT):
        expected = (backbone.image_size, backbone.image_size)
    if expected is not None and expected != (size, size):
        raise ValueError(
            f"The backbone takes {expected[0]} x {expected[1]} images but the views are {size} x {size}: "
            f"build it for this size, e.g. --model.backbone_kwargs '{{img_size: {size}, patch_size: 4}}' "
            f"(timm; torchvision's ViTs: image_size), or set --data.image_size {expected[0]}.")
