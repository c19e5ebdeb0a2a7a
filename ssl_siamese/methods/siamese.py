"""Supervised Siamese metric learning: an embedding head trained from labels with a triplet or contrastive loss.

The self-supervised methods learn from two views of one image; this one also knows which images share a
class. Training batches are uint8 images + labels (best as P x K batches, :class:`PKBatchSampler`); the base
class makes two augmented views of each, so every image brings an extra positive. The losses are our own
(:mod:`ssl_siamese.losses.metric`): lightly has no margin contrastive loss and no triplet loss with mining.
``pretrained`` starts the backbone from an exported self-supervised backbone (SSL + Siamese fine-tuning);
checkpoints record its architecture, not its path, so they load after the file has moved.

Example:
    >>> model = SupervisedSiamese(backbone="tiny_cnn", loss="triplet", mining="semi_hard", view_size=28)
    >>> dm = PKDataModule("fashion_mnist", train_classes=range(7), eval_classes=range(7, 10), p=7, k=8)
    >>> pl.Trainer(max_epochs=5).fit(model, datamodule=dm)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_siamese.export import load_backbone, rebuild_arguments
from ssl_siamese.methods.base import SiameseModule
from ssl_siamese.losses.metric import ContrastiveLoss, TripletLoss
from ssl_siamese.data.samplers import balanced_pairs
from ssl_siamese.views.presets import metric_learning_views

LOSSES = ("triplet", "contrastive")
HEADS = ("linear", "mlp")
DEFAULT_MARGIN = {"triplet": 0.2, "contrastive": 1.0}


def contrastive_pairs(labels: Tensor, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Pairs ``(i, j, same)`` of ``(view0[i], view1[j])`` for the contrastive loss on a batch of B images.

    Every image with its own other view (B positives), then :func:`balanced_pairs` from the labels:
    ``B // 2`` positives of two images of one class and ``B + B // 2`` negatives, so positives and
    negatives are as many. Where the labels allow no positives (every image its own class) or no negatives
    (one class), that part is left out; any batch works.

    Example:
        >>> i, j, same = contrastive_pairs(torch.tensor([0, 0, 1, 1]))  # 4 own + 2 positive + 6 negative
        >>> loss = ContrastiveLoss()(z0[i], z1[j], same)
    """
    n = len(labels)
    counts = labels.unique(return_counts=True)[1]
    num_positive = n // 2 if counts.max() >= 2 else 0
    num_negative = n + num_positive if len(counts) >= 2 else 0
    i, j, same = balanced_pairs(labels, num_pairs=num_positive + num_negative, seed=seed,
                                num_positive=num_positive)
    own = torch.arange(n)
    return torch.cat([own, i]), torch.cat([own, j]), torch.cat([torch.ones(n, dtype=torch.bool), same])


class SupervisedSiamese(SiameseModule):
    """Backbone + embedding head trained with a label-aware metric loss.

    ``triplet``: :class:`TripletLoss` on the embeddings of both views (labels repeated), with ``mining``
    ``batch_hard``, ``semi_hard`` or ``batch_all``. ``contrastive``: :class:`ContrastiveLoss` on the pairs
    ``(view0[i], view1[j])`` of :func:`contrastive_pairs`: each image with its own other view, plus pairs
    from the labels, as many positive as negative. Without labels (``shared_step(view0, view1)``) each image
    is its own class.

    Args:
        embedding_dim: output size of the head.
        head: ``linear`` or ``mlp`` (Linear-BN-ReLU-Linear, hidden size = the feature size).
        normalize: L2-normalise the embeddings (then euclidean distances lie in [0, 2]).
        loss: ``triplet`` or ``contrastive``.
        mining: triplet mining, one of ``TripletLoss``'s.
        margin: loss margin; ``None``: 0.2 for triplet, 1.0 for contrastive.
        metric: ``euclidean`` or ``cosine`` distance inside the loss.
        pretrained: an exported backbone file (``export_backbone``); its weights initialise ``self.backbone``,
            and its architecture, stem and feature size are the defaults for ``backbone``, ``cifar_stem`` and
            ``feature_dim``. Not saved in the hyperparameters: a checkpoint holds the weights itself.
        **kwargs: the shared options of ``SiameseModule`` (backbone, lr, view_size, mean, std, ...);
            ``augmentation=None`` uses :func:`metric_learning_views`.
    """

    hparams_not_saved = ("pretrained",)  # a checkpoint holds the weights themselves

    def __init__(self, embedding_dim: int = 128, head: str = "mlp", normalize: bool = True,
                 loss: str = "triplet", mining: str = "semi_hard", margin: float | None = None,
                 metric: str = "euclidean", pretrained: str | None = None, **kwargs: Any) -> None:
        if loss not in LOSSES or head not in HEADS:
            raise ValueError(f"loss must be one of {LOSSES} and head one of {HEADS}, got {loss!r}, {head!r}")
        initial = None
        if pretrained is not None:
            loaded = load_backbone(pretrained)
            initial, info = loaded.backbone, loaded.metadata
            kwargs.setdefault("backbone", info["architecture"])
            kwargs.setdefault("cifar_stem", info.get("cifar_stem", False))
            kwargs.setdefault("feature_dim", info.get("feature_dim"))
            kwargs.setdefault("backbone_kwargs", rebuild_arguments(info) or None)  # e.g. a tiny_cnn's width
        super().__init__(**kwargs)
        if kwargs.get("augmentation") is None:
            self.augmentation = metric_learning_views(self.hparams.view_size, self.hparams.mean, self.hparams.std)
        if initial is not None:
            try:
                self.backbone.load_state_dict(initial.state_dict(), strict=True)
            except RuntimeError as error:
                raise ValueError(f"{pretrained} holds a {info['architecture']!r} backbone that does not fit "
                                 f"backbone={self.hparams.backbone!r}: {str(error)[:300]}") from error
        if head == "linear":
            self.embedding_head = nn.Linear(self.feature_dim, embedding_dim)
        else:
            self.embedding_head = nn.Sequential(
                nn.Linear(self.feature_dim, self.feature_dim), nn.BatchNorm1d(self.feature_dim),
                nn.ReLU(inplace=True), nn.Linear(self.feature_dim, embedding_dim))
        margin = DEFAULT_MARGIN[loss] if margin is None else margin
        self.criterion = (TripletLoss(margin, metric, mining) if loss == "triplet"
                          else ContrastiveLoss(margin, metric))

    def project(self, features: Tensor) -> Tensor:
        """Backbone features ``(B, D)`` -> embeddings ``(B, embedding_dim)``, L2-normalised if ``normalize``."""
        z = self.embedding_head(features).float()
        return F.normalize(z, dim=1) if self.hparams.normalize else z

    def embed(self, images: Tensor) -> Tensor:
        """Embeddings of normalised images (the head's output, not the exported backbone features)."""
        return self.project(self(images))

    def shared_step(self, view0: Tensor, view1: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(loss, embeddings of view0)``; ``labels=None`` makes every image its own class."""
        if labels is None:
            labels = torch.arange(len(view0), device=view0.device)
        z = self.project(self.encode_views(view0, view1))
        if self.hparams.loss == "triplet":
            return self.criterion(z, labels.repeat(2)), z[: len(view0)]
        z0, z1 = z.chunk(2)
        i, j, same = (t.to(z.device) for t in contrastive_pairs(labels, seed=int(self.global_step)))
        return self.criterion(z0[i], z1[j], same), z0

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        (view0, view1), labels = batch
        loss, embeddings = self.shared_step(view0, view1, labels)
        self.log("train/loss", loss, prog_bar=True, sync_dist=False)
        return {"loss": loss, "embeddings": embeddings.detach()}

    def on_train_epoch_start(self) -> None:
        """New P x K batches every epoch with a plain ``DataLoader(batch_sampler=PKBatchSampler(...))`` too:
        Lightning calls ``set_epoch`` on ``loader.sampler`` and ``batch_sampler.sampler``, not on the batch
        sampler itself (``PKDataModule``'s ``IndexedBatchLoader`` passes it on; calling twice is harmless)."""
        batch_sampler = getattr(self.trainer.train_dataloader, "batch_sampler", None)
        if callable(getattr(batch_sampler, "set_epoch", None)):
            batch_sampler.set_epoch(self.current_epoch)

