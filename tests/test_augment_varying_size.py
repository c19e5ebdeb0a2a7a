"""ViewAugmentation on images of different sizes, zero-padded top-left into one batch with their true sizes.

Checked against independent references: the unpadded path on each image alone, a sentinel in the padding
that no view may pick up, torchvision's ``RandomResizedCrop.get_params`` drawn on each image's own size
(two-sample KS), and torchvision's ``Resize`` + ``CenterCrop`` on real Imagenette photos.
"""

import io
import math
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms.functional import pil_to_tensor

from ssl_siamese.views.augment import ViewAugmentation
from ssl_siamese.data.padded import pad_images

RAW = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # no normalisation: outputs stay in [0, 1]
SIZES = [(160, 240), (240, 160), (200, 200)]  # (height, width), padded to 240 x 240
IMAGENETTE = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenette-224" / "imagenette-224.tar"


def random_images(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g) for h, w in sizes]


def row(params, i):
    return {key: value[i:i + 1] for key, value in params.items()}


def test_pad_images_layout_and_gray():
    gray = torch.full((1, 20, 30), 7, dtype=torch.uint8)
    rgb = torch.randint(0, 256, (3, 25, 10), dtype=torch.uint8)
    batch, sizes = pad_images([gray, rgb])
    assert batch.shape == (2, 3, 25, 30) and batch.dtype == torch.uint8
    assert sizes.dtype == torch.int64 and sizes.tolist() == [[20, 30], [25, 10]]
    assert (batch[0, :, :20, :30] == 7).all() and batch[0, :, 20:].sum() == 0
    assert torch.equal(batch[1, :, :, :10], rgb) and batch[1, :, :, 10:].sum() == 0
    with pytest.raises(ValueError):
        pad_images([torch.zeros(2, 5, 5, dtype=torch.uint8)])
    with pytest.raises(ValueError, match="sizes"):
        ViewAugmentation()(batch, sizes=torch.tensor([[26, 30], [25, 10]]))


@pytest.mark.parametrize("canvas", [(32, 40), (48, 56)])
def test_same_size_padded_equals_unpadded(canvas):
    images = torch.stack(random_images([(32, 40)] * 6))
    padded = torch.full((6, 3, *canvas), 255, dtype=torch.uint8)  # padding that must not show
    padded[:, :, :32, :40] = images
    sizes = torch.tensor([[32, 40]] * 6)
    aug = ViewAugmentation(size=24, blur_prob=0.5, solarize_prob=0.5, **RAW)  # compared in pixel units [0, 1]
    expected = aug(images, generator=torch.Generator().manual_seed(5))
    out = aug(padded, generator=torch.Generator().manual_seed(5), sizes=sizes)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_each_view_equals_its_image_augmented_alone():
    images = random_images(SIZES, seed=1)
    padded, sizes = pad_images(images)
    aug = ViewAugmentation(size=48, blur_prob=0.5)
    aspect = sizes[:, :1].double() / sizes[:, 1:]
    params = aug.sample_params(3, generator=torch.Generator().manual_seed(2), aspect=aspect.float())
    out = aug.apply_params(padded, params, sizes)
    for i, image in enumerate(images):  # sizes=None: w, h, cx, cy are relative to the image itself
        # 2e-4 in normalised units (5e-5 of the pixel range): the blur's batched convolution rounds differently
        # with the batch's make-up
        torch.testing.assert_close(out[i:i + 1], aug.apply_params(image[None], row(params, i)), atol=2e-4, rtol=0)


@pytest.mark.parametrize("shrink", [1, 5])  # 5: 48 x 32 to 40 x 40 in 48 x 48, crops enlarged to 64 px views
def test_views_never_see_the_padding(shrink):
    sizes = torch.tensor(SIZES * 40) // shrink
    padded = torch.full((len(sizes), 3, 240 // shrink, 240 // shrink), 255, dtype=torch.uint8)  # sentinel ...
    for image, (h, w) in zip(padded, sizes.tolist()):
        image[:, :h, :w] = 0  # ... except in the black images themselves
    # Full colour pipeline; solarize off since it maps black to white. Jitter, gray and blur keep black black.
    aug = ViewAugmentation(size=64, blur_prob=0.5, **RAW)
    views = aug(padded, generator=torch.Generator().manual_seed(0), sizes=sizes)
    # Where a crop is enlarged, its outer samples fall in the image's last half pixel; the clamped grid keeps
    # bilinear off the padding there (rounding may leave it ~1e-5 of a pixel's weight).
    assert views.max() < 1e-3
    # The same batch without sizes does crop into the padding: the check above has teeth.
    assert aug(padded, generator=torch.Generator().manual_seed(0)).max() > 0.5


def ks_statistic(a, b) -> float:
    """Two-sample Kolmogorov-Smirnov statistic (scipy's when installed)."""
    try:
        from scipy.stats import ks_2samp
    except ImportError:
        values = np.concatenate([a, b])
        cdf_a = np.searchsorted(np.sort(a), values, side="right") / len(a)
        cdf_b = np.searchsorted(np.sort(b), values, side="right") / len(b)
        return float(np.max(np.abs(cdf_a - cdf_b)))
    return float(ks_2samp(a, b).statistic)


@pytest.mark.parametrize("size", [(160, 240), (240, 160), (60, 240)])  # 60 x 240: the centre-crop fallback too
def test_crop_distribution_follows_torchvision_per_image(size):
    n, (height, width) = 3000, size
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    aug = ViewAugmentation(size=32, crop_scale=scale, crop_ratio=ratio)
    # The batch mixes the size under test with others, so each row must use its own aspect.
    others = torch.tensor([[240, 60], [200, 200]]).repeat(n, 1)
    sizes = torch.cat([torch.tensor([[height, width]]).repeat(n, 1), others])
    params = aug.sample_params(len(sizes), generator=torch.Generator().manual_seed(0),
                               aspect=(sizes[:, :1].double() / sizes[:, 1:]).float())
    assert ((params["cx"].abs() <= 1 - params["w"] + 1e-6) & (params["cy"].abs() <= 1 - params["h"] + 1e-6)).all()
    ours_w = torch.round(params["w"][:n] * width).double().numpy()  # torchvision draws whole pixels
    ours_h = torch.round(params["h"][:n] * height).double().numpy()  # float64 as the reference: equal ties
    torch.manual_seed(0)
    fake = torch.empty(3, height, width, dtype=torch.uint8)
    crops = np.array([T.RandomResizedCrop.get_params(fake, list(scale), list(ratio)) for _ in range(n)], dtype=float)
    ref_h, ref_w = crops[:, 2], crops[:, 3]
    critical = 1.95 * math.sqrt(2 / n)  # alpha = 0.001; fixed seeds, so deterministic
    assert ks_statistic(ours_w * ours_h / (height * width), ref_w * ref_h / (height * width)) < critical
    assert ks_statistic(np.log(ours_w / ours_h), np.log(ref_w / ref_h)) < critical


def imagenette_photos(count=4) -> list[Image.Image]:
    if not IMAGENETTE.is_file():
        pytest.skip(f"Imagenette not found at {IMAGENETTE}")
    photos = []
    with tarfile.open(IMAGENETTE) as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".JPEG"):
                photos.append(Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB"))
                if len(photos) == count:
                    return photos
    pytest.skip("Imagenette tar holds too few images")


# (height, width): shrink by 1.17 and 1.48, enlarge, shorter side already 128
NON_SQUARE = [(150, 260), (300, 190), (97, 131), (200, 128)]


def test_normalize_with_sizes_is_resize_and_center_crop():
    images = [pil_to_tensor(photo.resize((w, h), Image.BICUBIC))
              for photo, (h, w) in zip(imagenette_photos(len(NON_SQUARE)), NON_SQUARE)]
    padded, sizes = pad_images(images)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    out = ViewAugmentation(size=128, mean=mean, std=std).normalize(padded, sizes)
    assert out.shape == (4, 3, 128, 128)
    out = out * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    for i, image in enumerate(images):
        x = image.float() / 255
        # Without antialiasing torchvision does the same bilinear sampling: equal up to float rounding.
        exact = T.Compose([T.Resize(128, antialias=False), T.CenterCrop(128)])(x)
        torch.testing.assert_close(out[i], exact, atol=1e-4, rtol=0)
        # torchvision's default antialiases when shrinking (we do not): mean |diff| 0.003-0.007 here, max 0.15.
        default = T.Compose([T.Resize(128), T.CenterCrop(128)])(x)
        diff = (out[i] - default).abs()
        if min(NON_SQUARE[i]) <= 128:  # enlarging or same size: antialias changes nothing
            torch.testing.assert_close(out[i], default, atol=1e-4, rtol=0)
        assert diff.mean() < 0.01, (NON_SQUARE[i], diff.mean().item(), diff.max().item())
