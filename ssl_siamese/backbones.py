"""Build a feature extractor by name: ``(module, feature_dim)``.

A backbone maps images ``(B, 3, H, W)`` to features ``(B, D)``; methods put their heads on top.

Example:
    >>> backbone, dim = build_backbone("resnet18", cifar_stem=True)
    >>> backbone(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 512])

Names: ``resnet18``, ``resnet34``, ``resnet50`` (torchvision, random init: nothing is downloaded),
``timm/<model>`` for any timm model when timm is installed, and ``tiny_cnn`` (a four-layer ConvNet for
CPU tests and quick experiments). Any ``nn.Module`` may be passed instead of a name, together with its
feature dimension.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50")
BACKBONE_NAMES = TORCHVISION_RESNETS + ("tiny_cnn", "timm/<model name>")


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


def torchvision_resnet(arch: str, cifar_stem: bool = False) -> nn.Module:
    """The plain torchvision ResNet with ``fc = Identity`` and, optionally, the CIFAR stem.

    The CIFAR stem replaces the 7x7 stride-2 conv and the max-pool by one 3x3 stride-1 conv, as usual
    for 32x32 images. The returned module is a ``torchvision.models.ResNet``: its ``state_dict`` loads
    into the same constructor with ``strict=True``, which is how exported backbones are read back.
    """
    model = getattr(torchvision.models, arch)(weights=None)
    model.fc = nn.Identity()
    if cifar_stem:
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    return model


def build_backbone(
    name: str | nn.Module, cifar_stem: bool = False, feature_dim: int | None = None
) -> tuple[nn.Module, int]:
    """Return ``(module, feature_dim)`` for a backbone name or a user module.

    Args:
        name: one of ``BACKBONE_NAMES`` or an ``nn.Module`` mapping images to ``(B, D)`` features.
        cifar_stem: for torchvision ResNets, use the 3x3 stem without max-pool (small images).
        feature_dim: required when ``name`` is a module without a ``feature_dim`` attribute.

    Raises:
        ValueError: for an unknown name (the message lists the valid ones) or a module without a dim.
    """
    if isinstance(name, nn.Module):
        dim = feature_dim or getattr(name, "feature_dim", None)
        if dim is None:
            raise ValueError(
                "A backbone module needs its feature dimension: pass feature_dim=D "
                "(the size of the vector the module returns per image)."
            )
        return name, int(dim)
    if name in TORCHVISION_RESNETS:
        model = torchvision_resnet(name, cifar_stem)
        return model, 2048 if name == "resnet50" else 512
    if name == "tiny_cnn":
        model = TinyCNN()
        return model, model.feature_dim
    if name.startswith("timm/"):
        try:
            import timm
        except ImportError as error:
            raise ValueError(f"Backbone {name!r} needs timm: pip install timm") from error
        timm_name = name[len("timm/"):]
        try:
            model = timm.create_model(timm_name, pretrained=False, num_classes=0)
        except RuntimeError as error:  # timm's "Unknown model (...)"
            raise ValueError(f"timm has no model {timm_name!r}; see timm.list_models('*{timm_name[:6]}*') "
                             "for the names it knows.") from error
        return model, int(model.num_features)
    raise ValueError(
        f"Unknown backbone {name!r}. Valid names: {', '.join(BACKBONE_NAMES)}; "
        "or pass an nn.Module together with feature_dim."
    )
