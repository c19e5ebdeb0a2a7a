"""MoCo v2 (Chen et al., 2020): a momentum encoder and a queue of negative keys.

Example:
    >>> model = MoCo(backbone="resnet18", cifar_stem=True, queue_size=4096, momentum_ema=0.99)
    >>> pl.Trainer(max_epochs=200).fit(model, datamodule=SSLDataModule("cifar10"))
"""

from __future__ import annotations

import torch
from lightly.models.modules import MoCoProjectionHead
from lightly.models.utils import batch_shuffle, batch_unshuffle
from lightly.utils.dist import world_size
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor, nn

from ssl_siamese.losses import InfoNCELoss
from ssl_siamese.methods.base import SiameseModule
from ssl_siamese.methods.ema import EMATarget, ema_copy
from ssl_siamese.methods.queue import KeyQueue


class MoCo(EMATarget, SiameseModule):
    """MoCo v2 with the symmetric loss.

    The query encoder is ``backbone + projection_head``; the key encoder's parameters are an exponential
    moving average of the query encoder's, never trained by gradient, and its BatchNorm buffers (running
    means and variances, batch counts) are copies of the query encoder's, made at every step before the
    keys are computed (``update_target``, ``methods/ema.py``; the momentum used is logged as
    ``train/ema_momentum`` and kept in a buffer left out of checkpoints). Each view is a query
    for the other view's key; the negatives are the queue as it was BEFORE this step, and the step's
    keys (from all ranks) are enqueued only after both losses, so a query never meets its own key as
    a negative.

    Args:
        projection_dim: output size of the MoCo v2 MLP head.
        hidden_dim: hidden size of the MoCo v2 MLP head (``None``: the backbone's feature size).
        temperature: InfoNCE temperature (0.1 as in lightly's CIFAR-10 benchmark; 0.2 in the paper).
        queue_size: number of negative keys.
        momentum_ema: EMA momentum of the key encoder; with ``momentum_cosine`` it rises to 1.0 by
            the last step on a cosine schedule.
        momentum_cosine: raise the EMA momentum from ``momentum_ema`` to 1.0 on a cosine schedule.
        shuffle_bn: under DDP, MoCo's shuffling BN: the key encoder sees the global batch shuffled over
            ranks (lightly's ``batch_shuffle``), so a key's BatchNorm statistics come from other images
            than its query's, and the keys are unshuffled before the loss. A no-op on one device (the
            batch statistics do not depend on the order); it draws the permutation from torch's RNG.
        **kwargs: the shared options of ``SiameseModule``.
    """

    augmentation_preset_name = "moco_v2"

    def __init__(self, projection_dim: int = 128, hidden_dim: int | None = None,
                 temperature: float = 0.1, queue_size: int = 4096, momentum_ema: float = 0.99,
                 momentum_cosine: bool = False, shuffle_bn: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.init_ema_target(momentum_ema, cosine=momentum_cosine, persistent=False)
        hidden = hidden_dim or self.feature_dim
        self.projection_head = MoCoProjectionHead(self.feature_dim, hidden, projection_dim)
        self.key_encoder = ema_copy(self.query_encoder())
        self.queue = KeyQueue(queue_size, projection_dim)
        self.criterion = InfoNCELoss(temperature)

    def query_encoder(self) -> nn.Module:
        """The trained encoder laid out like ``key_encoder`` (backbone, flatten, head)."""
        return nn.Sequential(self.backbone, nn.Flatten(1), self.projection_head)

    def encoders(self) -> list[nn.Module]:
        """The query backbone and the key encoder's backbone."""
        return [self.backbone, self.key_encoder[0]]

    def head_modules(self) -> list[nn.Module]:
        """The query head and its EMA copy in the key encoder."""
        return [self.projection_head, self.key_encoder[2]]

    def ema_networks(self) -> tuple[nn.Module, nn.Module]:
        """The query encoder and its EMA, the key encoder."""
        return self.query_encoder(), self.key_encoder

    def on_train_start(self) -> None:
        super().on_train_start()
        self.check_queue_size()

    def check_queue_size(self) -> None:
        """Warn when the queue holds more keys than an epoch has training images.

        Each image leaves two keys per epoch in the queue, so a queue larger than the epoch keeps the keys
        of a query's own image from the previous epoch among its negatives, pushing apart the views the
        loss should pull together (and a queue much larger than the data is mostly such keys).
        """
        batches = self.trainer.num_training_batches
        if not isinstance(batches, int) or batches <= 0 or self.trainer.fast_dev_run:
            return  # an iterable of unknown length, or a one-batch trial
        images = batches * self.per_device_batch_size() * self.trainer.world_size
        size = self.hparams.queue_size
        if size > images:
            suggestion = 2 ** (images.bit_length() - 1)
            rank_zero_warn(
                f"MoCo's queue_size {size} is larger than the {images} training images of an epoch "
                f"({batches} steps x {images // batches} images): from the second epoch on, the queue "
                "holds keys of each query's own image as negatives. Set --model.queue_size to at most "
                f"{images} (e.g. {suggestion}).")

    @torch.no_grad()
    def keys(self, views: Tensor) -> Tensor:
        """Key-encoder outputs of ``views``, computed on a batch shuffled over ranks with ``shuffle_bn``."""
        if not (self.hparams.get("shuffle_bn") and world_size() > 1):
            return self.key_encoder(views)
        shuffled, order = batch_shuffle(views, distributed=True)
        return batch_unshuffle(self.key_encoder(shuffled), order, distributed=True)

    def shared_step(self, view0: Tensor, view1: Tensor) -> tuple[Tensor, Tensor]:
        self.update_target()
        q0, q1 = self.projection_head(self.encode_views(view0, view1)).chunk(2)
        k0, k1 = self.keys(torch.cat([view0, view1])).chunk(2)
        negatives = self.queue.keys.clone()
        loss = 0.5 * (self.criterion(q0, k1, negatives) + self.criterion(q1, k0, negatives))
        # One view at a time: gathered from all ranks, the keys land in the single-process order
        # [k0 of every sample, k1 of every sample], so ranks and one process evict the same keys.
        self.queue.enqueue(k0)
        self.queue.enqueue(k1)
        return loss, q0.float()
