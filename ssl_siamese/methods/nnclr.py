"""NNCLR (Dwibedi et al., 2021): the positive of a view's prediction is the nearest neighbour, in a support set of
past embeddings, of the other view's embedding.

Example:
    >>> model = NNCLR(backbone="resnet18", cifar_stem=True, support_set_size=4096, temperature=0.1)
    >>> pl.Trainer(max_epochs=200).fit(model, datamodule=SSLDataModule("cifar10"))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightly.models.modules import NNCLRPredictionHead, NNCLRProjectionHead
from lightly.utils.dist import gather, rank, world_size
from torch import Tensor, nn

from ssl_siamese.methods.base import SiameseModule
from ssl_siamese.methods.queue import KeyQueue


class NearestNeighbourLoss(nn.Module):
    """NNCLR's loss (Algorithm 1 of the paper): cross-entropy of ``NN(z_i) . p_k / t`` over the predictions ``p_k``
    of the batch, the target being ``k = i``; unit vectors, float32 even under autocast.

    Under DDP the predictions of all ranks are gathered with their gradient (lightly's ``gather``), so each
    neighbour meets the global batch's predictions as negatives, as on one process. lightly's NNCLR examples use
    NT-Xent on (neighbour, prediction) instead, whose 2N-2 negatives also hold the neighbours (constants) and the
    same view's predictions: not the paper's loss.

    Example:
        >>> loss = NearestNeighbourLoss(temperature=0.1)(neighbours, predictions)   # both (B, D)
    """

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, neighbours: Tensor, predictions: Tensor) -> Tensor:
        """``neighbours`` (B, D), without gradient; ``predictions`` (B, D) of the other view. Returns a scalar."""
        with torch.autocast(device_type=predictions.device.type, enabled=False):
            neighbours = F.normalize(neighbours.float(), dim=1)
            predictions = F.normalize(predictions.float(), dim=1)
            everyone = torch.cat(gather(predictions)) if world_size() > 1 else predictions
            logits = neighbours @ everyone.T / self.temperature
            labels = rank() * len(neighbours) + torch.arange(len(neighbours), device=logits.device)
            return F.cross_entropy(logits, labels)


class NNCLR(SiameseModule):
    """NNCLR: projector ``z = g(f(x))`` (3 layers, BatchNorm), predictor ``p = h(z)``; the loss pulls the prediction
    of one view towards the nearest neighbour of the other view's ``z`` in the support set, symmetrised:
    ``(L(NN(z0), p1) + L(NN(z1), p0)) / 2`` (``NearestNeighbourLoss``).

    The support set is our ``KeyQueue`` (``methods/queue.py``): unit-norm ``z`` of the first view, gathered from
    all ranks and enqueued after the loss (Algorithm 1's ``update_queue(Q, z1)``), starting from random unit
    vectors. Ours rather than lightly's ``NNMemoryBankModule``: lightly's bank is not a persistent buffer (a
    resumed run would start from an empty/random bank) and drops the tail of a batch that wraps around; the queue's
    keys and pointer are in the checkpoint, so a resumed NNCLR looks its neighbours up exactly as before. The
    neighbour is looked up by cosine similarity under ``no_grad``: no gradient reaches the support set.

    Args:
        projection_dim: output size of the projector, the predictor and the support set's rows (256 in the paper).
        hidden_dim: hidden size of the projector (2048 in the paper).
        prediction_hidden_dim: hidden size of the predictor (4096 in the paper).
        temperature: the loss's temperature (0.1 in the paper).
        support_set_size: rows of the support set (98304 in the paper, for ImageNet; lightly's examples: 4096).
        **kwargs: the shared options of ``SiameseModule`` (backbone, optimizer, lr, ...).
    """

    augmentation_preset_name = "simclr"

    def __init__(self, projection_dim: int = 256, hidden_dim: int = 2048, prediction_hidden_dim: int = 4096,
                 temperature: float = 0.1, support_set_size: int = 98304, **kwargs) -> None:
        super().__init__(**kwargs)
        self.projection_head = NNCLRProjectionHead(self.feature_dim, hidden_dim, projection_dim)
        self.prediction_head = NNCLRPredictionHead(projection_dim, prediction_hidden_dim, projection_dim)
        self.support_set = KeyQueue(support_set_size, projection_dim)
        self.criterion = NearestNeighbourLoss(temperature)

    @torch.no_grad()
    def nearest_neighbours(self, z: Tensor) -> Tensor:
        """The row of the support set (unit vectors) of highest cosine similarity to each row of ``z`` (a copy: a
        later enqueue does not change it)."""
        support = self.support_set.keys
        similarity = F.normalize(z.detach().float(), dim=1) @ support.float().T
        return support[similarity.argmax(dim=1)]

    def shared_step(self, view0: Tensor, view1: Tensor) -> tuple[Tensor, Tensor]:
        z = self.projection_head(self.encode_views(view0, view1))
        p0, p1 = self.prediction_head(z).chunk(2)
        z0, z1 = z.float().chunk(2)
        # both views' neighbours come from the support set as it was before this step's enqueue
        loss = 0.5 * (self.criterion(self.nearest_neighbours(z0), p1) + self.criterion(self.nearest_neighbours(z1), p0))
        self.support_set.enqueue(z0)
        return loss, z0
