"""Evaluation of frozen features: kNN, linear probe, few-shot, retrieval and verification, and pictures.

Example:
    >>> from ssl_siamese.evaluation import KNNEvaluation, OnlineLinearProbe, fit_linear_probe
    >>> trainer = pl.Trainer(callbacks=[KNNEvaluation(every_n_epochs=5), OnlineLinearProbe(num_classes=10)])

Names are imported on first use, so the kNN callback does not load matplotlib or the linear-probe code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ssl_siamese._lazy import lazy_exports

_EXPORTS = {
    "FewShotResult": "ssl_siamese.evaluation.fewshot",
    "fewshot_episodes": "ssl_siamese.evaluation.fewshot",
    "KNNEvaluation": "ssl_siamese.evaluation.knn",
    "topk_accuracy": "ssl_siamese.evaluation.knn",
    "weighted_knn_scores": "ssl_siamese.evaluation.knn",
    "LinearProbeResult": "ssl_siamese.evaluation.linear",
    "fit_linear_probe": "ssl_siamese.evaluation.linear",
    "weight_decay_sweep": "ssl_siamese.evaluation.linear",
    "OnlineLinearProbe": "ssl_siamese.evaluation.online_probe",
    "EmbeddingPictures": "ssl_siamese.evaluation.pictures",
    "VerificationResult": "ssl_siamese.evaluation.retrieval",
    "pair_scores": "ssl_siamese.evaluation.retrieval",
    "recall_at_k": "ssl_siamese.evaluation.retrieval",
    "verification_roc": "ssl_siamese.evaluation.retrieval",
}

if TYPE_CHECKING:  # the same names, eagerly, for type checkers and IDEs
    from ssl_siamese.evaluation.fewshot import FewShotResult, fewshot_episodes
    from ssl_siamese.evaluation.knn import KNNEvaluation, topk_accuracy, weighted_knn_scores
    from ssl_siamese.evaluation.linear import LinearProbeResult, fit_linear_probe, weight_decay_sweep
    from ssl_siamese.evaluation.online_probe import OnlineLinearProbe
    from ssl_siamese.evaluation.pictures import EmbeddingPictures
    from ssl_siamese.evaluation.retrieval import VerificationResult, pair_scores, recall_at_k, verification_roc

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = list(_EXPORTS)
