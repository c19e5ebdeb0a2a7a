"""VICReg (Bardes et al., 2022): variance, invariance and covariance terms on the two views' embeddings.

Example:
    >>> model = VICReg(backbone="resnet18", cifar_stem=True, projection_dim=2048, hidden_dim=2048)
    >>> pl.Trainer(max_epochs=200).fit(model, datamodule=SSLDataModule("cifar10"))
"""

from __future__ import annotations

import torch
from lightly.loss import VICRegLoss
from lightly.models.modules.heads import VICRegProjectionHead
from torch import Tensor

from ssl_siamese.methods.base import SiameseModule


class VICReg(SiameseModule):
    """VICReg: ``z = g(f(x))``; loss ``invariance_weight * MSE(z0, z1) + variance_weight * (v(z0) + v(z1)) / 2
    + covariance_weight * (c(z0) + c(z1))`` with ``v(z) = mean_j relu(1 - sqrt(Var(z_j) + 1e-4))`` and
    ``c(z) = sum_{i != j} Cov(z)_ij^2 / d`` (lightly's ``VICRegLoss``, in float32).

    Under DDP the variance and covariance terms use the global batch (lightly's ``gather_distributed``,
    gathered with their gradient); the invariance term is per-sample, so each rank's MSE averaged over the
    ranks (what DDP's gradient averaging does) is the global one.

    Args:
        projection_dim: expander output size (8192 in the paper).
        hidden_dim: width of the expander's hidden layers (8192 in the paper).
        num_layers: linear layers of the expander (3 in the paper).
        invariance_weight: lambda, 25 in the paper.
        variance_weight: mu, 25 in the paper.
        covariance_weight: nu, 1 in the paper.
        **kwargs: the shared options of ``SiameseModule``; by default the views are BYOL's asymmetric ones,
            as in the paper (``views/presets.py``).
    """

    augmentation_preset_name = "byol"  # the paper uses BYOL's asymmetric views

    def __init__(self, projection_dim: int = 8192, hidden_dim: int = 8192, num_layers: int = 3,
                 invariance_weight: float = 25.0, variance_weight: float = 25.0, covariance_weight: float = 1.0,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        if num_layers < 2:
            raise ValueError(f"VICReg's expander needs num_layers >= 2 (3 in the paper), got {num_layers}.")
        self.projection_head = VICRegProjectionHead(self.feature_dim, hidden_dim, projection_dim, num_layers)
        self.criterion = VICRegLoss(lambda_param=invariance_weight, mu_param=variance_weight,
                                    nu_param=covariance_weight, gather_distributed=True)

    def shared_step(self, view0: Tensor, view1: Tensor) -> tuple[Tensor, Tensor]:
        z0, z1 = self.projection_head(self.encode_views(view0, view1)).float().chunk(2)
        with torch.autocast(device_type=z0.device.type, enabled=False):
            loss = self.criterion(z0, z1)
        return loss, z0
