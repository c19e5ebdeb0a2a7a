"""The backbones of ssl_siamese, in one table: name -> the builder that makes it, imported on first use.

The table is the one place a backbone is registered: :func:`build_backbone` (and so every method's
``backbone=``, ``--model.backbone`` and its help), ``load_backbone``'s rebuild of an export and the docs read it.
A builder is a function ``builder(name, **options) -> (module, feature_dim)``; it takes ``cifar_stem`` and
``pooling`` only where the architecture has them, and the architecture's own keyword arguments besides. A row
whose name ends in ``/<model name>`` is a family: ``timm/<model name>`` matches ``timm/vit_small_patch16_224``.
A builder's module is imported only when the backbone is built, so a family whose library is optional costs
nothing until it is used.

Adding a backbone: write its builder (e.g. in a module of ``ssl_siamese/backbones/``) and add its row here.

Example:
    >>> backbone_row("timm/vit_small_patch16_224")
    'timm/<model name>'
    >>> backbone_row("resnet81")
    Traceback (most recent call last):
    ...
    ValueError: Unknown backbone 'resnet81'; did you mean resnet18? Valid names: resnet18, ...
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from typing import Any, Callable

from torch import nn

from ssl_siamese.backbones.vit import check_pooling

_RESNET = "ssl_siamese.backbones.torchvision_models.resnet"
_VIT = "ssl_siamese.backbones.torchvision_models.vit"

BACKBONES: dict[str, str] = {
    "resnet18": _RESNET,
    "resnet34": _RESNET,
    "resnet50": _RESNET,
    "vit_b_16": _VIT,  # the patch size is in the name; image_size=32 for small images
    "vit_b_32": _VIT,
    "vit_l_16": _VIT,
    "vit_l_32": _VIT,
    "vit_h_14": _VIT,
    "tiny_cnn": "ssl_siamese.backbones.tiny_cnn.tiny_cnn",
    "timm/<model name>": "ssl_siamese.backbones.timm_models.timm_model",  # any timm model: needs the timm extra
}
BACKBONE_NAMES = tuple(BACKBONES)
TORCHVISION_RESNETS = tuple(name for name, builder in BACKBONES.items() if builder == _RESNET)  # have a CIFAR stem
TORCHVISION_VITS = tuple(name for name, builder in BACKBONES.items() if builder == _VIT)
_FAMILY = "/<model name>"


def backbone_row(name: str) -> str:
    """The row of :data:`BACKBONES` that builds ``name``: ``name`` itself, or its family (``timm/<model name>``).

    Raises:
        ValueError: an unknown name; the message suggests the closest row and lists them all.
    """
    if name in BACKBONES:
        return name
    family = name.split("/", 1)[0] + _FAMILY
    if "/" in name and family in BACKBONES:
        return family
    close = difflib.get_close_matches(name, BACKBONE_NAMES, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}? " if close else ""
    raise ValueError(f"Unknown backbone {name!r}; {hint}Valid names: {', '.join(BACKBONE_NAMES)} "
                     "(ssl_siamese.backbones.BACKBONES); or pass an nn.Module together with feature_dim.")


def is_backbone_name(name: object) -> bool:
    """Whether ``name`` is a backbone :func:`build_backbone` can rebuild (a row or a family's member of
    :data:`BACKBONES`), e.g. the ``architecture`` an export records (``None`` for a user's module)."""
    try:
        return isinstance(name, str) and bool(backbone_row(name))
    except ValueError:
        return False


def backbone_builder(name: str) -> Callable[..., tuple[nn.Module, int]]:
    """Import and return the builder of the backbone ``name`` (see :func:`backbone_row` for the names accepted)."""
    module, _, function = BACKBONES[backbone_row(name)].rpartition(".")
    return getattr(importlib.import_module(module), function)


def _takes(builder: Callable[..., Any], option: str) -> bool:
    return option in inspect.signature(builder).parameters


def build_backbone(
    name: str | nn.Module, cifar_stem: bool = False, feature_dim: int | None = None, pooling: str | None = None,
    **kwargs: Any,
) -> tuple[nn.Module, int]:
    """Return ``(module, feature_dim)`` for a backbone name or a user module.

    Args:
        name: a row of :data:`BACKBONES` (``timm/<model name>`` for any timm model) or an ``nn.Module``
            mapping images to ``(B, D)`` features.
        cifar_stem: for torchvision ResNets, use the 3x3 stem without max-pool (small images); others ignore it.
        feature_dim: required when ``name`` is a module without a ``feature_dim`` attribute.
        pooling: Vision Transformers: ``"token"`` (class token; the default) or ``"mean"`` (patch tokens).
        **kwargs: the architecture's own constructor arguments: ``timm.create_model(..., **kwargs)`` (e.g.
            ``img_size=32, patch_size=4`` for a timm ViT on CIFAR), torchvision's builder (``image_size=32``
            for ``vit_b_16``; ``zero_init_residual=True`` for a ResNet), ``TinyCNN(width=...)``.

    Raises:
        ValueError: for an unknown name (the message suggests the closest and lists the valid ones), a module
            without a dim, or arguments the architecture does not take.
    """
    if isinstance(name, nn.Module):
        dim = feature_dim or getattr(name, "feature_dim", None)
        if dim is None:
            raise ValueError(
                "A backbone module needs its feature dimension: pass feature_dim=D "
                "(the size of the vector the module returns per image)."
            )
        return name, int(dim)
    builder = backbone_builder(name)
    if pooling is not None and not _takes(builder, "pooling"):
        pooled = [row for row in BACKBONES if _takes(backbone_builder(row), "pooling")]
        raise ValueError(f"pooling={pooling!r} is an option of Vision Transformers ({', '.join(pooled)}), "
                         f"not of {name!r}: leave it out.")
    check_pooling(pooling, name)
    options = {"cifar_stem": cifar_stem} if _takes(builder, "cifar_stem") else {}
    options.update({"pooling": pooling} if pooling is not None else {})
    try:
        return builder(name, **options, **kwargs)
    except TypeError as error:  # an argument the constructor does not take
        raise ValueError(f"Backbone {name!r} does not take the arguments {kwargs}: {error}") from error
