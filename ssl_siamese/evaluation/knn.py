"""Weighted k-nearest-neighbour evaluation of frozen features (InstDisc, Wu et al. 2018).

Example:
    >>> scores = weighted_knn_scores(query, bank, bank_labels, num_classes=10, k=200, temperature=0.1)
    >>> top1 = (scores.argmax(1) == query_labels).float().mean()
    >>> trainer = pl.Trainer(callbacks=[KNNEvaluation(k=200, every_n_epochs=5)])   # logs knn/top1, knn/top5
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor

from ssl_siamese.evaluation.features import BANK, QUERIES, ValidationFeatures, gather_rows


def weighted_knn_scores(query: Tensor, bank: Tensor, bank_labels: Tensor, num_classes: int,
                        k: int = 200, temperature: float = 0.1, chunk_size: int = 1024) -> Tensor:
    """Class scores ``(Q, C)``: sum over the k most cosine-similar bank items of ``exp(sim / t)``.

    Queries are processed ``chunk_size`` at a time, so memory stays at ``chunk_size x N`` similarities
    however large the bank; the weights are added into their classes with ``scatter_add`` (no
    ``chunk x k x classes`` one-hot tensor, which would be 800 MB per chunk for 1,000 classes).
    Features are L2-normalised here.
    """
    query = F.normalize(query.float(), dim=1)
    bank = F.normalize(bank.float(), dim=1)
    k = min(k, len(bank))
    scores = []
    for chunk in query.split(chunk_size):
        similarity, index = (chunk @ bank.T).topk(k, dim=1)
        weights = (similarity / temperature).exp()
        chunk_scores = torch.zeros(len(chunk), num_classes, device=weights.device, dtype=weights.dtype)
        scores.append(chunk_scores.scatter_add_(1, bank_labels[index], weights))
    return torch.cat(scores)


def topk_accuracy(scores: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    """Fraction of rows whose label is among the ``k`` highest scores, for each ``k``."""
    ranked = scores.argsort(dim=1, descending=True)
    hits = ranked == labels.unsqueeze(1)
    return {k: hits[:, : min(k, scores.shape[1])].any(dim=1).float().mean().item() for k in ks}


class KNNEvaluation(pl.Callback):
    """Weighted kNN accuracy of the backbone's features after every ``every_n_epochs``-th validation.

    It collects what ``validation_step`` returns: dataloader 0 is the bank (train split, no
    augmentation), dataloader 1 the queries (test split). Features are gathered from all ranks (which
    may hold different numbers), scored in chunks, logged as ``knn/top1`` and ``knn/top5``, then freed,
    so nothing accumulates across epochs. It runs after every ``every_n_epochs``-th training epoch, after
    the last one, and on every ``trainer.validate``; the sanity check is skipped. ``history`` keeps
    ``(epoch, top1, top5)`` for a summary at the end (epoch -1: outside ``fit``); it is saved in
    checkpoints, so a resumed run's history starts with the measurements of the runs before it.

    Args:
        k: number of nearest bank features that vote for a query's class.
        temperature: votes are weighted by ``exp(cosine similarity / temperature)``.
        chunk_size: queries scored at once (bounds the memory of the similarity matrix).
        every_n_epochs: measure after every n-th training epoch (and after the last one).
    """

    def __init__(self, k: int = 200, temperature: float = 0.1, chunk_size: int = 1024,
                 every_n_epochs: int = 1) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be at least 1, got {every_n_epochs}.")
        self.k = k
        self.temperature = temperature
        self.chunk_size = chunk_size
        self.every_n_epochs = every_n_epochs
        self.history: list[tuple[int, float, float]] = []
        self.features = ValidationFeatures()
        self._active = False

    def is_due(self, trainer: pl.Trainer) -> bool:
        """Whether this validation computes kNN: outside ``fit``, on every n-th epoch, and on the last one."""
        if trainer.sanity_checking:
            return False
        if trainer.state.fn != "fit":
            return True
        epoch = trainer.current_epoch + 1
        last_epoch = trainer.max_epochs is not None and 0 < trainer.max_epochs <= epoch
        last_step = 0 < trainer.max_steps <= trainer.global_step
        return epoch % self.every_n_epochs == 0 or last_epoch or last_step

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.features.reset()
        self._active = self.is_due(trainer)

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._active:
            self.features.add(outputs, dataloader_idx)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._active:
            return
        self._active = False
        # every rank gathers, also one without features, so that no rank waits for another forever
        (bank, bank_labels), (query, query_labels) = (
            (gather_rows(features), gather_rows(labels))
            for features, labels in (self.features.take(loader, pl_module.device) for loader in (BANK, QUERIES)))
        self.features.reset()
        if len(bank) == 0 or len(query) == 0:
            return
        num_classes = int(max(bank_labels.max(), query_labels.max()).item()) + 1
        scores = weighted_knn_scores(query, bank, bank_labels, num_classes, self.k,
                                     self.temperature, self.chunk_size)
        accuracy = topk_accuracy(scores, query_labels)
        pl_module.log("knn/top1", accuracy[1], sync_dist=False)
        pl_module.log("knn/top5", accuracy[5], sync_dist=False)
        epoch = trainer.current_epoch if trainer.state.fn == "fit" else -1
        self.history.append((epoch, accuracy[1], accuracy[5]))
        rank_zero_info(f"kNN (k={self.k}, t={self.temperature}) top-1 {accuracy[1]:.4f} "
                       f"top-5 {accuracy[5]:.4f}  [bank {len(bank)}, queries {len(query)}]")

    # ---- checkpointing -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"history": [list(entry) for entry in self.history]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """The checkpoint's history, then what this process measured that the checkpoint lacks, by epoch."""
        saved = [(int(epoch), float(top1), float(top5)) for epoch, top1, top5 in state_dict.get("history", [])]
        epochs = {entry[0] for entry in saved}
        self.history = sorted(saved + [entry for entry in self.history if entry[0] not in epochs],
                              key=lambda entry: entry[0])
