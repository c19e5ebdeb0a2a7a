"""``tiny_cnn``: a four-layer ConvNet for CPU tests and quick experiments.

Example:
    >>> module, dim = tiny_cnn("tiny_cnn", width=8)
    >>> module(torch.zeros(2, 3, 28, 28)).shape, dim
    (torch.Size([2, 32]), 32)
"""

from __future__ import annotations

import torch
from torch import nn


class TinyCNN(nn.Module):
    """Four conv-BN-ReLU blocks and global average pooling; ``feature_dim`` = ``width * 4``.

    Example:
        >>> TinyCNN(width=32)(torch.zeros(2, 3, 28, 28)).shape
        torch.Size([2, 128])
    """

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        channels = [3, width, width * 2, width * 4, width * 4]
        blocks = []
        for i, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:])):
            blocks += [
                nn.Conv2d(c_in, c_out, 3, stride=1 if i == 0 else 2, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
        self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.feature_dim = channels[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def tiny_cnn(name: str, width: int = 32) -> tuple[TinyCNN, int]:
    """The row ``tiny_cnn`` of ``BACKBONES``: ``(TinyCNN(width), width * 4)``."""
    model = TinyCNN(width)
    return model, model.feature_dim
