"""DCL and DCLW (Yeh et al., 2021): SimCLR's contrastive loss with the positive pair removed from the denominator.

Example:
    >>> model = DCL(backbone="resnet18", cifar_stem=True, temperature=0.1)                # DCL
    >>> model = DCL(backbone="resnet18", cifar_stem=True, weighted=True, sigma=0.5)      # DCLW
    >>> pl.Trainer(max_epochs=200).fit(model, datamodule=SSLDataModule("cifar10"))
"""

from __future__ import annotations

from functools import partial

import torch
from lightly.loss import DCLLoss
from lightly.models.modules import SimCLRProjectionHead
from lightly.utils.dist import rank
from torch import Tensor

from ssl_siamese.methods.base import SiameseModule
from ssl_siamese.methods.queue import gather_from_all_ranks


def global_mises_fisher_weights(out0: Tensor, out1: Tensor, sigma: float = 0.5) -> Tensor:
    """DCLW's weight of each positive pair, ``w_i = 2 - exp(<z_i, z_i'> / sigma) / mean_j exp(<z_j, z_j'> / sigma)``.

    The mean runs over the GLOBAL batch (all ranks), so two ranks weigh a pair as one process does; lightly's
    ``negative_mises_fisher_weights`` takes it over the rank's own batch. No gradient flows through the weights
    (the paper's ``w`` is a weight, not a term). ``out0``, ``out1``: (B, D), L2-normalised; returns (B,).
    """
    similarity = (out0.detach() * out1.detach()).sum(dim=1) / sigma
    everyone = gather_from_all_ranks(similarity)
    weights = 2 - len(everyone) * torch.softmax(everyone, dim=0)
    start = rank() * len(similarity) if len(everyone) > len(similarity) else 0
    return weights[start : start + len(similarity)]


class DCL(SiameseModule):
    """DCL: a SimCLR projection head and the decoupled contrastive loss; ``weighted=True`` gives DCLW.

    For each view ``z_i`` of image ``i`` (eq. 6 of the paper, averaged over the 2N views of the batch)::

        L_i = -w_i <z_i, z_i'> / t + log sum_{j != i, v in {z_j, z_j'}} exp(<z_i, v> / t)

    i.e. NT-Xent without the positive pair in the denominator (lightly's ``DCLLoss``, negatives gathered
    from all ranks with their gradient). ``w_i = 1`` for DCL; DCLW's von Mises-Fisher weight
    ``w_i = 2 - N softmax_i(<z_i, z_i'> / sigma)`` up-weights the hard positives. One class with a flag rather
    than two registry rows: the registry maps a module (and its recipe) to one class, the two differ only in
    ``w``, and the checkpoint records ``weighted`` and ``sigma`` as hyper-parameters. The weight's mean runs
    over the global batch (``global_mises_fisher_weights``, our weighting function given to lightly's loss),
    where lightly's ``DCLWLoss`` takes it per rank: ours gives the same loss on 2 ranks as on one process.

    Args:
        projection_dim: output size of the projection head.
        hidden_dim: hidden size of the projection head (``None``: the backbone's feature size).
        temperature: the loss's temperature ``t`` (0.1: lightly's ``DCLLoss``/``DCLWLoss`` default, used by its
            CIFAR-10 benchmark).
        weighted: DCLW: weigh the positive term by the negative von Mises-Fisher weight.
        sigma: DCLW's weight temperature (0.5 as the paper and lightly's ``DCLWLoss``); unused by DCL.
        **kwargs: the shared options of ``SiameseModule`` (backbone, optimizer, lr, ...).
    """

    augmentation_preset_name = "simclr"

    def __init__(self, projection_dim: int = 128, hidden_dim: int | None = None, temperature: float = 0.1,
                 weighted: bool = False, sigma: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        if temperature <= 0 or sigma <= 0:
            raise ValueError(f"temperature and sigma must be > 0, got {temperature} and {sigma}")
        hidden = hidden_dim or self.feature_dim
        self.projection_head = SimCLRProjectionHead(self.feature_dim, hidden, projection_dim)
        weight_fn = partial(global_mises_fisher_weights, sigma=sigma) if weighted else None  # picklable
        self.criterion = DCLLoss(temperature=temperature, weight_fn=weight_fn, gather_distributed=True)

    def shared_step(self, view0: Tensor, view1: Tensor) -> tuple[Tensor, Tensor]:
        z0, z1 = self.projection_head(self.encode_views(view0, view1)).float().chunk(2)
        with torch.autocast(device_type=z0.device.type, enabled=False):
            loss = self.criterion(z0, z1)
        return loss, z0
