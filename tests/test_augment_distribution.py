"""Our batched ViewAugmentation against the reference transforms (torchvision, as lightly's recipes use them).

tests/test_augment.py checks each op on its own; here the presets are compared with lightly's transforms:
the same settings, output shapes and ranges, the same parameter distributions (two-sample KS against
torchvision's own ``get_params`` draws), similar views, and identity parameters that give back the input.
"""

import math
import random

import numpy as np
import pytest
import torch
from lightly.transforms import MoCoV2Transform, SimCLRTransform, SimSiamTransform
from PIL import Image
from torchvision.transforms import ColorJitter, RandomResizedCrop
from torchvision.transforms import v2

from ssl_siamese.views.augment import ViewAugmentation
from ssl_siamese.views.presets import augmentation_preset
from ssl_siamese.data import make_synthetic

CIFAR = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
REFERENCES = {"simclr": lambda size, **kw: SimCLRTransform(size, cj_strength=0.5, **kw),  # lightly's CIFAR recipe
              "moco_v2": MoCoV2Transform, "simsiam": SimSiamTransform}
N = 4000
KS_MAX = 1.95 * math.sqrt(2 / N)  # two-sample KS critical value at alpha = 0.001 (fixed seeds: deterministic)


def ks(a, b) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    a, b = np.sort(np.asarray(a, dtype=float)), np.sort(np.asarray(b, dtype=float))
    grid = np.concatenate([a, b])
    return float(np.abs(np.searchsorted(a, grid, "right") / len(a) - np.searchsorted(b, grid, "right") / len(b)).max())


def reference(preset: str, size: int, normalize=None):
    """lightly's single-view transform for ``preset``; blur from 64 px only (our presets, lightly's CIFAR recipe)."""
    return REFERENCES[preset](size, gaussian_blur=0.5 if size >= 64 else 0.0, normalize=normalize).transforms[0]


def reference_settings(view_transform) -> dict:
    ops = {type(op).__name__: op for op in view_transform.transform.transforms}
    jitter = ops["RandomApply"]
    cj = jitter.transforms[0]
    return {"crop_scale": tuple(ops["RandomResizedCrop"].scale), "crop_ratio": tuple(ops["RandomResizedCrop"].ratio),
            "hflip_prob": ops["RandomHorizontalFlip"].p, "jitter_prob": jitter.p,
            "brightness": cj.brightness[1] - 1, "contrast": cj.contrast[1] - 1, "saturation": cj.saturation[1] - 1,
            "hue": cj.hue[1], "grayscale_prob": ops["RandomGrayscale"].p, "blur_prob": ops["GaussianBlur"].prob,
            "blur_sigma": tuple(ops["GaussianBlur"].sigmas)}


def torchvision_crops(scale, ratio=(3 / 4, 4 / 3), n=N):
    """(area fraction, log aspect ratio) of ``n`` torchvision RandomResizedCrop draws on a 1000 x 1000 image."""
    torch.manual_seed(0)
    image = torch.empty(3, 1000, 1000, dtype=torch.uint8)
    crops = np.array([RandomResizedCrop.get_params(image, list(scale), list(ratio)) for _ in range(n)], dtype=float)
    return crops[:, 2] * crops[:, 3] / 1e6, np.log(crops[:, 3] / crops[:, 2])


@pytest.mark.parametrize("preset", list(REFERENCES))
@pytest.mark.parametrize("size", [32, 96])
def test_presets_have_the_reference_settings(preset, size):
    aug = augmentation_preset(preset, size, *CIFAR)
    for name, value in reference_settings(reference(preset, size)).items():
        assert getattr(aug, name) == pytest.approx(value), name


@pytest.mark.parametrize("size", [32, 96])
def test_output_shapes_and_ranges_like_torchvision(size):
    images = make_synthetic(8, seed=0, size=40).images[..., :36]  # non-square uint8 input, resized to size
    ref = reference("simclr", size, normalize={"mean": list(CIFAR[0]), "std": list(CIFAR[1])})
    expected = torch.stack([ref(Image.fromarray(image.permute(1, 2, 0).numpy())) for image in images])
    ours = augmentation_preset("simclr", size, *CIFAR)(images)
    assert ours.shape == expected.shape == (8, 3, size, size) and ours.dtype == expected.dtype == torch.float32
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in CIFAR)
    for out in (ours, expected):
        assert (out >= -mean / std - 1e-5).all() and (out <= (1 - mean) / std + 1e-5).all()


def test_crop_distribution_matches_torchvision_where_nothing_is_clamped():
    scale = (0.08, 0.75)  # area * ratio <= 1: torchvision never rejects a draw and we never clamp
    area, log_ratio = torchvision_crops(scale)
    params = ViewAugmentation(crop_scale=scale).sample_params(N, generator=torch.Generator().manual_seed(1))
    assert ks(params["area"], area) < KS_MAX
    assert ks(torch.log(params["w"] / params["h"]), log_ratio) < KS_MAX


@pytest.mark.parametrize("scale", [(0.08, 1.0), (0.2, 1.0)])
def test_crop_area_distribution_matches_torchvision_with_default_scales(scale):
    area, _ = torchvision_crops(scale)
    params = ViewAugmentation(crop_scale=scale).sample_params(N, generator=torch.Generator().manual_seed(1))
    assert ks(params["area"], area) < KS_MAX


def test_jitter_factors_match_torchvision_color_jitter():
    strengths = dict(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)
    torch.manual_seed(0)
    bounds = [[1 - s, 1 + s] for s in list(strengths.values())[:3]] + [[-strengths["hue"], strengths["hue"]]]
    draws = np.array([ColorJitter.get_params(*bounds)[1:] for _ in range(N)])
    params = ViewAugmentation(**strengths).sample_params(N, generator=torch.Generator().manual_seed(2))
    jittered = params["jitter"]
    for column, (name, strength) in enumerate(strengths.items()):
        ours = params[name][jittered]
        centre = 0.0 if name == "hue" else 1.0
        assert ours.min() >= centre - strength and ours.max() <= centre + strength, name
        assert ks(ours, draws[:, column]) < 1.95 * math.sqrt(1 / len(ours) + 1 / N), name


@pytest.mark.parametrize("name", ["hflip_prob", "jitter_prob", "grayscale_prob"])
def test_application_probabilities_seen_in_the_views(name):
    """Each op alone at lightly's probability on N copies of one image: how often the VIEW shows it."""
    p = reference_settings(reference("simclr", 32))[name]
    identity = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip_prob=0.0, jitter_prob=0.0, grayscale_prob=0.0)
    image = make_synthetic(1, seed=3, size=8).images.float() / 255
    aug = ViewAugmentation(size=8, mean=(0.0,) * 3, std=(1.0,) * 3, **{**identity, name: p})
    views = aug(image.expand(N, -1, -1, -1), generator=torch.Generator().manual_seed(4))
    shown = {"hflip_prob": (views - image.flip(-1)).abs().amax((1, 2, 3)) < 1e-5,
             "jitter_prob": (views - image).abs().amax((1, 2, 3)) > 1e-3,
             "grayscale_prob": (views.amax(1) - views.amin(1)).amax((1, 2)) < 1e-6}[name]
    assert abs(shown.float().mean().item() - p) < 4 * math.sqrt(p * (1 - p) / N)


def test_views_match_the_reference_views():
    """Per-view brightness, contrast, colourfulness and grayscale share: ours vs lightly's torchvision views."""
    n, images = 1000, make_synthetic(100, seed=0).images
    torch.manual_seed(0)
    random.seed(0)
    ref = reference("simclr", 32)
    pils = [Image.fromarray(image.permute(1, 2, 0).numpy()) for image in images]
    expected = torch.stack([ref(pils[i % len(pils)]) for i in range(n)])
    raw = augmentation_preset("simclr", 32, (0.0,) * 3, (1.0,) * 3)
    ours = raw(images.repeat(n // len(images), 1, 1, 1), generator=torch.Generator().manual_seed(0))
    statistics = {"mean": lambda v: v.mean((1, 2, 3)), "std": lambda v: v.std((1, 2, 3)),
                  "chroma": lambda v: (v.amax(1) - v.amin(1)).mean((1, 2))}
    for name, statistic in statistics.items():
        assert ks(statistic(ours), statistic(expected)) < 1.95 * math.sqrt(2 / n), name
    gray = [((v.amax(1) - v.amin(1)).amax((1, 2)) < 1e-3).float().mean().item() for v in (ours, expected)]
    assert abs(gray[0] - gray[1]) < 4 * math.sqrt(2 * 0.2 * 0.8 / n)


@pytest.mark.parametrize("preset, size", [("simclr", 32), ("moco_v2", 96), ("simsiam", 224)])
def test_identity_parameters_reproduce_the_input(preset, size):
    """Full crop, no flip, unit factors, no gray/blur/solarize through apply_params == normalize(images)."""
    images = torch.randint(0, 256, (3, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    aug = augmentation_preset(preset, size, *CIFAR)
    one, zero, no = torch.ones(3), torch.zeros(3), torch.zeros(3, dtype=torch.bool)
    params = dict(w=one, h=one, area=one, cx=zero, cy=zero, flip=no, jitter=~no, brightness=one, contrast=one,
                  saturation=one, hue=zero, grayscale=no, blur=no, sigma=one, solarize=no)
    out = aug.apply_params(images, params)
    expected = v2.Normalize(*CIFAR)(images.float() / 255)
    torch.testing.assert_close(out, expected, atol=2e-4, rtol=0)  # grid_sample rounding grows with size
    torch.testing.assert_close(aug.normalize(images), expected, atol=1e-5, rtol=0)
    std, mean = aug.std, aug.mean
    assert torch.equal(((out * std + mean) * 255).round().to(torch.uint8), images)  # exact at uint8 precision
