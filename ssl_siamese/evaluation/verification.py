"""The verification ROC of embeddings on balanced pairs, and the curve drawn and logged.

Example:
    >>> roc = verification_curve(features, labels, num_pairs=4000)
    >>> roc.auc, roc.eer
    >>> log_roc(trainer.loggers, roc, Path("out"), "verification ROC", step=trainer.global_step)  # eval_roc.png
"""

from __future__ import annotations

from pathlib import Path

from pytorch_lightning.loggers import Logger
from torch import Tensor

from ssl_siamese.evaluation.plots import log_figure, roc_figure
from ssl_siamese.evaluation.retrieval import VerificationResult, pair_scores, verification_roc
from ssl_siamese.evaluation.wandb_media import log_roc_curve
from ssl_siamese.data.samplers import balanced_pairs


def verification_curve(features: Tensor, labels: Tensor, num_pairs: int = 4000, seed: int = 0) -> VerificationResult:
    """Verification ROC on ``num_pairs`` seeded pairs, half same-class and half different-class."""
    i, j, same = balanced_pairs(labels, num_pairs=num_pairs, seed=seed)
    return verification_roc(pair_scores(features[i], features[j]), same)


def log_roc(loggers: list[Logger], roc: VerificationResult, out: Path, title: str, step: int) -> Path | None:
    """The ROC curve as ``<out>/eval_roc.png`` and, on W&B, as that image and an interactive chart."""
    path = log_figure(loggers, "eval/roc", roc_figure(roc.fpr, roc.tpr, roc.auc, roc.eer, title=title), out,
                      step=step)
    log_roc_curve(loggers, "eval/roc_interactive", roc.fpr, roc.tpr, auc=roc.auc, step=step)
    return path
