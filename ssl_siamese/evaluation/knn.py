"""Weighted k-nearest-neighbour evaluation of frozen features (InstDisc, Wu et al. 2018).

Example:
    >>> scores = weighted_knn_scores(query, bank, bank_labels, num_classes=10, k=200, temperature=0.1)
    >>> top1 = (scores.argmax(1) == query_labels).float().mean()
    >>> trainer = pl.Trainer(callbacks=[KNNEvaluation(k=200, every_n_epochs=5)])   # logs knn/top1, knn/top5
    >>> knn.history[-1].step, knn.pixel_baseline.top1    # the step measured at; the raw pixels' accuracy
"""

from __future__ import annotations

from typing import Any, NamedTuple

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor

from ssl_siamese.evaluation.features import BANK, QUERIES, ValidationFeatures, gather_rows


PIXEL_BUDGET = 2**28
"""The most raw-pixel values (bank and queries, per rank) the pixel baseline keeps: 1 GiB of float32."""


class KNNMeasurement(NamedTuple):
    """One kNN evaluation: ``epoch`` (0-based epoch of ``fit`` it ended; -1: outside ``fit``), the accuracies,
    and ``step``, the optimizer steps the weights had taken (0: untrained; None: from an older checkpoint)."""

    epoch: int
    top1: float
    top5: float
    step: int | None = None


def capped_k(k: int, bank_size: int, num_classes: int) -> int:
    """``k``, at most the bank's average class size: more voters than a class holds only add other classes'.

    k=200 is the protocol for banks of thousands of images per class (CIFAR-10: 5,000); on a 322-image bank
    of 7 classes it would let every query be outvoted by whole other classes.
    """
    return max(1, min(k, bank_size // max(1, num_classes)))


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
    the last one (also when ``max_steps`` ends ``fit`` mid-epoch: it asks Lightning to validate at that step,
    so the last figures are those of the final weights), and on every ``trainer.validate``; the sanity check
    is skipped. ``history`` keeps a :class:`KNNMeasurement` ``(epoch, top1, top5, step)`` per evaluation for
    a summary at the end (epoch -1: outside ``fit``); it is saved in checkpoints, so a resumed run's history
    starts with the measurements of the runs before it. ``k`` is capped at the bank's average class size
    (said once). ``pixel_baseline`` is the same kNN (same k, temperature, bank and queries) on the
    normalised evaluation images flattened, measured once and logged as ``knn/pixels_top1``: a backbone below
    it has learnt nothing that raw pixels do not already give. ``protocol`` describes the last evaluation.

    Args:
        k: number of nearest bank features that vote for a query's class.
        temperature: votes are weighted by ``exp(cosine similarity / temperature)``.
        chunk_size: queries scored at once (bounds the memory of the similarity matrix).
        every_n_epochs: measure after every n-th training epoch (and after the last one).
        pixel_baseline: also measure the raw pixels once (skipped, and said, above ``PIXEL_BUDGET`` values).
    """

    def __init__(self, k: int = 200, temperature: float = 0.1, chunk_size: int = 1024,
                 every_n_epochs: int = 1, pixel_baseline: bool = True) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be at least 1, got {every_n_epochs}.")
        self.k = k
        self.temperature = temperature
        self.chunk_size = chunk_size
        self.every_n_epochs = every_n_epochs
        self.history: list[KNNMeasurement] = []
        self.features = ValidationFeatures()
        self.measure_pixels = pixel_baseline
        self.pixel_baseline: KNNMeasurement | None = None
        self.pixels = ValidationFeatures()
        self.protocol: dict[str, Any] = {}
        self._active = self._told_cap = False
        self._pixel_values = 0

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

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """At ``max_steps`` mid-epoch, ask to stop: Lightning then validates at this step before ending ``fit``."""
        if 0 < trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.features.reset()
        self.pixels.reset()
        self._pixel_values = 0
        self._active = self.is_due(trainer)

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if not self._active:
            return
        self.features.add(outputs, dataloader_idx)
        if (self.measure_pixels and self.pixel_baseline is None and self._pixel_values <= PIXEL_BUDGET
                and isinstance(outputs, dict) and "labels" in outputs
                and isinstance(batch, (list, tuple)) and isinstance(batch[0], Tensor)):
            # the batch as validation_step saw it: the normalised evaluation images (on_after_batch_transfer)
            self.pixels.add({"features": batch[0].flatten(1), "labels": outputs["labels"]}, dataloader_idx)
            self._pixel_values += batch[0].numel()
            if self._pixel_values > PIXEL_BUDGET:
                self.pixels.reset()  # over budget on this rank: every rank skips, decided in on_validation_epoch_end

    def _score(self, loaders: ValidationFeatures, device: torch.device) -> tuple[dict[int, float], int, int, int]:
        """(top-k accuracies, k used, bank size, query count) of the features in ``loaders``, gathered from all
        ranks; empty accuracies when there is no bank or no query."""
        (bank, bank_labels), (query, query_labels) = (
            (gather_rows(features), gather_rows(labels))
            for features, labels in (loaders.take(loader, device) for loader in (BANK, QUERIES)))
        loaders.reset()
        if len(bank) == 0 or len(query) == 0:
            return {}, self.k, len(bank), len(query)
        num_classes = int(max(bank_labels.max(), query_labels.max()).item()) + 1
        k = capped_k(self.k, len(bank), len(bank_labels.unique()))
        scores = weighted_knn_scores(query, bank, bank_labels, num_classes, k, self.temperature, self.chunk_size)
        return topk_accuracy(scores, query_labels), k, len(bank), len(query)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._active:
            return
        self._active = False
        # every rank gathers, also one without features, so that no rank waits for another forever
        accuracy, k, bank, queries = self._score(self.features, pl_module.device)
        if not accuracy:
            return
        if k < self.k and not self._told_cap:
            self._told_cap = True
            rank_zero_info(f"kNN: k={self.k} is more than the {bank}-image bank holds per class on average; "
                           f"using k={k} (--knn.k sets it; a larger --data.knn_bank_subset allows more)")
        pl_module.log("knn/top1", accuracy[1], sync_dist=False)
        pl_module.log("knn/top5", accuracy[5], sync_dist=False)
        epoch = trainer.current_epoch if trainer.state.fn == "fit" else -1
        self.history.append(KNNMeasurement(epoch, accuracy[1], accuracy[5], trainer.global_step))
        self.protocol = {"k": k, "temperature": self.temperature, "bank": bank, "queries": queries}
        pixels = ""
        if self.measure_pixels and self.pixel_baseline is None:
            # one decision for all ranks: a rank over the budget alone would leave the others waiting in a gather
            over = torch.tensor([float(self._pixel_values > PIXEL_BUDGET)], device=pl_module.device)
            if gather_rows(over).max() > 0:
                self.measure_pixels = False
                self.pixels.reset()
                rank_zero_info(f"kNN raw-pixel baseline skipped: the bank and queries hold over {PIXEL_BUDGET:,} "
                               "pixel values (use a smaller --data.knn_bank_subset / --data.val_subset).")
        if self.measure_pixels and self.pixel_baseline is None:
            on_pixels = self._score(self.pixels, pl_module.device)[0]
            if on_pixels:
                self.pixel_baseline = KNNMeasurement(epoch, on_pixels[1], on_pixels[5], None)
        if self.pixel_baseline is not None:
            pl_module.log("knn/pixels_top1", self.pixel_baseline.top1, sync_dist=False)
            pixels = f" (raw pixels: top-1 {self.pixel_baseline.top1:.4f})"
        rank_zero_info(f"kNN (k={k}, t={self.temperature}) at step {trainer.global_step}: top-1 {accuracy[1]:.4f} "
                       f"top-5 {accuracy[5]:.4f}{pixels}  [bank {bank}, queries {queries}]")

    # ---- checkpointing -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        pixels = self.pixel_baseline
        return {"history": [list(entry) for entry in self.history],
                "pixel_baseline": [pixels.top1, pixels.top5] if pixels is not None else None}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """The checkpoint's history, then what this process measured that the checkpoint lacks, by step."""
        saved = [KNNMeasurement(int(entry[0]), float(entry[1]), float(entry[2]),
                                int(entry[3]) if len(entry) > 3 and entry[3] is not None else None)
                 for entry in state_dict.get("history", [])]
        epochs = {entry.epoch for entry in saved}
        self.history = sorted(saved + [entry for entry in self.history if entry.epoch not in epochs],
                              key=lambda entry: entry.epoch)
        pixels = state_dict.get("pixel_baseline")
        if pixels is not None and self.pixel_baseline is None:
            self.pixel_baseline = KNNMeasurement(-1, float(pixels[0]), float(pixels[1]), None)
