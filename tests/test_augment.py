"""ViewAugmentation: shapes, determinism, exact identity, parameter distributions and each colour op."""

import math
from typing import Optional

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from jsonargparse import ArgumentParser

from ssl_siamese.views.augment import ViewAugmentation
from ssl_siamese.views.presets import augmentation_preset, finetune_views, mae_augmentation, metric_learning_views

RAW = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # no normalisation: outputs stay in [0, 1]
IDENTITY = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip_prob=0.0, jitter_prob=0.0,
                grayscale_prob=0.0, **RAW)


def uint8_batch(b=4, c=3, h=32, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, c, h, w), dtype=torch.uint8, generator=g)


def float_batch(b=4, h=32, w=32, seed=0):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def with_params(aug, images, **overrides):
    """Apply fixed parameters: identity draws from a no-op augmentation, then the given overrides."""
    params = ViewAugmentation(**IDENTITY).sample_params(images.shape[0])
    params.update(overrides)
    return aug.apply_params(images, params)


@pytest.mark.parametrize("images", [uint8_batch(), uint8_batch(c=1, h=28, w=28), float_batch(h=40, w=36)])
def test_shapes_dtype_and_range(images):
    out = ViewAugmentation(size=24, blur_prob=0.5, solarize_prob=0.5, **RAW)(images)
    assert out.shape == (4, 3, 24, 24) and out.dtype == torch.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    norm = ViewAugmentation(size=24).normalize(images)
    assert norm.shape == (4, 3, 24, 24) and norm.dtype == torch.float32


def test_normalisation_uses_mean_and_std():
    images = float_batch()
    aug = ViewAugmentation(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5))
    mean, std = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1), torch.tensor([0.2, 0.25, 0.5]).view(1, 3, 1, 1)
    expected = (images - mean) / std
    torch.testing.assert_close(aug.normalize(images), expected)
    assert len(list(aug.parameters())) == 0 and "mean" not in aug.state_dict()


def test_two_calls_differ_and_seeds_reproduce():
    aug, images = ViewAugmentation(), uint8_batch()
    assert not torch.allclose(aug(images), aug(images))
    torch.manual_seed(3)
    a = aug(images)
    torch.manual_seed(3)
    assert torch.equal(a, aug(images))
    b = aug(images, generator=torch.Generator().manual_seed(7))
    assert torch.equal(b, aug(images, generator=torch.Generator().manual_seed(7)))


def test_identity_params_reproduce_input_and_flip():
    images = float_batch()
    torch.testing.assert_close(ViewAugmentation(**IDENTITY)(images), images, atol=1e-5, rtol=0)
    flip = dict(IDENTITY, hflip_prob=1.0)
    torch.testing.assert_close(ViewAugmentation(**flip)(images), images.flip(-1), atol=1e-5, rtol=0)
    gray = uint8_batch(c=1)
    torch.testing.assert_close(ViewAugmentation(**IDENTITY)(gray), gray.float().expand(-1, 3, -1, -1) / 255,
                               atol=1e-5, rtol=0)


def test_crop_area_distribution():
    n, lo, hi = 4096, 0.08, 1.0
    square = ViewAugmentation(crop_scale=(lo, hi), crop_ratio=(1.0, 1.0)).sample_params(n)
    assert square["area"].min() >= lo - 1e-6 and square["area"].max() <= hi + 1e-6
    se = (hi - lo) / math.sqrt(12 * n)
    assert abs(square["area"].mean().item() - (lo + hi) / 2) < 4 * se
    # With the default ratios some draws do not fit: torchvision redraws them (up to 10 times). An
    # independent simulation of that rule, one candidate at a time, in float64.
    params = ViewAugmentation(crop_scale=(lo, hi)).sample_params(n, generator=torch.Generator().manual_seed(1))
    rng = np.random.default_rng(0)
    areas = []
    for _ in range(50_000):
        for _attempt in range(10):
            scale, ratio = rng.uniform(lo, hi), math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
            w, h = math.sqrt(scale * ratio), math.sqrt(scale / ratio)
            if w <= 1 and h <= 1:
                areas.append(w * h)
                break
        else:
            areas.append(1.0)
    area = np.asarray(areas)
    assert params["area"].min() >= lo - 1e-6 and params["area"].max() <= hi + 1e-6
    assert abs(params["area"].mean().item() - area.mean()) < 4 * area.std() / math.sqrt(n)
    assert params["w"].max() <= 1 and params["h"].max() <= 1
    assert ((params["cx"].abs() <= 1 - params["w"] + 1e-6) & (params["cy"].abs() <= 1 - params["h"] + 1e-6)).all()


def test_crop_aspect_ratio_distribution():
    n = 4096  # small areas: never clamped, so log(w / h) ~ U(log 1/2, log 2) exactly
    params = ViewAugmentation(crop_scale=(0.1, 0.2), crop_ratio=(0.5, 2.0)).sample_params(n)
    log_ratio = torch.log(params["w"] / params["h"])
    assert log_ratio.abs().max() <= math.log(2) + 1e-5
    assert abs(log_ratio.mean().item()) < 4 * 2 * math.log(2) / math.sqrt(12 * n)
    assert abs(log_ratio.std().item() - 2 * math.log(2) / math.sqrt(12)) < 0.02
    # ratio is in pixels: on a 20 x 40 (H x W) image a ratio-1 crop covers twice the height fraction
    wide = ViewAugmentation(crop_scale=(0.1, 0.2), crop_ratio=(1.0, 1.0)).sample_params(8, aspect=0.5)
    torch.testing.assert_close(wide["w"] * 40, wide["h"] * 20)


def test_jitter_and_grayscale_probabilities():
    n, b = 4096, 0.4
    aug = ViewAugmentation(jitter_prob=0.8, brightness=b, grayscale_prob=0.2, hflip_prob=0.5)
    params = aug.sample_params(n, generator=torch.Generator().manual_seed(2))
    for key, p in [("jitter", 0.8), ("grayscale", 0.2), ("flip", 0.5)]:
        assert abs(params[key].float().mean().item() - p) < 4 * math.sqrt(p * (1 - p) / n), key
    factors = params["brightness"]
    assert factors.min() >= 1 - b and factors.max() <= 1 + b
    assert (factors[~params["jitter"]] == 1).all() and (params["hue"][~params["jitter"]] == 0).all()
    assert abs(factors[params["jitter"]].std().item() - 2 * b / math.sqrt(12)) < 0.02


def test_grayscale_and_solarize():
    images = float_batch()
    out = ViewAugmentation(**dict(IDENTITY, grayscale_prob=1.0))(images)
    assert torch.allclose(out[:, 0], out[:, 1]) and torch.allclose(out[:, 1], out[:, 2])
    expected = 0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]
    torch.testing.assert_close(out[:, 0], expected, atol=1e-5, rtol=0)
    out = ViewAugmentation(**dict(IDENTITY, solarize_prob=1.0))(images)
    torch.testing.assert_close(out, torch.where(images >= 0.5, 1 - images, images), atol=1e-5, rtol=0)


def test_colour_ops_against_torchvision():
    images = float_batch()
    aug = ViewAugmentation(**dict(IDENTITY, hue=0.5))
    ones, zeros = torch.ones(4), torch.zeros(4)
    # hue 0 and saturation 1: unchanged (the HSV round trip is exact to float precision)
    torch.testing.assert_close(with_params(aug, images, saturation=ones, hue=zeros), images, atol=1e-5, rtol=0)
    shifts = torch.tensor([0.1, -0.1, 0.37, -0.5])
    out = with_params(aug, images, hue=shifts)
    expected = torch.stack([TF.adjust_hue(img, s.item()) for img, s in zip(images, shifts)])
    torch.testing.assert_close(out, expected, atol=1e-2, rtol=0)
    factors = torch.tensor([0.6, 1.0, 1.3, 1.4])
    for name, fn in [("brightness", TF.adjust_brightness), ("contrast", TF.adjust_contrast),
                     ("saturation", TF.adjust_saturation)]:
        out = with_params(aug, images, **{name: factors})
        expected = torch.stack([fn(img, f.item()) for img, f in zip(images, factors)])
        torch.testing.assert_close(out, expected, atol=1e-4, rtol=0, msg=name)


def test_blur_is_a_normalised_smoothing():
    images = float_batch(h=64, w=64)
    aug = ViewAugmentation(**dict(IDENTITY, size=64, blur_prob=1.0))
    assert aug.blur_kernel == 7
    blurred = with_params(aug, images, blur=torch.tensor([True, True, False, False]), sigma=torch.full((4,), 1.5))
    torch.testing.assert_close(blurred[2:], images[2:], atol=1e-5, rtol=0)
    torch.testing.assert_close(blurred.mean((1, 2, 3)), images.mean((1, 2, 3)), atol=1e-2, rtol=0)
    assert (blurred[:2].std() < 0.6 * images[:2].std())
    flat = torch.full((2, 3, 64, 64), 0.3)
    torch.testing.assert_close(with_params(aug, flat, blur=torch.ones(2, dtype=torch.bool),
                                           sigma=torch.full((2,), 2.0)), flat)


@pytest.mark.parametrize("shape", [(3, 32, 32), (2, 2, 32, 32), (2, 4, 32, 32), (1, 2, 3, 32, 32)])
def test_bad_shapes_raise(shape):
    with pytest.raises(ValueError, match=str(shape).replace("(", r"\(").replace(")", r"\)")):
        ViewAugmentation()(torch.zeros(shape))


@pytest.mark.parametrize("kwargs", [dict(jitter_prob=1.5), dict(hflip_prob=-0.1), dict(crop_scale=(0.0, 1.0)),
                                    dict(crop_scale=(0.8, 0.5)), dict(crop_scale=(0.5, 1.2))])
def test_bad_construction_raises(kwargs):
    with pytest.raises(ValueError):
        ViewAugmentation(**kwargs)


def test_presets():
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    assert augmentation_preset("simclr", 32, mean, std).crop_scale == (0.08, 1.0)
    moco = augmentation_preset("moco_v2", 32, mean, std)
    assert moco.crop_scale == (0.2, 1.0) and moco.jitter_prob == 0.8 and moco.grayscale_prob == 0.2
    assert (moco.brightness, moco.contrast, moco.saturation, moco.hue) == (0.4, 0.4, 0.4, 0.1)
    assert augmentation_preset("simsiam", 32, mean, std).blur_prob == 0.0
    assert augmentation_preset("simsiam", 96, mean, std).blur_prob == 0.5
    with pytest.raises(ValueError, match="simclr, moco_v2, simsiam"):
        augmentation_preset("byol", 32, mean, std)
    import ssl_siamese.augment  # the old module still answers with the presets (benchmarks import them from it)

    assert ssl_siamese.augment.augmentation_preset is augmentation_preset


def test_the_other_presets_keep_their_settings():
    """Metric learning's, MAE's and fine-tuning's views, gathered in ``views/presets.py``, as they were defined."""
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    siamese, mae, finetune = (preset(32, mean, std) for preset in (metric_learning_views, mae_augmentation,
                                                                    finetune_views))
    assert (siamese.crop_scale, siamese.saturation, siamese.hue, siamese.grayscale_prob) == ((0.5, 1.0), 0.0, 0.0, 0.0)
    assert (siamese.jitter_prob, siamese.brightness, siamese.contrast) == (0.8, 0.4, 0.4)
    assert (mae.crop_scale, mae.hflip_prob, mae.jitter_prob, mae.grayscale_prob, mae.blur_prob) == (
        (0.2, 1.0), 0.5, 0.0, 0.0, 0.0)
    assert (finetune.crop_scale, finetune.jitter_prob, finetune.grayscale_prob, finetune.blur_prob) == (
        (0.5, 1.0), 0.0, 0.0, 0.0)


@pytest.mark.parametrize("class_path", ["ssl_siamese.augment.ViewAugmentation",  # the old path, in users' YAMLs
                                        "ssl_siamese.views.augment.ViewAugmentation"])
def test_a_yaml_class_path_old_or_new_gives_the_view_augmentation(class_path):
    parser = ArgumentParser()
    parser.add_argument("--augmentation", type=Optional[ViewAugmentation])
    config = parser.parse_string(f"augmentation: {{class_path: {class_path}, init_args: {{size: 28, hue: 0.0}}}}")
    augmentation = parser.instantiate_classes(config).augmentation
    assert type(augmentation) is ViewAugmentation and (augmentation.size, augmentation.hue) == (28, 0.0)
