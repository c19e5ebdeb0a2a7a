"""Verification of labelled text pairs: is this pair the same (a paraphrase, a duplicate) or not?

Pairs with a ``score`` are "same" when the score is above 0.5 (a 0/1 label, or a similarity in [0, 1]);
pairs with a hard ``negative`` give one same pair (query, positive) and one different pair (query,
negative). The encoder's cosine similarity of each pair is the verification score, and
:func:`ssl_siamese.evaluation.retrieval.verification_roc` gives the ROC curve, its AUC and the EER.

Example:
    >>> labelled = labelled_pairs(test_pairs)              # None when the pairs carry no label
    >>> roc = verify(encoder, labelled); roc.auc, roc.eer
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ssl_siamese.evaluation.retrieval import VerificationResult, pair_scores, verification_roc
from ssl_siamese.text.encoder import TextEncoder
from ssl_siamese.text.pairs import TextPair

SAME_ABOVE = 0.5


def labelled_pairs(pairs: Sequence[TextPair]) -> tuple[list[str], list[str], torch.Tensor] | None:
    """``(texts a, texts b, same)`` from the pairs' scores or hard negatives; None when there is no label or
    when the labels are all one kind (an ROC needs both)."""
    if pairs and all(p.score is not None for p in pairs):
        a, b = [p.query for p in pairs], [p.positive for p in pairs]
        same = torch.tensor([p.score > SAME_ABOVE for p in pairs])
    elif pairs and all(p.negative is not None for p in pairs):
        a = [p.query for p in pairs] * 2
        b = [p.positive for p in pairs] + [p.negative for p in pairs]
        same = torch.tensor([True] * len(pairs) + [False] * len(pairs))
    else:
        return None
    return (a, b, same) if same.any() and not same.all() else None


def verify(encoder: TextEncoder, labelled: tuple[list[str], list[str], torch.Tensor]) -> VerificationResult:
    """The ROC of the encoder's cosine similarity on labelled pairs (:func:`labelled_pairs`)."""
    a, b, same = labelled
    return verification_roc(pair_scores(encoder.encode(a), encoder.encode(b)), same)
