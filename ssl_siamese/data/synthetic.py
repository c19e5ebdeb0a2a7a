"""Deterministic toy images for tests and smoke runs (no files, no download).

Example:
    >>> make_synthetic(20, seed=0).images.shape
    torch.Size([20, 3, 32, 32])
"""

from __future__ import annotations

import torch

from ssl_siamese.data.info import ImageTensors

SYNTHETIC_SIZES = {"train": 2048, "test": 512}
_SYNTHETIC_COLOURS = torch.tensor([
    [0.9, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.2, 0.9], [0.9, 0.9, 0.1], [0.9, 0.1, 0.9],
    [0.1, 0.9, 0.9], [1.0, 0.5, 0.0], [0.5, 0.0, 1.0], [0.95, 0.95, 0.95], [0.4, 0.25, 0.1]])


def make_synthetic(n: int, seed: int, size: int = 32, num_classes: int = 10) -> ImageTensors:
    """Deterministic toy images: each class a coloured shape or texture at a random place, on noise.

    Example:
        >>> make_synthetic(20, seed=0).images.shape
        torch.Size([20, 3, 32, 32])
    """
    g = torch.Generator().manual_seed(seed)
    labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]
    coords = torch.arange(size, dtype=torch.float32)
    y, x = coords.view(1, size, 1), coords.view(1, 1, size)
    centre = size / 2 + (torch.rand(n, 2, generator=g) - 0.5) * size * 0.35
    radius = size * (0.2 + 0.12 * torch.rand(n, generator=g)).view(n, 1, 1)
    dy, dx = y - centre[:, 0].view(n, 1, 1), x - centre[:, 1].view(n, 1, 1)
    dist = (dx ** 2 + dy ** 2).sqrt()
    shapes = [
        dist < radius,                                               # disc
        (dx.abs() < radius) & (dy.abs() < radius),                   # square
        (dy < radius) & (dy > 2 * dx.abs() - radius),                # triangle
        (dist < radius) & (dist > radius * 0.55),                    # ring
        (dx.abs() < radius * 0.3) | (dy.abs() < radius * 0.3),       # cross
        dx.abs() + dy.abs() < radius,                                # diamond
        (y % 6 < 3).expand(n, size, size),                           # horizontal stripes
        (x % 6 < 3).expand(n, size, size),                           # vertical stripes
        ((x // 4 + y // 4) % 2 == 0).expand(n, size, size),          # checkerboard
        ((x + y) % 8 < 4).expand(n, size, size),                     # diagonal stripes
    ]
    mask = torch.zeros(n, size, size)
    for c in range(num_classes):
        chosen = labels == c
        mask[chosen] = shapes[c % len(shapes)][chosen].float()
    colour = (_SYNTHETIC_COLOURS[labels % len(_SYNTHETIC_COLOURS)]
              + 0.08 * torch.randn(n, 3, generator=g)).view(n, 3, 1, 1)
    background = (0.15 + 0.2 * torch.rand(n, 3, generator=g)).view(n, 3, 1, 1)
    mask = mask.unsqueeze(1)
    images = colour * mask + background * (1 - mask) + 0.06 * torch.randn(n, 3, size, size, generator=g)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    return ImageTensors(images, labels.to(torch.int64), [f"class_{c}" for c in range(num_classes)])


