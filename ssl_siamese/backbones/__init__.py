"""Build a feature extractor by name: ``(module, feature_dim)``.

A backbone maps images ``(B, 3, H, W)`` to features ``(B, D)``; methods put their heads on top.

Example:
    >>> backbone, dim = build_backbone("resnet18", cifar_stem=True)
    >>> backbone(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 512])

The names are the rows of ``BACKBONES`` (``registry.py``): ``resnet18``, ``resnet34``, ``resnet50`` and the
Vision Transformers ``vit_b_16``, ``vit_b_32``, ``vit_l_16``, ``vit_l_32``, ``vit_h_14`` (torchvision, random
init: nothing is downloaded; ``torchvision_models.py``), ``timm/<model>`` for any timm model when timm is
installed (``timm_models.py``), and ``tiny_cnn`` (a four-layer ConvNet for CPU tests and quick experiments;
``tiny_cnn.py``). Keyword arguments go to the architecture's constructor, e.g. a ViT for 32-pixel images:

    >>> vit, dim = build_backbone("timm/vit_small_patch16_224", img_size=32, patch_size=4, pooling="mean")
    >>> vit(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 384])

``pooling`` (ViTs only, ``vit.py``) makes the feature vector: ``"token"`` (the class token, the default) or
``"mean"`` (the mean of the patch tokens; timm's ``global_pool="avg"``). Any ``nn.Module`` may be passed
instead of a name, together with its feature dimension.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ssl_siamese._lazy import lazy_exports

_MODULES = {
    "ssl_siamese.backbones.registry": ("BACKBONES", "BACKBONE_NAMES", "TORCHVISION_RESNETS", "TORCHVISION_VITS",
                                       "backbone_row", "backbone_builder", "build_backbone", "is_backbone_name"),
    "ssl_siamese.backbones.tiny_cnn": ("TinyCNN", "tiny_cnn"),
    "ssl_siamese.backbones.torchvision_models": ("torchvision_resnet", "TorchvisionViT", "torchvision_vit"),
    "ssl_siamese.backbones.timm_models": ("timm_arguments", "timm_model"),
    "ssl_siamese.backbones.vit": ("POOLINGS", "check_pooling", "vit_pooling", "check_input_size"),
}

if TYPE_CHECKING:  # the same names, eagerly, for type checkers and IDEs
    from ssl_siamese.backbones.registry import (
        BACKBONE_NAMES,
        BACKBONES,
        TORCHVISION_RESNETS,
        TORCHVISION_VITS,
        backbone_builder,
        backbone_row,
        build_backbone,
        is_backbone_name,
    )
    from ssl_siamese.backbones.timm_models import timm_arguments, timm_model
    from ssl_siamese.backbones.tiny_cnn import TinyCNN, tiny_cnn
    from ssl_siamese.backbones.torchvision_models import TorchvisionViT, torchvision_resnet, torchvision_vit
    from ssl_siamese.backbones.vit import POOLINGS, check_input_size, check_pooling, vit_pooling

__getattr__, __dir__ = lazy_exports(__name__, {name: module for module, names in _MODULES.items() for name in names})
__all__ = [name for names in _MODULES.values() for name in names]
