"""Evaluation of frozen features: kNN, linear probe, few-shot, retrieval and verification, and pictures.

Example:
    >>> from ssl_siamese.evaluation import KNNEvaluation, OnlineLinearProbe, fit_linear_probe
    >>> trainer = pl.Trainer(callbacks=[KNNEvaluation(every_n_epochs=5), OnlineLinearProbe(num_classes=10)])
"""

from ssl_siamese.evaluation.fewshot import FewShotResult, fewshot_episodes
from ssl_siamese.evaluation.knn import KNNEvaluation, topk_accuracy, weighted_knn_scores
from ssl_siamese.evaluation.linear import LinearProbeResult, fit_linear_probe, weight_decay_sweep
from ssl_siamese.evaluation.online_probe import OnlineLinearProbe
from ssl_siamese.evaluation.pictures import EmbeddingPictures
from ssl_siamese.evaluation.retrieval import VerificationResult, pair_scores, recall_at_k, verification_roc

__all__ = ["KNNEvaluation", "OnlineLinearProbe", "EmbeddingPictures", "weighted_knn_scores", "topk_accuracy",
           "fit_linear_probe", "weight_decay_sweep", "LinearProbeResult", "fewshot_episodes", "FewShotResult",
           "recall_at_k", "pair_scores", "verification_roc", "VerificationResult"]
