"""torchvision's ResNets and Vision Transformers as feature extractors (random init: nothing is downloaded).

Example:
    >>> module, dim = resnet("resnet18", cifar_stem=True)
    >>> module(torch.zeros(2, 3, 32, 32)).shape, dim
    (torch.Size([2, 512]), 512)
"""

from __future__ import annotations

from typing import Any

import torch
import torchvision
from torch import nn


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


def resnet(name: str, cifar_stem: bool = False, **kwargs: Any) -> tuple[nn.Module, int]:
    """The rows ``resnet18``/``34``/``50`` of ``BACKBONES``: ``torchvision_resnet`` and its feature size."""
    model = torchvision_resnet(name, cifar_stem, **kwargs)
    return model, int(model.inplanes)  # the channels of the last block: 512, or 2048 with bottlenecks


def vit(name: str, pooling: str = "token", **kwargs: Any) -> tuple[nn.Module, int]:
    """The rows ``vit_b_16`` ... ``vit_h_14`` of ``BACKBONES``: ``torchvision_vit`` and its width."""
    model = torchvision_vit(name, pooling, **kwargs)
    return model, int(model.hidden_dim)
