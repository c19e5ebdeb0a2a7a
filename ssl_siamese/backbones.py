"""Build a feature extractor by name: ``(module, feature_dim)``.

A backbone maps images ``(B, 3, H, W)`` to features ``(B, D)``; methods put their heads on top.

Example:
    >>> backbone, dim = build_backbone("resnet18", cifar_stem=True)
    >>> backbone(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 512])

Names: ``resnet18``, ``resnet34``, ``resnet50`` and the Vision Transformers ``vit_b_16``, ``vit_b_32``,
``vit_l_16``, ``vit_l_32``, ``vit_h_14`` (torchvision, random init: nothing is downloaded), ``timm/<model>``
for any timm model when timm is installed, and ``tiny_cnn`` (a four-layer ConvNet for CPU tests and quick
experiments). Keyword arguments go to the architecture's constructor, e.g. a ViT for 32-pixel images:

    >>> vit, dim = build_backbone("timm/vit_small_patch16_224", img_size=32, patch_size=4, pooling="mean")
    >>> vit(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 384])

``pooling`` (ViTs only) makes the feature vector: ``"token"`` (the class token, the default) or ``"mean"``
(the mean of the patch tokens; timm's ``global_pool="avg"``). Any ``nn.Module`` may be passed instead of a
name, together with its feature dimension.
"""

from __future__ import annotations

from typing import Any

import torch
import torchvision
from torch import nn

TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50")
TORCHVISION_VITS = ("vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14")
BACKBONE_NAMES = TORCHVISION_RESNETS + TORCHVISION_VITS + ("tiny_cnn", "timm/<model name>")
POOLINGS = ("token", "mean")
_TIMM_POOL = {"token": "token", "mean": "avg"}  # our pooling names -> timm's global_pool


class TinyCNN(nn.Module):
    """Four conv-BN-ReLU blocks and global average pooling; ``feature_dim`` = ``width * 4``.

    Example:
        >>> TinyCNN(width=32)(torch.zeros(2, 3, 28, 28)).shape
        torch.Size([2, 128])
    """

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        channels = [3, width, width * 2, width * 4, width * 4]
        blocks = []
        for i, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:])):
            blocks += [
                nn.Conv2d(c_in, c_out, 3, stride=1 if i == 0 else 2, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
        self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.feature_dim = channels[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def torchvision_resnet(arch: str, cifar_stem: bool = False, **kwargs: Any) -> nn.Module:
    """The plain torchvision ResNet with ``fc = Identity`` and, optionally, the CIFAR stem.

    The CIFAR stem replaces the 7x7 stride-2 conv and the max-pool by one 3x3 stride-1 conv, as usual
    for 32x32 images. The returned module is a ``torchvision.models.ResNet``: its ``state_dict`` loads
    into the same constructor with ``strict=True``, which is how exported backbones are read back.
    """
    model = getattr(torchvision.models, arch)(weights=None, **kwargs)
    model.fc = nn.Identity()
    if cifar_stem:
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    return model


class TorchvisionViT(torchvision.models.VisionTransformer):
    """torchvision's ``VisionTransformer`` as a feature extractor: no head, class-token or mean pooling.

    Made by ``torchvision_vit`` from torchvision's own builder: the parameters and ``state_dict`` keys are
    those of ``torchvision.models.vit_b_16()`` with ``heads = Identity`` (which loads them with
    ``strict=True``); only ``forward`` differs, to offer mean pooling (torchvision's forward always takes the
    class token).
    """

    pooling: str = "token"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self._process_input(x)
        tokens = torch.cat([self.class_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        tokens = self.encoder(tokens)
        return tokens[:, 0] if self.pooling == "token" else tokens[:, 1:].mean(dim=1)


def torchvision_vit(arch: str, pooling: str = "token", **kwargs: Any) -> TorchvisionViT:
    """torchvision's ViT ``arch`` (random init) without its head, pooled by ``pooling`` (``token``/``mean``).

    ``kwargs`` go to torchvision's builder, e.g. ``image_size=32`` (the patch size is fixed by the name).

    Example:
        >>> torchvision_vit("vit_b_16", image_size=32, pooling="mean")(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 768])
    """
    model = getattr(torchvision.models, arch)(weights=None, **kwargs)
    model.heads = nn.Identity()
    model.__class__ = TorchvisionViT  # a subclass adding no state: the same parameters, our forward
    model.pooling = pooling
    return model


def vit_pooling(module: nn.Module) -> str | None:
    """How a ViT backbone pools its tokens (``"token"``, ``"mean"``, or timm's other ``global_pool``);
    ``None`` for a backbone that is not a Vision Transformer (what an export records as ``pooling``)."""
    if isinstance(module, TorchvisionViT):
        return module.pooling
    global_pool = getattr(module, "global_pool", None)
    if isinstance(global_pool, str) and hasattr(module, "num_prefix_tokens"):  # timm's VisionTransformer family
        return {timm_name: ours for ours, timm_name in _TIMM_POOL.items()}.get(global_pool, global_pool or None)
    return None


def _check_pooling(pooling: str | None, name: str) -> None:
    if pooling is not None and pooling not in POOLINGS:
        raise ValueError(f"Unknown pooling {pooling!r} for {name}; choose one of {POOLINGS} "
                         "('token': the class token, 'mean': the mean of the patch tokens).")


def build_backbone(
    name: str | nn.Module, cifar_stem: bool = False, feature_dim: int | None = None, pooling: str | None = None,
    **kwargs: Any,
) -> tuple[nn.Module, int]:
    """Return ``(module, feature_dim)`` for a backbone name or a user module.

    Args:
        name: one of ``BACKBONE_NAMES`` or an ``nn.Module`` mapping images to ``(B, D)`` features.
        cifar_stem: for torchvision ResNets, use the 3x3 stem without max-pool (small images).
        feature_dim: required when ``name`` is a module without a ``feature_dim`` attribute.
        pooling: Vision Transformers: ``"token"`` (class token; the default) or ``"mean"`` (patch tokens).
        **kwargs: the architecture's own constructor arguments: ``timm.create_model(..., **kwargs)`` (e.g.
            ``img_size=32, patch_size=4`` for a timm ViT on CIFAR), torchvision's builder (``image_size=32``
            for ``vit_b_16``; ``zero_init_residual=True`` for a ResNet), ``TinyCNN(width=...)``.

    Raises:
        ValueError: for an unknown name (the message lists the valid ones), a module without a dim, or
            arguments the architecture does not take.
    """
    if isinstance(name, nn.Module):
        dim = feature_dim or getattr(name, "feature_dim", None)
        if dim is None:
            raise ValueError(
                "A backbone module needs its feature dimension: pass feature_dim=D "
                "(the size of the vector the module returns per image)."
            )
        return name, int(dim)
    if pooling is not None and not (name in TORCHVISION_VITS or str(name).startswith("timm/")):
        raise ValueError(f"pooling={pooling!r} is an option of Vision Transformers (timm/<vit...> or "
                         f"{', '.join(TORCHVISION_VITS)}), not of {name!r}: leave it out.")
    _check_pooling(pooling, name)
    try:
        if name in TORCHVISION_RESNETS:
            return torchvision_resnet(name, cifar_stem, **kwargs), 2048 if name == "resnet50" else 512
        if name in TORCHVISION_VITS:
            model = torchvision_vit(name, pooling or "token", **kwargs)
            return model, int(model.hidden_dim)
        if name == "tiny_cnn":
            model = TinyCNN(**kwargs)
            return model, model.feature_dim
    except TypeError as error:  # an argument the constructor does not take
        raise ValueError(f"Backbone {name!r} does not take the arguments {kwargs}: {error}") from error
    if name.startswith("timm/"):
        return _timm_backbone(name[len("timm/"):], pooling, kwargs)
    raise ValueError(
        f"Unknown backbone {name!r}. Valid names: {', '.join(BACKBONE_NAMES)}; "
        "or pass an nn.Module together with feature_dim."
    )


def timm_arguments(kwargs: dict[str, Any], pooling: str | None = None) -> dict[str, Any]:
    """``timm.create_model``'s keyword arguments for ``kwargs`` with our ``pooling`` as timm's ``global_pool``.

    Example:
        >>> timm_arguments({"img_size": 32, "pooling": "mean"})
        {'img_size': 32, 'global_pool': 'avg'}
    """
    kwargs = dict(kwargs)
    pooling = kwargs.pop("pooling", pooling)
    _check_pooling(pooling, "a timm model")
    if pooling is not None:
        if kwargs.get("global_pool", _TIMM_POOL[pooling]) != _TIMM_POOL[pooling]:
            raise ValueError(f"pooling={pooling!r} and global_pool={kwargs['global_pool']!r} disagree: give one.")
        kwargs["global_pool"] = _TIMM_POOL[pooling]
    return kwargs


def _timm_backbone(timm_name: str, pooling: str | None, kwargs: dict[str, Any]) -> tuple[nn.Module, int]:
    """``timm.create_model(timm_name, pretrained=False, num_classes=0, **kwargs)`` and its feature size."""
    try:
        import timm
    except ImportError as error:
        raise ValueError(f"Backbone timm/{timm_name} needs timm: pip install timm") from error
    kwargs = timm_arguments(kwargs, pooling)
    try:
        model = timm.create_model(timm_name, pretrained=False, num_classes=0, **kwargs)
    except RuntimeError as error:  # timm's "Unknown model (...)"
        raise ValueError(f"timm has no model {timm_name!r}; see timm.list_models('*{timm_name[:6]}*') "
                         "for the names it knows.") from error
    except (TypeError, AssertionError) as error:  # an argument the model does not take, or a bad value
        raise ValueError(f"timm's {timm_name!r} does not take the arguments {kwargs}: {error}") from error
    return model, int(model.num_features)


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
