"""The evaluation preprocessing of a backbone: images of any dtype, mode and size -> the normalised input it expects.

Training's evaluation images and every exported backbone's inference go through the same deterministic view
(:class:`Preprocess`): pixel values scaled by dtype and alpha composited (:func:`to_unit_rgb`), the shorter side
resized to the backbone's input size and the centre square kept (``ssl_siamese.data.images.resize_center_crop``),
then the mean and std of its metadata. Exports record the geometry's name (:data:`RESIZE`); :func:`preprocessing`
rebuilds it from an export's metadata.

Example:
    >>> transform = preprocessing({"image_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3})
    >>> transform(torch.zeros(2, 1, 28, 28, dtype=torch.uint8)).shape
    torch.Size([2, 3, 32, 32])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ssl_siamese.data.images import DEFAULT_BACKGROUND, resize_center_crop
from ssl_siamese.views.augment import ViewAugmentation

INTEGER_SCALES = {torch.uint8: 255.0, torch.uint16: 65535.0}
"""The integer pixel dtypes accepted and the value that means full intensity."""
FLOAT_TOLERANCE = 1e-3  # float images may stray this far outside [0, 1] (resampling overshoot, rounding)

RESIZE = "shorter_side_center_crop"
"""How exports record the preprocessing geometry (metadata ``"resize"``): training's evaluation images,
shorter side to ``image_size`` then the centre square (``ssl_siamese.data.images.resize_center_crop``)."""


def to_unit_rgb(images: Tensor, background: Sequence[int] = DEFAULT_BACKGROUND) -> Tensor:
    """float32 RGB in [0, 1] ``(B, 3, H, W)`` of a batch ``(B, C, H, W)`` of 1 (gray), 2 (gray + alpha),
    3 (RGB) or 4 (RGBA) channels.

    Values are scaled by dtype: uint8 by 1/255, uint16 (``torchvision.io.read_image`` of a 16-bit PNG) by
    1/65535; float images must already be in [0, 1] (checked); other dtypes are refused. Alpha is composited
    onto ``background`` (0-255 RGB, white by default), the rule ``ssl_siamese.data.images.read_image`` applies to
    training files, so a transparent pixel's hidden colour never shows.

    Raises:
        ValueError: another shape or channel count, an unsupported dtype, or float values outside [0, 1].
    """
    if images.dim() != 4 or not 1 <= images.shape[1] <= 4:
        raise ValueError(f"Expected images (B, C, H, W) with 1 (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA) "
                         f"channels, got shape {tuple(images.shape)}.")
    if images.dtype in INTEGER_SCALES:
        x = images.float() / INTEGER_SCALES[images.dtype]
    elif images.dtype.is_floating_point:
        x = images.float()
        low, high = (float(v) for v in torch.aminmax(x)) if x.numel() else (0.0, 0.0)
        if low < -FLOAT_TOLERANCE or high > 1.0 + FLOAT_TOLERANCE:
            raise ValueError(f"Float images must hold values in [0, 1], these range over [{low:.4g}, {high:.4g}]. "
                             "Divide 0-255 floats by 255 (or pass the uint8 tensor itself).")
        x = x.clamp(0.0, 1.0)
    else:
        raise ValueError(f"Images of dtype {images.dtype} are not supported: pass uint8 (0-255), uint16 "
                         "(0-65535) or float in [0, 1], e.g. images.to(torch.uint8) for 8-bit values in an int "
                         "tensor, or ssl_siamese.data.images.read_image(path) for a file.")
    if x.shape[1] in (2, 4):
        alpha = x[:, -1:]
        back = torch.tensor(background, dtype=x.dtype, device=x.device).view(1, 3, 1, 1) / 255.0
        x = x[:, :-1] * alpha + back[:, : x.shape[1] - 1] * (1.0 - alpha)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


class Preprocess(nn.Module):
    """The evaluation preprocessing of a backbone: no randomness, images in, normalised float32 out.

    Images ``(B, C, H, W)`` or one image ``(C, H, W)``, with C = 1 (gray), 2 (gray + alpha), 3 (RGB) or 4
    (RGBA), in uint8, uint16 or [0, 1] float (``to_unit_rgb``: alpha composited onto white), get training's
    evaluation geometry, :func:`ssl_siamese.data.images.resize_center_crop` (shorter side to ``size``, centre
    square; never squashed), and are normalised with ``mean`` and ``std`` (``ViewAugmentation.normalize``).
    Integer images are brought to 8-bit RGB first and resized in 8 bits, as ``read_image(path, size)``
    decodes training's folders, so ``Preprocess(...)(read_image(path))`` equals the normalised
    ``read_image(path, size)`` of training exactly. A list of images of different sizes is resized image by
    image and stacked. ``resize`` is the geometry's name recorded in exports; only :data:`RESIZE` exists.

    Example:
        >>> transform = Preprocess(32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
        >>> transform(torch.zeros(4, 1, 28, 28, dtype=torch.uint8)).shape
        torch.Size([4, 3, 32, 32])
        >>> transform([torch.zeros(4, 20, 30, dtype=torch.uint8), torch.zeros(3, 64, 64)]).shape
        torch.Size([2, 3, 32, 32])
    """

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], resize: str = RESIZE) -> None:
        super().__init__()
        if resize != RESIZE:
            raise ValueError(f"Unknown preprocessing resize {resize!r}: this version knows only {RESIZE!r} "
                             "(shorter side to the size, centre crop); upgrade ssl_siamese to read this export.")
        self.size, self.resize = int(size), resize
        self.views = ViewAugmentation(size=size, mean=mean, std=std)  # only its deterministic path is used

    def forward(self, images: Tensor | Sequence[Tensor]) -> Tensor:
        if isinstance(images, (list, tuple)):
            if not images:
                raise ValueError("No images to preprocess.")
            return torch.cat([self(image) for image in images])
        images = torch.as_tensor(images)
        if images.dim() == 3:  # one image (C, H, W)
            images = images.unsqueeze(0)
        rgb = to_unit_rgb(images)
        if not images.dtype.is_floating_point:  # 8-bit RGB, as read_image gives training's folders
            rgb = rgb.mul(255.0).round_().to(torch.uint8)
        return self.views.normalize(resize_center_crop(rgb, self.size).to(self.views.mean.device))

    def extra_repr(self) -> str:
        return (f"size={self.size}, resize={self.resize}, mean={self.views.mean.flatten().tolist()}, "
                f"std={self.views.std.flatten().tolist()}")


def preprocessing(metadata: Mapping[str, Any], image_size: int | None = None) -> Preprocess:
    """The evaluation preprocessing of an exported backbone (size, mean, std and ``resize`` from its metadata).

    ``image_size`` is used when the metadata records none (a backbone passed as a module). Exports written
    before the metadata recorded ``resize`` get training's geometry (:data:`RESIZE`), as newer ones do.
    """
    if not metadata.get("mean") or not metadata.get("std"):
        raise ValueError("The backbone metadata has no 'mean'/'std' normalisation; pass the metadata "
                         "returned by load_backbone, or a dict with image_size, mean and std.")
    size = int(metadata.get("image_size") or image_size or 0)
    if size <= 0:
        raise ValueError("The backbone metadata has no 'image_size'; add it to the metadata dict.")
    return Preprocess(size, metadata["mean"], metadata["std"], metadata.get("resize") or RESIZE)
