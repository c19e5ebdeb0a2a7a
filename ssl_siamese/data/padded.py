"""Images of different sizes as one batch: zero-padded top-left, with each image's true size alongside.

A streaming loader decodes JPEGs of any shape (e.g. shortest side capped at 256 px). Use
:func:`pad_images` as (part of) the DataLoader's collate, move both tensors to the device and pass
``sizes`` to :class:`ssl_siamese.views.augment.ViewAugmentation`, which crops each image inside its own region.

Example:
    >>> images, sizes = pad_images([torch.zeros(3, 160, 240, dtype=torch.uint8),
    ...                             torch.zeros(1, 200, 120, dtype=torch.uint8)])
    >>> images.shape, sizes.tolist()
    (torch.Size([2, 3, 200, 240]), [[160, 240], [200, 120]])
"""

from __future__ import annotations

import torch
from torch import Tensor


def pad_images(images: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Stack ``(C, h, w)`` uint8 images (C in {1, 3}; gray repeated to RGB) into ``(B, 3, H_max, W_max)``,
    each in the top-left corner with zeros around it, and their ``(B, 2)`` int64 ``(h, w)`` sizes."""
    if not images:
        raise ValueError("pad_images needs at least one image.")
    for image in images:
        if image.dim() != 3 or image.shape[0] not in (1, 3) or image.dtype != torch.uint8:
            raise ValueError(f"Expected uint8 images of shape (C, h, w) with C in {{1, 3}}, "
                             f"got {image.dtype} {tuple(image.shape)}.")
    sizes = torch.tensor([image.shape[1:] for image in images], dtype=torch.int64)
    height, width = sizes.max(0).values.tolist()
    batch = torch.zeros(len(images), 3, height, width, dtype=torch.uint8)
    for out, image in zip(batch, images):
        out[:, :image.shape[1], :image.shape[2]] = image  # broadcasts a gray channel over R, G, B
    return batch, sizes
