"""CLIP's symmetric image-text InfoNCE with a learnable temperature, negatives gathered from every DDP rank.

``logits = exp(log_scale) * normalize(images) @ normalize(texts).T``; the loss is the mean of the
cross-entropy of each image picking its own text and of each text picking its own image (Radford et al.,
2021). ``log_scale`` starts at ``log(1 / temperature)`` and is learned, clamped to ``max_scale`` (100 in
CLIP). lightly has no image-text loss, so it is written here. Under DDP each rank scores its own images and
texts against the gathered texts and images of all ranks (``lightly.utils.dist.gather`` keeps gradients):
W ranks of batch B compute the same loss and gradients as one process on the W*B pairs.

Example:
    >>> loss_fn = CLIPLoss(temperature=0.07)
    >>> loss = loss_fn(torch.randn(8, 64), torch.randn(8, 64))     # loss_fn.log_scale is a learned parameter
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from lightly.utils import dist
from torch import Tensor, nn


def _all_ranks(x: Tensor, enabled: bool) -> Tensor:
    if not enabled or dist.world_size() == 1:
        return x
    return torch.cat(dist.gather(x.contiguous()), dim=0)


class CLIPLoss(nn.Module):
    """Symmetric image-text InfoNCE; ``learn_temperature=False`` keeps ``temperature`` fixed.

    ``forward(images, texts)`` takes ``(B, D)`` embeddings whose row i are a pair; computed in float32.
    """

    def __init__(self, temperature: float = 0.07, learn_temperature: bool = True, max_scale: float = 100.0,
                 gather_distributed: bool = True) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)), requires_grad=learn_temperature)
        self.max_scale = max_scale
        self.gather_distributed = gather_distributed

    @property
    def scale(self) -> Tensor:
        """``1 / temperature``, clamped to ``max_scale``."""
        return self.log_scale.exp().clamp(max=self.max_scale)

    def forward(self, images: Tensor, texts: Tensor) -> Tensor:
        if images.shape != texts.shape or images.dim() != 2:
            raise ValueError(f"images {tuple(images.shape)} and texts {tuple(texts.shape)} must both be (B, D)")
        i = F.normalize(images.float(), dim=1)
        t = F.normalize(texts.float(), dim=1)
        rank = dist.rank() if self.gather_distributed else 0
        labels = torch.arange(len(i), device=i.device) + rank * len(i)
        scale = self.scale
        image_to_text = scale * i @ _all_ranks(t, self.gather_distributed).T
        text_to_image = scale * t @ _all_ranks(i, self.gather_distributed).T
        return (F.cross_entropy(image_to_text, labels) + F.cross_entropy(text_to_image, labels)) / 2
