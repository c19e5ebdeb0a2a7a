"""Barlow Twins (Zbontar et al., 2021): the cross-correlation of the two views' embeddings driven to identity.

Example:
    >>> model = BarlowTwins(backbone="resnet18", cifar_stem=True, projection_dim=2048, hidden_dim=2048)
    >>> pl.Trainer(max_epochs=200).fit(model, datamodule=SSLDataModule("cifar10"))
"""

from __future__ import annotations

import torch
from lightly.loss import BarlowTwinsLoss
from lightly.models.modules import BarlowTwinsProjectionHead
from lightly.utils.dist import gather, world_size
from torch import Tensor

from ssl_siamese.methods.base import SiameseModule


def global_batch(*embeddings: Tensor) -> tuple[Tensor, ...]:
    """Each tensor gathered from all ranks (rank order) with its gradient; unchanged on one process."""
    if world_size() == 1:
        return embeddings
    return tuple(torch.cat(gather(z.contiguous())) for z in embeddings)


class BarlowTwins(SiameseModule):
    """Barlow Twins: ``z = g(f(x))``, each dimension standardised over the batch, ``C = z0^T z1 / N``; loss
    ``sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2`` (lightly's ``BarlowTwinsLoss``, in float32).

    Under DDP the loss is that of the GLOBAL batch, as the paper's code does (SyncBatchNorm standardisation,
    then all-reduce of ``C``): every rank gathers all ranks' embeddings with their gradient and applies the
    loss to the whole batch. lightly's own ``gather_distributed`` is not used because it standardises each
    rank's batch with that rank's statistics only and then averages the ranks' matrices, which is not the
    global-batch loss.

    Args:
        projection_dim: projector output size (8192 in the paper; lightly's CIFAR-10 benchmark uses 2048).
        hidden_dim: width of the projector's two hidden layers (8192 in the paper).
        lambda_param: weight of the redundancy-reduction (off-diagonal) term (5e-3 in the paper).
        **kwargs: the shared options of ``SiameseModule``; by default the views are BYOL's asymmetric ones,
            as in the paper (``views/presets.py``).
    """

    augmentation_preset_name = "byol"  # the paper uses BYOL's asymmetric views

    def __init__(self, projection_dim: int = 8192, hidden_dim: int = 8192, lambda_param: float = 5e-3,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.projection_head = BarlowTwinsProjectionHead(self.feature_dim, hidden_dim, projection_dim)
        self.criterion = BarlowTwinsLoss(lambda_param=lambda_param, gather_distributed=False)

    def shared_step(self, view0: Tensor, view1: Tensor) -> tuple[Tensor, Tensor]:
        z0, z1 = self.projection_head(self.encode_views(view0, view1)).float().chunk(2)
        with torch.autocast(device_type=z0.device.type, enabled=False):
            loss = self.criterion(*global_batch(z0, z1))
        return loss, z0
