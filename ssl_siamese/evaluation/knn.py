"""Weighted k-nearest-neighbour evaluation of frozen features (InstDisc, Wu et al. 2018).

Example:
    >>> scores = weighted_knn_scores(query, bank, bank_labels, num_classes=10, k=200, temperature=0.1)
    >>> top1 = (scores.argmax(1) == query_labels).float().mean()
    >>> trainer = pl.Trainer(callbacks=[KNNEvaluation(k=200)])   # logs knn/top1, knn/top5
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor

from ssl_siamese.queue import gather_from_all_ranks


def weighted_knn_scores(query: Tensor, bank: Tensor, bank_labels: Tensor, num_classes: int,
                        k: int = 200, temperature: float = 0.1, chunk_size: int = 1024) -> Tensor:
    """Class scores ``(Q, C)``: sum over the k most cosine-similar bank items of ``exp(sim / t)``.

    Queries are processed ``chunk_size`` at a time, so memory stays at ``chunk_size x N`` similarities
    however large the bank. Features are L2-normalised here.
    """
    query = F.normalize(query.float(), dim=1)
    bank = F.normalize(bank.float(), dim=1)
    k = min(k, len(bank))
    scores = []
    for chunk in query.split(chunk_size):
        similarity, index = (chunk @ bank.T).topk(k, dim=1)
        weights = (similarity / temperature).exp()
        one_hot = F.one_hot(bank_labels[index], num_classes).to(weights.dtype)
        scores.append((one_hot * weights.unsqueeze(-1)).sum(dim=1))
    return torch.cat(scores)


def topk_accuracy(scores: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    """Fraction of rows whose label is among the ``k`` highest scores, for each ``k``."""
    ranked = scores.argsort(dim=1, descending=True)
    hits = ranked == labels.unsqueeze(1)
    return {k: hits[:, : min(k, scores.shape[1])].any(dim=1).float().mean().item() for k in ks}


class KNNEvaluation(pl.Callback):
    """Weighted kNN accuracy of the backbone's features after each validation run.

    It collects what ``validation_step`` returns: dataloader 0 is the bank (train split, no
    augmentation), dataloader 1 the queries (test split). Features are gathered from all ranks, scored in
    chunks, logged as ``knn/top1`` and ``knn/top5``, then freed, so nothing accumulates across epochs.
    The sanity check is skipped. ``history`` keeps ``(epoch, top1, top5)`` for a summary at the end.
    """

    def __init__(self, k: int = 200, temperature: float = 0.1, chunk_size: int = 1024) -> None:
        self.k = k
        self.temperature = temperature
        self.chunk_size = chunk_size
        self.history: list[tuple[int, float, float]] = []
        self._reset()

    def _reset(self) -> None:
        self._features: dict[int, list[Tensor]] = {0: [], 1: []}
        self._labels: dict[int, list[Tensor]] = {0: [], 1: []}

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset()

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if isinstance(outputs, dict) and "features" in outputs and dataloader_idx in self._features:
            self._features[dataloader_idx].append(outputs["features"].float())
            self._labels[dataloader_idx].append(outputs["labels"])

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not self._features[0] or not self._features[1]:
            self._reset()
            return
        bank, bank_labels, query, query_labels = (
            gather_from_all_ranks(torch.cat(parts))
            for parts in (self._features[0], self._labels[0], self._features[1], self._labels[1])
        )
        self._reset()
        num_classes = int(max(bank_labels.max(), query_labels.max()).item()) + 1
        scores = weighted_knn_scores(query, bank, bank_labels, num_classes, self.k,
                                     self.temperature, self.chunk_size)
        accuracy = topk_accuracy(scores, query_labels)
        pl_module.log("knn/top1", accuracy[1], sync_dist=False)
        pl_module.log("knn/top5", accuracy[5], sync_dist=False)
        epoch = trainer.current_epoch if trainer.training or trainer.state.fn == "fit" else -1
        self.history.append((epoch, accuracy[1], accuracy[5]))
        rank_zero_info(f"kNN (k={self.k}, t={self.temperature}) top-1 {accuracy[1]:.4f} "
                       f"top-5 {accuracy[5]:.4f}  [bank {len(bank)}, queries {len(query)}]")
