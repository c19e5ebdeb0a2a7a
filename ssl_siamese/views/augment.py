"""Batched view augmentation that runs on the accelerator.

Self-supervised methods on small images (CIFAR-sized) are limited by the CPU input pipeline, not the
model: two PIL augmentation chains per image on a few CPU cores cannot feed a GPU. Here the loader ships
uint8 tensors and :class:`ViewAugmentation` makes the views on the device after the batch transfer. Every
op is vectorised over the batch with per-sample random parameters (no Python loop over samples), and
all randomness comes from ``torch.rand`` on the images' device, so ``torch.manual_seed`` or an explicit
``generator`` makes it reproducible.

Example:
    >>> aug = ViewAugmentation(32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))  # SimCLR's views
    >>> images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    >>> view0, view1 = aug(images), aug(images)  # two different random views, float32 (8, 3, 32, 32)

Images of different sizes travel as one top-left zero-padded batch plus their true ``(height, width)``
(:func:`ssl_siamese.data.padded.pad_images`); pass ``sizes=`` to :meth:`ViewAugmentation.forward` and
:meth:`ViewAugmentation.normalize` and every crop is drawn from, and sampled inside, its own image.

The presets (SimCLR's, MoCo's, BYOL's, DINO's multi-crop, ...) are in :mod:`ssl_siamese.views.presets`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_siamese._lazy import lazy_exports
from ssl_siamese.data.images import GRAY_WEIGHTS, grayscale, to_float_rgb  # noqa: F401 (pixel helpers, named here too)

CROP_ATTEMPTS = 10  # as torchvision's RandomResizedCrop.get_params


def shift_hue(images: Tensor, shift: Tensor) -> Tensor:
    """Rotate the hue of each image by ``shift[i]`` (fraction of a turn), as RGB -> HSV -> RGB does.

    In HSV terms a pixel keeps its value ``V = max`` and its chroma ``delta = max - min``; only the hue
    ``h`` moves, and channel ``n`` (5, 3, 1 for R, G, B) becomes ``V - delta * clamp(2 - |k - 2|, 0, 1)`` with
    ``k = (n + 6h) mod 6`` (the closed-form HSV -> RGB), computed as
    ``(V - 2 delta) + delta * clamp(|k - 2|, 1, 2)``. Written with few full-size passes, in place where
    possible: on the CPU every new batch-sized tensor costs fresh pages.
    """
    r, g, b = images.unbind(1)
    value, argmax = images.max(1)
    delta = value - images.min(1).values
    # Hue in sixths of a turn, in [-1, 5): 2 * (index of the max) + (next - previous channel) / delta.
    hue6 = torch.where(argmax == 0, g - b, torch.where(argmax == 1, b - r, r - g))
    hue6 = hue6.div_(delta.clamp(min=1e-12)).add_(argmax, alpha=2.0).add_(6.0 * shift.view(-1, 1, 1))
    n = torch.tensor([5.0, 3.0, 1.0], device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    ramp = (hue6.unsqueeze(1) + n).remainder_(6.0).sub_(2.0).abs_().clamp_(1.0, 2.0)
    base = value.sub_(delta, alpha=2.0).unsqueeze(1)
    return torch.addcmul(base, ramp, delta.unsqueeze(1), out=ramp)


def on_selected(images: Tensor, selected: Tensor, op: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """``images[selected] = op(images[selected], index)`` in place, ``op`` computed on the selected images only.

    ``selected`` is a ``(B,)`` bool mask and ``index`` the selected positions (for per-image parameters).
    Cheaper than ``torch.where(selected, op(images), images)`` whenever not every image is selected.
    """
    index = selected.nonzero().squeeze(1)
    if index.numel():
        images.index_copy_(0, index, op(images.index_select(0, index), index))
    return images


def _check_prob(name: str, p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p}.")


class ViewAugmentation(nn.Module):
    """Random resized crop + flip, colour jitter, grayscale, blur, solarize and normalisation, batched.

    Crop: area fraction ~ U(crop_scale) and log aspect ratio ~ U(log crop_ratio) with torchvision's
    ``RandomResizedCrop`` rejection rule (the first of 10 candidates that fits, else a centre crop), the
    10 candidates drawn at once for the whole batch, so the crops follow torchvision's distribution. Crop, flip and resize are one
    ``affine_grid`` + ``grid_sample`` (bilinear) per batch. Colour jitter is applied in a FIXED order
    (brightness, contrast, saturation, hue); torchvision randomises the order per image.

    Example:
        >>> aug = ViewAugmentation(size=32, blur_prob=0.5).to("cpu")
        >>> aug(torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)).shape
        torch.Size([4, 3, 32, 32])
    """

    def __init__(self, size: int = 32, crop_scale: tuple[float, float] = (0.08, 1.0),
                 crop_ratio: tuple[float, float] = (3 / 4, 4 / 3), hflip_prob: float = 0.5,
                 jitter_prob: float = 0.8, brightness: float = 0.4, contrast: float = 0.4,
                 saturation: float = 0.4, hue: float = 0.1, grayscale_prob: float = 0.2,
                 blur_prob: float = 0.0, blur_sigma: tuple[float, float] = (0.1, 2.0),
                 solarize_prob: float = 0.0,
                 mean: Sequence[float] = (0.4914, 0.4822, 0.4465),
                 std: Sequence[float] = (0.2470, 0.2435, 0.2616)) -> None:
        super().__init__()
        for name, p in [("hflip_prob", hflip_prob), ("jitter_prob", jitter_prob),
                        ("grayscale_prob", grayscale_prob), ("blur_prob", blur_prob),
                        ("solarize_prob", solarize_prob)]:
            _check_prob(name, p)
        if not 0.0 < crop_scale[0] <= crop_scale[1] <= 1.0:
            raise ValueError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {crop_scale}.")
        if not 0.0 < crop_ratio[0] <= crop_ratio[1]:
            raise ValueError(f"crop_ratio must satisfy 0 < lo <= hi, got {crop_ratio}.")
        self.size, self.crop_scale, self.crop_ratio = size, tuple(crop_scale), tuple(crop_ratio)
        self.hflip_prob, self.jitter_prob, self.grayscale_prob = hflip_prob, jitter_prob, grayscale_prob
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue
        self.blur_prob, self.blur_sigma, self.solarize_prob = blur_prob, tuple(blur_sigma), solarize_prob
        kernel = int(round(0.1 * size))
        self.blur_kernel = max(3, kernel + 1 - kernel % 2)  # odd, >= 3
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def sample_params(self, batch_size: int, device: torch.device | str | None = None,
                      generator: torch.Generator | None = None,
                      aspect: float | Tensor = 1.0) -> dict[str, Tensor]:
        """Draw per-sample parameters (one ``torch.rand`` call); ``aspect`` is the input's H / W, one float
        for the batch or a ``(B, 1)`` tensor with each image's own.

        Crop ``w``/``h`` are fractions of the image width/height, ``cx``/``cy`` the crop centre in
        [-1, 1] coordinates of that image, ``area = w * h``. Samples not jittered get identity factors / zero hue.
        """
        u = torch.rand(batch_size, 14 + 2 * (CROP_ATTEMPTS - 1), device=device, generator=generator)
        w, h = self._crop_size(torch.cat([u[:, :1], u[:, 14::2]], 1), torch.cat([u[:, 1:2], u[:, 15::2]], 1),
                               aspect)
        jitter = u[:, 5] < self.jitter_prob

        def factor(col: int, strength: float) -> Tensor:
            drawn = 1.0 - strength + 2.0 * strength * u[:, col]
            return torch.where(jitter, drawn, torch.ones_like(drawn))

        sig_lo, sig_hi = self.blur_sigma
        return {
            "w": w, "h": h, "area": w * h,
            "cx": (1.0 - w) * (2.0 * u[:, 2] - 1.0), "cy": (1.0 - h) * (2.0 * u[:, 3] - 1.0),
            "flip": u[:, 4] < self.hflip_prob, "jitter": jitter,
            "brightness": factor(6, self.brightness), "contrast": factor(7, self.contrast),
            "saturation": factor(8, self.saturation),
            "hue": torch.where(jitter, self.hue * (2.0 * u[:, 9] - 1.0), torch.zeros_like(u[:, 9])),
            "grayscale": u[:, 10] < self.grayscale_prob, "blur": u[:, 11] < self.blur_prob,
            "sigma": sig_lo + (sig_hi - sig_lo) * u[:, 12], "solarize": u[:, 13] < self.solarize_prob,
        }

    def _crop_size(self, scale_u: Tensor, ratio_u: Tensor, aspect: float | Tensor) -> tuple[Tensor, Tensor]:
        """Crop width/height fractions as torchvision draws them: the first of ``CROP_ATTEMPTS`` candidates
        (area ~ U(scale), log ratio ~ U(log ratio)) that fits in the image, else a centre crop of the
        whole image with its ratio clamped to ``crop_ratio``. ``scale_u``/``ratio_u``: (B, attempts) in [0, 1);
        ``aspect`` (H / W): a float, or a ``(B, 1)`` tensor for images of different shapes."""
        lo, hi = self.crop_scale
        scale = lo + (hi - lo) * scale_u
        log_lo, log_hi = math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1])
        ratio = torch.exp(log_lo + (log_hi - log_lo) * ratio_u)  # width / height in pixels
        w, h = torch.sqrt(scale * ratio * aspect), torch.sqrt(scale / ratio / aspect)
        fits = (w <= 1.0) & (h <= 1.0)
        first = fits.to(torch.uint8).argmax(1, keepdim=True)  # index of the first candidate that fits
        image_ratio = 1.0 / aspect  # W / H
        if isinstance(aspect, Tensor):  # per image: (B, 1) -> (B,)
            fallback_w = (self.crop_ratio[1] / image_ratio).clamp(max=1.0).view(-1).to(w.dtype)
            fallback_h = (image_ratio / self.crop_ratio[0]).clamp(max=1.0).view(-1).to(w.dtype)
        else:
            fallback_w = torch.full_like(w[:, 0], min(1.0, self.crop_ratio[1] / image_ratio))
            fallback_h = torch.full_like(h[:, 0], min(1.0, image_ratio / self.crop_ratio[0]))
        found = fits.any(1)
        w = torch.where(found, w.gather(1, first).squeeze(1), fallback_w)
        h = torch.where(found, h.gather(1, first).squeeze(1), fallback_h)
        return w, h

    def forward(self, images: Tensor, generator: torch.Generator | None = None,
                sizes: Tensor | None = None) -> Tensor:
        """One random view per image: ``(B, 1|3, H, W)`` uint8 or [0, 1] float -> normalised float32.

        ``sizes``: optional ``(B, 2)`` true ``(height, width)`` of images padded top-left into the batch;
        each crop then follows torchvision's rule for its own image and stays inside it.
        """
        images = to_float_rgb(images)
        params = self.sample_params(images.shape[0], images.device, generator, _aspect(images, sizes))
        return self.apply_params(images, params, sizes)

    def views(self, images: Tensor, count: int, generator: torch.Generator | None = None,
              sizes: Tensor | None = None) -> list[Tensor]:
        """``count`` random views per image in one batched call (multi-crop's local views), each like ``forward``'s.

        The parameters of all ``count * B`` views come from one ``torch.rand`` (view-major: view 0 of every
        image, then view 1, ...), and the ``count`` crops of an image are sampled from it in one ``grid_sample``
        without copying the image ``count`` times. ``count == 1`` is ``[forward(...)]``, the same random draws.

        Example:
            >>> local = ViewAugmentation(size=16, crop_scale=(0.05, 0.4))
            >>> [v.shape for v in local.views(torch.zeros(4, 3, 32, 32, dtype=torch.uint8), 6)][0]
            torch.Size([4, 3, 16, 16])
        """
        if count < 1:
            raise ValueError(f"count must be a positive number of views, got {count}.")
        if count == 1:
            return [self(images, generator, sizes)]
        images = to_float_rgb(images)
        aspect = _aspect(images, sizes)
        aspect = aspect.repeat(count, 1) if isinstance(aspect, Tensor) else aspect
        params = self.sample_params(count * images.shape[0], images.device, generator, aspect)
        return list(self.apply_params(images, params, sizes).chunk(count))

    def apply_params(self, images: Tensor, params: dict[str, Tensor], sizes: Tensor | None = None) -> Tensor:
        """Apply given ``sample_params`` to a batch (``sizes`` as in ``forward``); deterministic (useful for tests).

        Parameters for ``count * B`` views of ``B`` images give the ``count`` views of each (``views``), view-major.
        """
        images = to_float_rgb(images)
        if params["w"].shape[0] % images.shape[0]:
            raise ValueError(f"params for {params['w'].shape[0]} views do not divide among {images.shape[0]} images.")
        x = self._crop_flip(images, params, None if sizes is None else _check_sizes(sizes, images))
        # x is new: the steps below change it in place, each only on the images it selects.
        jittered = ((params["brightness"] != 1) | (params["contrast"] != 1) | (params["saturation"] != 1)
                    | (params["hue"] != 0))  # the images whose factors change them
        on_selected(x, jittered, lambda v, i: self._color_jitter(v, {k: p[i] for k, p in params.items()}))
        on_selected(x, params["grayscale"], lambda v, i: grayscale(v).expand_as(v))
        on_selected(x, params["blur"], lambda v, i: self._blur(v, params["sigma"][i]))
        x.clamp_(0.0, 1.0)  # luma weights and blur kernels sum to 1 only up to rounding
        on_selected(x, params["solarize"], lambda v, i: torch.where(v >= 0.5, 1.0 - v, v))
        return x.sub_(self.mean).div_(self.std)

    def normalize(self, images: Tensor, sizes: Tensor | None = None) -> Tensor:
        """Evaluation path without randomness: to float RGB, resize (bilinear, antialias), normalise.

        With ``sizes`` (``(B, 2)`` true height, width of a top-left padded batch) each image gets the standard
        eval transform instead, torchvision's ``Resize(size)`` (shorter side to ``size``) + ``CenterCrop(size)``,
        as one batched bilinear ``grid_sample`` WITHOUT antialiasing: equal to torchvision with
        ``antialias=False``; when shrinking, high frequencies alias where torchvision's default would blur them.
        """
        x = to_float_rgb(images)
        if sizes is not None:
            sizes = _check_sizes(sizes, x)
            x = _sample_regions(x, _resize_center_crop_theta(sizes, self.size, x.shape[-2:]), sizes, self.size)
            return (x.clamp(0.0, 1.0) - self.mean) / self.std
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                              antialias=True).clamp(0.0, 1.0)
        return (x - self.mean) / self.std

    def _crop_flip(self, x: Tensor, p: dict[str, Tensor], sizes: Tensor | None = None) -> Tensor:
        # theta maps output coords in [-1, 1] to input coords; the full image is the identity matrix.
        sign = torch.where(p["flip"], -torch.ones_like(p["w"]), torch.ones_like(p["w"]))
        zero = torch.zeros_like(p["w"])
        if sizes is not None:
            # Image i fills [-1, -1 + 2 s) of the padded batch's [-1, 1) along each axis, s = its size / padded
            # size: image coordinate u lands on u s + (s - 1) (exactly u when s = 1). Scale the crop into it.
            views = sizes.repeat(p["w"].shape[0] // sizes.shape[0], 1)  # each image's size for each of its views
            sx = views[:, 1].to(x.dtype) / x.shape[3]
            sy = views[:, 0].to(x.dtype) / x.shape[2]
            theta = torch.stack([torch.stack([p["w"] * sign * sx, zero, p["cx"] * sx + (sx - 1.0)], 1),
                                 torch.stack([zero, p["h"] * sy, p["cy"] * sy + (sy - 1.0)], 1)], 1)
            return _sample_regions(x, theta, sizes, self.size)
        theta = torch.stack([torch.stack([p["w"] * sign, zero, p["cx"]], 1),
                             torch.stack([zero, p["h"], p["cy"]], 1)], 1)
        grid = F.affine_grid(theta, [theta.shape[0], 3, self.size, self.size], align_corners=False)
        return _grid_sample(x, grid)

    def _color_jitter(self, x: Tensor, p: dict[str, Tensor]) -> Tensor:
        """Brightness, contrast, saturation, hue with the factors in ``p``, each clamped to [0, 1]; in place
        on ``x`` (except the hue, which returns a new tensor)."""
        x.mul_(p["brightness"].view(-1, 1, 1, 1)).clamp_(0.0, 1.0)
        c = p["contrast"].view(-1, 1, 1, 1)
        mean = grayscale(x).mean((1, 2, 3), keepdim=True)  # before x changes in place
        x.mul_(c).add_(mean.mul_(1.0 - c)).clamp_(0.0, 1.0)
        s = p["saturation"].view(-1, 1, 1, 1)
        gray = grayscale(x)
        x.mul_(s).add_(gray.mul_(1.0 - s)).clamp_(0.0, 1.0)
        return shift_hue(x, p["hue"]).clamp_(0.0, 1.0) if self.hue > 0 else x

    def _blur(self, x: Tensor, sigma: Tensor) -> Tensor:
        """Gaussian blur of each image with its own ``sigma`` (``(B,)``), separable, reflect padding."""
        batch, channels, height, width = x.shape
        offsets = torch.arange(self.blur_kernel, device=x.device, dtype=x.dtype) - self.blur_kernel // 2
        kernel = torch.exp(-offsets.pow(2) / (2.0 * sigma.view(-1, 1) ** 2))
        kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(channels, 0)
        pad = self.blur_kernel // 2
        y = x.reshape(1, batch * channels, height, width)
        y = F.conv2d(F.pad(y, (pad, pad, 0, 0), mode="reflect"), kernel.view(-1, 1, 1, self.blur_kernel),
                     groups=batch * channels)
        y = F.conv2d(F.pad(y, (0, 0, pad, pad), mode="reflect"), kernel.view(-1, 1, self.blur_kernel, 1),
                     groups=batch * channels)
        return y.view(batch, channels, height, width)


def _check_sizes(sizes: Tensor, images: Tensor) -> Tensor:
    """Validate ``(B, 2)`` (height, width) sizes against a padded ``(B, C, H, W)`` batch; move to its device."""
    if sizes.shape != (images.shape[0], 2):
        raise ValueError(f"sizes must have shape ({images.shape[0]}, 2) (height, width), got {tuple(sizes.shape)}.")
    sizes = sizes.to(images.device)
    if (sizes < 1).any() or (sizes[:, 0] > images.shape[2]).any() or (sizes[:, 1] > images.shape[3]).any():
        raise ValueError(f"sizes must lie in [1, {images.shape[2]}] x [1, {images.shape[3]}] (the padded batch).")
    return sizes


def _resize_center_crop_theta(sizes: Tensor, size: int, padded: Sequence[int]) -> Tensor:
    """Per-image theta of torchvision's ``Resize(size)`` + ``CenterCrop(size)`` within a top-left padded batch.

    The resized image is ``size`` on the shorter side and ``int(size * long / short)`` on the other (as
    torchvision rounds); the crop starts at ``int(round((resized - size) / 2))``. Output pixel j samples
    resized pixel ``start + j``, i.e. the input at ``(start + j + 0.5) * true / resized`` in pixel-edge units.
    """
    true = sizes.double()
    short = true.min(1, keepdim=True).values
    resized = torch.where(true == short, torch.full_like(true, size), torch.floor(size * true / short))
    start = torch.round((resized - size) / 2.0)  # half to even, as the Python round torchvision uses
    pixel = true / resized  # input pixels per resized pixel, (B, 2) as (y, x)
    extent = torch.tensor(padded, dtype=torch.float64, device=sizes.device)
    scale = size * pixel / extent  # output [-1, 1] -> padded batch [-1, 1]
    shift = (2.0 * start + size) * pixel / extent - 1.0
    zero = torch.zeros_like(scale[:, 0])
    theta = torch.stack([torch.stack([scale[:, 1], zero, shift[:, 1]], 1),
                         torch.stack([zero, scale[:, 0], shift[:, 0]], 1)], 1)
    return theta.float()


def _sample_regions(x: Tensor, theta: Tensor, sizes: Tensor, size: int) -> Tensor:
    """``grid_sample`` of a top-left padded batch with the grid clamped to each image's own pixel centres.

    Bilinear sampling of a point within half a pixel of an image's right or bottom edge would mix in the
    padding beyond it. Clamping the grid to the centres of the image's first and last pixels (pixel
    coordinates [0, w - 1], [0, h - 1]) instead repeats the edge pixel, exactly what ``padding_mode="border"``
    does for an unpadded image; padding gets weight 0 (up to float rounding of the grid, ~1e-6 of a pixel).
    """
    height, width = x.shape[-2:]
    grid = F.affine_grid(theta.to(x.dtype), [theta.shape[0], 3, size, size], align_corners=False)
    extent = torch.tensor([width, height], dtype=x.dtype, device=x.device)  # grid's last axis is (x, y)
    low = 1.0 / extent - 1.0
    high = (2.0 * sizes.flip(1).to(x.dtype) - 1.0) / extent - 1.0
    high = high.repeat(theta.shape[0] // sizes.shape[0], 1)  # several views per image (``views``)
    grid = torch.maximum(torch.minimum(grid, high.view(-1, 1, 1, 2)), low)
    return _grid_sample(x, grid)


def _grid_sample(x: Tensor, grid: Tensor) -> Tensor:
    """Bilinear ``grid_sample`` (border padding) of ``count * B`` view-major grids from the ``B`` images of ``x``.

    The ``count`` grids of an image are stacked along the output height and sampled in one call, without
    repeating ``x`` (grid_sample reads each output point on its own: the same values as ``count`` calls).
    """
    count = grid.shape[0] // x.shape[0]
    if count == 1:
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    batch, height, width = x.shape[0], grid.shape[1], grid.shape[2]
    grid = grid.view(count, batch, height, width, 2).transpose(0, 1).reshape(batch, count * height, width, 2)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.view(batch, x.shape[1], count, height, width).permute(2, 0, 1, 3, 4).reshape(-1, x.shape[1],
                                                                                           height, width)


def _aspect(images: Tensor, sizes: Tensor | None) -> float | Tensor:
    """H / W of a batch (a float), or of each image of a padded batch with true ``sizes`` (a ``(B, 1)`` tensor)."""
    if sizes is None:
        return images.shape[2] / images.shape[3]
    sizes = _check_sizes(sizes, images)
    return (sizes[:, :1].double() / sizes[:, 1:].double()).float()


# the presets moved to ssl_siamese.views.presets; ``from ssl_siamese.augment import augmentation_preset`` still works
__getattr__, __dir__ = lazy_exports(__name__, {"PRESETS": "ssl_siamese.views.presets",
                                               "augmentation_preset": "ssl_siamese.views.presets"})
