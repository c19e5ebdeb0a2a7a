"""The backbone registry: every row builds a module whose features are ``(B, feature_dim)``, and a misspelt name
gets the closest row suggested.

torchvision's models have fixed widths (11M to 632M parameters): they are built on the ``meta`` device, where
construction and forward only propagate shapes, so every row is checked in seconds; ``tiny_cnn`` and a tiny timm
ViT run for real.
"""

from __future__ import annotations

import pytest
import torch

from ssl_siamese.backbones import BACKBONES, TORCHVISION_RESNETS, TORCHVISION_VITS, backbone_row, build_backbone, is_backbone_name

# a name of each row, an image size it takes and the constructor arguments that make it small (a new row needs
# its example here), and whether it is built on the meta device
EXAMPLES = {
    "resnet18": ("resnet18", 32, {"cifar_stem": True}),
    "resnet34": ("resnet34", 32, {}),
    "resnet50": ("resnet50", 32, {"cifar_stem": True}),
    **{vit: (vit, 28 if vit == "vit_h_14" else 32, {"image_size": 28 if vit == "vit_h_14" else 32,
                                                   "pooling": "mean"}) for vit in TORCHVISION_VITS},
    "tiny_cnn": ("tiny_cnn", 28, {"width": 8}),
    "timm/<model name>": ("timm/vit_tiny_patch16_224", 28,
                          {"img_size": 28, "patch_size": 7, "embed_dim": 24, "depth": 1, "num_heads": 2}),
}
ON_META = (*TORCHVISION_RESNETS, *TORCHVISION_VITS)


def test_every_row_has_an_example():
    assert set(EXAMPLES) == set(BACKBONES)


@pytest.mark.parametrize("row", list(BACKBONES))
def test_every_registered_backbone_builds_and_gives_its_features(row):
    name, size, kwargs = EXAMPLES[row]
    assert backbone_row(name) == row and is_backbone_name(name)
    device = torch.device("meta" if row in ON_META else "cpu")
    torch.manual_seed(0)
    with device:
        module, dim = build_backbone(name, **kwargs)
        features = module.eval()(torch.zeros(2, 3, size, size))
    assert features.shape == (2, dim) and dim > 0
    if device.type == "cpu":
        assert torch.isfinite(features).all()


def test_an_unknown_name_suggests_the_closest_and_lists_all():
    with pytest.raises(ValueError, match=r"Unknown backbone 'tiny_cn'; did you mean tiny_cnn\? Valid names: "
                                         r"resnet18, .*timm/<model name>"):
        build_backbone("tiny_cn")
    assert not is_backbone_name("tiny_cn") and not is_backbone_name(None)
    assert not is_backbone_name("timm/<model name>".replace("timm", "tim"))
