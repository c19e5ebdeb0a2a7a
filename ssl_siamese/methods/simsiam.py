"""SimSiam (Chen & He, 2021): projector, predictor and a stop-gradient on the target branch.

Example:
    >>> model = SimSiam(backbone="resnet18", cifar_stem=True)
    >>> pl.Trainer(max_epochs=800).fit(model, datamodule=SSLDataModule("cifar10"))
"""

from __future__ import annotations

from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import SimSiamPredictionHead, SimSiamProjectionHead
from torch import Tensor

from ssl_siamese.methods.base import SiameseModule


class SimSiam(SiameseModule):
    """SimSiam: ``p = h(z)``, ``z = g(f(x))``; loss ``-cos(p0, sg(z1))/2 - cos(p1, sg(z0))/2``.

    The 3-layer projector ends in BN; the 2-layer predictor has a bottleneck (``predictor_hidden_dim``,
    a quarter of ``projection_dim`` by default, as in the paper). ``sg`` is ``detach()``: no gradient
    reaches the backbone through the target branch.

    Args:
        projection_dim: projector output and predictor input/output size (2048 in the paper).
        predictor_hidden_dim: predictor bottleneck (``None``: ``projection_dim // 4``).
        **kwargs: the shared options of ``SiameseModule``.
    """

    augmentation_preset_name = "simsiam"

    def __init__(self, projection_dim: int = 2048, predictor_hidden_dim: int | None = None,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        bottleneck = predictor_hidden_dim or projection_dim // 4
        self.projection_head = SimSiamProjectionHead(self.feature_dim, projection_dim, projection_dim)
        self.prediction_head = SimSiamPredictionHead(projection_dim, bottleneck, projection_dim)
        self.criterion = NegativeCosineSimilarity()

    def shared_step(self, view0: Tensor, view1: Tensor) -> tuple[Tensor, Tensor]:
        z = self.projection_head(self.encode_views(view0, view1))
        p0, p1 = self.prediction_head(z).float().chunk(2)
        z0, z1 = z.float().detach().chunk(2)
        loss = 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))
        return loss, z0
