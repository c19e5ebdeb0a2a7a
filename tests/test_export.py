"""Backbone export: plain torchvision loads it strictly, load_backbone round-trips, bad files are refused, and
inference preprocesses real photos exactly as training's evaluation does."""

import tarfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from helpers import find_data_file, needs_data_file
from torch import nn

from ssl_siamese import LoadedBackbone, OneShotClassifier, SimCLR, SimSiam, embed_images, export_backbone, load_backbone
from ssl_siamese.backbones import torchvision_resnet
from ssl_siamese.data.folders import load_folder
from ssl_siamese.data.images import read_image

COCO = "coco128/coco128.tar"  # real photos, 640 px wide and 4xx px high: not square


@pytest.mark.parametrize("cifar_stem", [True, False])
def test_torchvision_loads_export_strictly(tmp_path, cifar_stem):
    model = SimCLR(backbone="resnet18", cifar_stem=cifar_stem, view_size=32)
    path = export_backbone(model, tmp_path / "backbone.pt", data="synthetic")
    payload = torch.load(path, weights_only=True)
    assert payload["metadata"]["cifar_stem"] is cifar_stem
    plain = torchvision.models.resnet18()  # written out by hand, as a user would
    plain.fc = nn.Identity()
    if cifar_stem:
        plain.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        plain.maxpool = nn.Identity()
    plain.load_state_dict(payload["state_dict"], strict=True)
    images = torch.randn(2, 3, 32, 32)
    model.eval()
    plain.eval()
    torch.testing.assert_close(plain(images), model(images))


def test_round_trip_gives_identical_features(tmp_path):
    torch.manual_seed(0)
    model = SimSiam(backbone="tiny_cnn", projection_dim=32, view_size=28)
    with torch.no_grad():  # make BN running stats non-trivial
        model.train()
        model.backbone(torch.randn(16, 3, 28, 28))
    model.eval()
    export_backbone(model, tmp_path / "b.pt", epochs=3)
    loaded = load_backbone(tmp_path / "b.pt")
    assert isinstance(loaded, LoadedBackbone)
    backbone, transform, metadata = loaded
    assert not backbone.training
    assert metadata["method"] == "SimSiam" and metadata["epochs"] == 3 and metadata["image_size"] == 28
    images = torch.randn(4, 3, 28, 28)
    torch.testing.assert_close(backbone(images), model(images))
    uint8 = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    torch.testing.assert_close(transform(uint8), model.augmentation.normalize(uint8))  # the model's eval views
    assert transform(uint8).shape == (4, 3, 28, 28)


def test_transform_resizes_and_normalises_like_a_hand_written_reference(tmp_path):
    mean, std = (0.2, 0.3, 0.4), (0.5, 0.6, 0.7)
    export_backbone(SimCLR(backbone="tiny_cnn", view_size=16, mean=mean, std=std), tmp_path / "b.pt")
    _, transform, _ = load_backbone(tmp_path / "b.pt")
    uint8 = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    expected = (uint8.double() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(transform(uint8).double(), expected)
    assert transform(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)).shape == (2, 3, 16, 16)


def test_export_without_preprocessing_metadata_has_no_transform(tmp_path):
    path = export_backbone(SimCLR(backbone="tiny_cnn"), tmp_path / "b.pt")
    payload = torch.load(path, weights_only=True)
    payload["metadata"]["image_size"] = 0
    torch.save(payload, path)
    assert load_backbone(path).transform is None


class UserNet(nn.Module):
    feature_dim = 4

    def __init__(self):
        super().__init__()
        self.layer = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.layer(x).mean((2, 3))


def test_user_module_export_says_how_to_load_it(tmp_path):
    path = export_backbone(SimCLR(backbone=UserNet()), tmp_path / "user.pt")
    with pytest.raises(ValueError, match=r"user module \(UserNet\).*load_state_dict"):
        load_backbone(path)
    payload = torch.load(path, weights_only=True)  # what the message tells the user to do
    UserNet().load_state_dict(payload["state_dict"], strict=True)


def test_metadata_without_architecture_is_a_clear_error(tmp_path):
    path = export_backbone(SimCLR(backbone="tiny_cnn"), tmp_path / "b.pt")
    payload = torch.load(path, weights_only=True)
    del payload["metadata"]["architecture"], payload["metadata"]["module_class"]
    torch.save(payload, path)
    with pytest.raises(ValueError, match="cannot rebuild.*load_state_dict"):
        load_backbone(path)


def test_truncated_file_is_a_clear_error(tmp_path):
    path = export_backbone(SimCLR(backbone="tiny_cnn"), tmp_path / "b.pt")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated"):
        load_backbone(path)


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_objects_are_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "metadata": {"format": "ssl_siamese.backbone/1"}, "x": Payload()}, path)
    with pytest.raises(ValueError, match=r"pickled Python objects \(builtins.print\)"):
        load_backbone(path)
    assert "must never run" not in capsys.readouterr().out


def test_weights_of_another_architecture_are_refused(tmp_path):
    path = export_backbone(SimCLR(backbone="tiny_cnn"), tmp_path / "b.pt")
    payload = torch.load(path, weights_only=True)
    payload["metadata"]["architecture"] = "resnet18"
    torch.save(payload, path)
    with pytest.raises(ValueError, match="do not fit architecture 'resnet18'"):
        load_backbone(path)


def test_not_an_export_and_missing_file(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save(torchvision_resnet("resnet18").state_dict(), path)
    with pytest.raises(ValueError, match="not an ssl_siamese backbone export .* nor a Lightning checkpoint"):
        load_backbone(path)
    with pytest.raises(FileNotFoundError):
        load_backbone(tmp_path / "missing.pt")


@needs_data_file(COCO)
def test_inference_preprocesses_a_non_square_photo_exactly_as_training_evaluates_it(tmp_path):
    """One geometry everywhere: load_backbone's transform, embed_images, OneShotClassifier and the embed recipe
    give what training's evaluation gives (the folder decoded at the model's size, normalised by the model in
    eval): shorter side resized, centre crop, not the whole photo squashed into a square. Old exports without
    the recorded ``resize`` get the same."""
    from ssl_siamese.recipes.embed import run_embed

    root = tmp_path / "photos"
    with tarfile.open(find_data_file(COCO)) as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and "images/val2017/" in m.name),
                         key=lambda m: m.name)[:2]
        tar.extractall(tmp_path / "coco", members=members, filter="data")
    (root / "coco").mkdir(parents=True)
    files = []
    for member in members:
        files.append(root / "coco" / member.name.rsplit("/", 1)[1])
        (tmp_path / "coco" / member.name).rename(files[-1])
    shapes = [tuple(read_image(file).shape[1:]) for file in files]
    assert all(h != w for h, w in shapes), shapes
    size = 40
    torch.manual_seed(0)
    model = SimCLR(backbone="tiny_cnn", view_size=size, mean=(0.4, 0.45, 0.5), std=(0.2, 0.25, 0.3)).eval()
    path = export_backbone(model, tmp_path / "backbone.pt", data="folder")

    training = model.on_after_batch_transfer((load_folder(root, image_size=size).images, None), 0)[0]
    with torch.no_grad():
        expected = model.backbone(training)
    backbone, transform, metadata = load_backbone(path)
    assert metadata["resize"] == "shorter_side_center_crop"
    full_size = [read_image(file) for file in files]
    assert torch.equal(transform(full_size), training)
    assert torch.equal(transform(full_size[1]), training[1:])
    assert torch.equal(embed_images(backbone, files, metadata, device="cpu", progress=False), expected)
    assert torch.equal(embed_images(backbone, full_size, metadata, device="cpu", progress=False), expected)
    assert torch.equal(OneShotClassifier(backbone, metadata, device="cpu").embed(files), F.normalize(expected, dim=1))
    run_embed(path, root, tmp_path / "embeddings.npz", device="cpu", progress=False)
    with np.load(tmp_path / "embeddings.npz") as data:
        assert data["paths"].tolist() == [f"coco/{file.name}" for file in files]
        assert np.array_equal(data["embeddings"], expected.numpy())
    squashed = F.interpolate(full_size[0][None].float() / 255, size=(size, size), mode="bilinear", antialias=True)
    assert not torch.allclose(model.augmentation.normalize(squashed), training[:1], atol=0.05)  # what it was

    payload = torch.load(path, weights_only=True)
    del payload["metadata"]["resize"]  # an export written before the field
    torch.save(payload, tmp_path / "old.pt")
    assert torch.equal(load_backbone(tmp_path / "old.pt").transform(full_size), training)
    payload["metadata"]["resize"] = "squash"
    torch.save(payload, tmp_path / "unknown.pt")
    with pytest.raises(ValueError, match="Unknown preprocessing resize 'squash'"):
        load_backbone(tmp_path / "unknown.pt")
