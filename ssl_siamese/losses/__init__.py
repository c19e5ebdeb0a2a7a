"""Losses that lightly does not provide in the form we need: one module per family.

``infonce``: MoCo's InfoNCE against a checkpointed queue of negative keys. ``metric``: supervised Siamese
margin losses (contrastive, triplet with in-batch mining) and the distances they use. lightly's own losses
(``NTXentLoss``, ``NegativeCosineSimilarity``, ...) are used as they are, in the methods. The names below are
imported on first use.

Example:
    >>> from ssl_siamese.losses import InfoNCELoss, TripletLoss
    >>> loss = TripletLoss(margin=0.2, mining="semi_hard")(embeddings, labels)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ssl_siamese._lazy import lazy_exports

_EXPORTS = {
    "InfoNCELoss": "ssl_siamese.losses.infonce",
    **dict.fromkeys(["ContrastiveLoss", "TripletLoss", "pairwise_distance_matrix", "paired_distance", "METRICS",
                     "MINING"], "ssl_siamese.losses.metric"),
}

if TYPE_CHECKING:  # the same names, eagerly, for type checkers and IDEs
    from ssl_siamese.losses.infonce import InfoNCELoss
    from ssl_siamese.losses.metric import (
        METRICS,
        MINING,
        ContrastiveLoss,
        TripletLoss,
        paired_distance,
        pairwise_distance_matrix,
    )

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = list(_EXPORTS)
