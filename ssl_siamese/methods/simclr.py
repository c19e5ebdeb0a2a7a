"""SimCLR (Chen et al., 2020): a projection head and NT-Xent over the two views of a batch.

Example:
    >>> model = SimCLR(backbone="resnet18", cifar_stem=True, temperature=0.5)
    >>> trainer = pl.Trainer(max_epochs=200)
    >>> trainer.fit(model, datamodule=SSLDataModule("cifar10"))
"""

from __future__ import annotations

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from torch import Tensor

from ssl_siamese.methods.base import SiameseModule


class SimCLR(SiameseModule):
    """SimCLR: ``z = g(f(x))`` with a 2-layer BN projection head; NT-Xent with ``temperature``.

    Negatives are the other 2B-2 views of the batch, gathered from all ranks under DDP. The softmax is
    computed in float32 with the diagonal masked out (lightly's NTXentLoss), which stays accurate in
    bf16/fp16 training where "subtract e^(1/t)" variants cancel badly.

    Args:
        projection_dim: output size of the projection head.
        hidden_dim: hidden size of the projection head (``None``: the backbone's feature size).
        temperature: NT-Xent temperature (0.5 for CIFAR-10 as in the paper and lightly's benchmark).
        **kwargs: the shared options of ``SiameseModule`` (backbone, optimizer, lr, ...).
    """

    augmentation_preset_name = "simclr"

    def __init__(self, projection_dim: int = 128, hidden_dim: int | None = None,
                 temperature: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        hidden = hidden_dim or self.feature_dim
        self.projection_head = SimCLRProjectionHead(self.feature_dim, hidden, projection_dim)
        self.criterion = NTXentLoss(temperature=temperature, gather_distributed=True)

    def shared_step(self, view0: Tensor, view1: Tensor) -> tuple[Tensor, Tensor]:
        z0, z1 = self.projection_head(self.encode_views(view0, view1)).float().chunk(2)
        with torch.autocast(device_type=z0.device.type, enabled=False):
            loss = self.criterion(z0, z1)
        return loss, z0
