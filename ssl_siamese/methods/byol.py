"""BYOL (Grill et al., 2020): an online network predicts an EMA target network's projection of the other view.

Example:
    >>> model = BYOL(backbone="resnet18", cifar_stem=True, base_momentum=0.99)
    >>> pl.Trainer(max_epochs=200).fit(model, datamodule=SSLDataModule("cifar10"))
"""

from __future__ import annotations

import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
from torch import Tensor, nn

from ssl_siamese.methods.base import SiameseModule
from ssl_siamese.methods.ema import EMATarget, ema_copy


class BYOL(EMATarget, SiameseModule):
    """BYOL: online ``q(g(f(x)))`` regresses the target's ``g'(f'(x'))``; symmetric negative-cosine loss.

    The target network (``target_encoder``: backbone, flatten, projector) is an exponential moving average of
    the online backbone and projector, never trained by gradient: its parameters do not require one and it
    runs under ``no_grad``. At every training step, before the forward, ``target <- m * target + (1 - m) *
    online`` with ``m`` rising from ``base_momentum`` to 1.0 on a cosine over the run's optimizer steps
    (``update_target``, ``methods/ema.py``; the step position comes from the Trainer and is restored on resume,
    the target's weights are in the checkpoint, the last ``m`` is the ``ema_momentum`` buffer, logged as
    ``train/ema_momentum``); BatchNorm buffers are copied from the online network, as MoCo's key encoder.
    With gradient accumulation each micro-batch updates the target (with the same ``m``).
    The loss is ``-(cos(p0, z1') + cos(p1, z0')) / 2`` averaged over the batch (the paper's
    ``2 - 2 cos`` summed over both directions is ``4 + 4 *`` this: same minimiser, a quarter of its gradient).

    Args:
        projection_dim: projector output and predictor input/output size (256 in the paper).
        hidden_dim: hidden size of the projector and the predictor (4096 in the paper).
        base_momentum: EMA momentum at the first step (0.99 as lightly's benchmarks; 0.996 in the paper).
        **kwargs: the shared options of ``SiameseModule``; by default the views are BYOL's asymmetric
            ``byol_augmentations`` (``views/presets.py``; ``augmentation`` alone makes both views alike).
    """

    augmentation_preset_name = "byol"

    def __init__(self, projection_dim: int = 256, hidden_dim: int = 4096, base_momentum: float = 0.99,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.init_ema_target(base_momentum)
        self.projection_head = BYOLProjectionHead(self.feature_dim, hidden_dim, projection_dim)
        self.prediction_head = BYOLPredictionHead(projection_dim, hidden_dim, projection_dim)
        self.target_encoder = ema_copy(nn.Sequential(self.backbone, nn.Flatten(1), self.projection_head))
        self.criterion = NegativeCosineSimilarity()

    def online_encoder(self) -> nn.Module:
        """The trained backbone and projector laid out like ``target_encoder``."""
        return nn.Sequential(self.backbone, nn.Flatten(1), self.projection_head)

    def encoders(self) -> list[nn.Module]:
        """The online backbone and the target's backbone."""
        return [self.backbone, self.target_encoder[0]]

    def head_modules(self) -> list[nn.Module]:
        """Projector, predictor and the target's projector."""
        return [self.projection_head, self.prediction_head, self.target_encoder[2]]

    def ema_networks(self) -> tuple[nn.Module, nn.Module]:
        """The online backbone and projector, and their EMA, the target network."""
        return self.online_encoder(), self.target_encoder

    def shared_step(self, view0: Tensor, view1: Tensor) -> tuple[Tensor, Tensor]:
        self.update_target()
        z = self.projection_head(self.encode_views(view0, view1))
        p0, p1 = self.prediction_head(z).float().chunk(2)
        with torch.no_grad():
            t0, t1 = self.target_encoder(torch.cat([view0, view1])).float().chunk(2)
        loss = 0.5 * (self.criterion(p0, t1) + self.criterion(p1, t0))
        return loss, z.float().chunk(2)[0]
