"""Supervised Siamese metric-learning losses: margin contrastive and triplet with online mining.

lightly (1.6) has only self-supervised losses, with no margin contrastive loss and no triplet loss with
mining, and ``torch.nn.TripletMarginLoss`` takes triplets that are already formed. pytorch-metric-learning
has both, but its ``TripletMarginMiner("semihard")`` keeps *every* semi-hard triplet rather than FaceNet's
nearest semi-hard negative per (anchor, positive), and its ``ContrastiveLoss`` is not Hadsell's squared hinge;
an extra dependency for about 150 lines. Here triplets are mined inside the batch from a (B, B) distance
matrix, so one forward pass of the batch serves every triplet. Mining only chooses indices (no gradient);
the loss is then taken on the differentiable distances.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

METRICS = ("euclidean", "cosine")
MINING = ("batch_hard", "semi_hard", "batch_all")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; valid choices: {', '.join(choices)}")


def _safe_sqrt(squared: Tensor, eps: float) -> Tensor:
    """``sqrt`` that is exactly 0 (with a zero, finite gradient) where ``squared <= eps``."""
    return torch.where(squared > eps, squared.clamp_min(eps).sqrt(), torch.zeros_like(squared))


def pairwise_distance_matrix(embeddings: Tensor, metric: str = "euclidean") -> Tensor:
    """(B, D) embeddings -> (B, B) distances with an exactly zero diagonal.

    ``"euclidean"``: ``||x_i - x_j||`` from the differences ``x_i - x_j`` themselves, not from the Gram
    matrix (``|x_i|^2 + |x_j|^2 - 2 x_i.x_j`` loses most digits in float32 for near points); the gradient
    is zero, not NaN, for coincident points. ``"cosine"``: ``1 - cos(x_i, x_j)`` in [0, 2].

    Example:
        >>> distances = pairwise_distance_matrix(torch.randn(8, 16), metric="cosine")  # (8, 8)
    """
    _check_choice("metric", metric, METRICS)
    if embeddings.dim() != 2:
        raise ValueError(f"embeddings must be (B, D), got shape {tuple(embeddings.shape)}")
    if metric == "euclidean":  # cdist's backward gives 0, not NaN, where a distance is 0
        return torch.cdist(embeddings, embeddings, compute_mode="donot_use_mm_for_euclid_dist")
    eye = torch.eye(len(embeddings), dtype=torch.bool, device=embeddings.device)
    normed = F.normalize(embeddings, dim=1)
    return (1.0 - normed @ normed.T).clamp(0.0, 2.0).masked_fill(eye, 0.0)


def paired_distance(x0: Tensor, x1: Tensor, metric: str = "euclidean", eps: float = 1e-12) -> Tensor:
    """Row-wise distance between (B, D) tensors ``x0`` and ``x1`` -> (B,), same metrics as above."""
    _check_choice("metric", metric, METRICS)
    if metric == "cosine":
        return (1.0 - F.cosine_similarity(x0, x1, dim=1)).clamp(0.0, 2.0)
    return _safe_sqrt((x0 - x1).pow(2).sum(dim=1), eps)


def _full_precision(x: Tensor) -> Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class ContrastiveLoss(nn.Module):
    """Margin contrastive loss on pairs (Hadsell, Chopra & LeCun, 2006).

    ``loss = mean( same * d^2 + (1 - same) * relu(margin - d)^2 )``. Hadsell et al. write both terms with
    a factor 1/2; we leave it out (it only halves the loss and its gradient), so multiply by 0.5 to compare.

    Example:
        >>> loss_fn = ContrastiveLoss(margin=1.0)
        >>> x0, x1, same = torch.randn(8, 32), torch.randn(8, 32), torch.randint(0, 2, (8,))
        >>> loss = loss_fn(x0, x1, same)
    """

    def __init__(self, margin: float = 1.0, metric: str = "euclidean") -> None:
        super().__init__()
        _check_choice("metric", metric, METRICS)
        if margin <= 0:
            raise ValueError(f"margin must be > 0, got {margin}")
        self.margin, self.metric = margin, metric

    def forward(self, x0: Tensor, x1: Tensor, same: Tensor) -> Tensor:
        """``x0``, ``x1``: (B, D); ``same``: (B,) bool or 0/1, true for pairs of one class. Scalar out."""
        if x0.dim() != 2 or x0.shape != x1.shape or same.shape != (len(x0),):
            raise ValueError(f"expected x0, x1 (B, D) and same (B,), got {tuple(x0.shape)}, "
                             f"{tuple(x1.shape)}, {tuple(same.shape)}")
        with torch.autocast(device_type=x0.device.type, enabled=False):
            distance = paired_distance(_full_precision(x0), _full_precision(x1), self.metric)
            same = same.to(device=distance.device, dtype=distance.dtype)
            loss = same * distance.pow(2) + (1 - same) * F.relu(self.margin - distance).pow(2)
            return loss.mean()


class TripletLoss(nn.Module):
    """Triplet margin loss ``relu(d_ap - d_an + margin)`` with online mining inside the batch.

    ``mining`` chooses the triplets; anchors without a positive or without a negative in the batch are left out:

    * ``"batch_hard"`` (Hermans et al., 2017): one triplet per anchor, its farthest positive and nearest
      negative; loss averaged over anchors.
    * ``"semi_hard"`` (Schroff et al., 2015, FaceNet): one triplet per (anchor, positive) pair, with the
      nearest negative farther than the positive (``d_an > d_ap``; the loss is non-zero only if also
      ``d_an < d_ap + margin``). Where no negative is farther, we fall back to the *farthest* negative,
      as TF-addons' ``triplet_semihard_loss`` does (the easiest triplet, not the hardest: FaceNet's point is
      to avoid the hardest negatives, which can collapse early training). Loss averaged over pairs.
    * ``"batch_all"`` (Hermans et al., 2017): every valid triplet; the loss is summed and divided by the
      number of triplets with a *positive* loss, so easy triplets do not dilute the average.

    A batch with no valid (or, for ``batch_all``, no active) triplet gives a zero loss that stays connected
    to the embeddings. Memory is O(B^3) booleans for ``semi_hard`` / ``batch_all`` (B=256: 16 M).

    Example:
        >>> loss_fn = TripletLoss(margin=0.2, mining="batch_hard")
        >>> embeddings, labels = torch.randn(16, 64), torch.arange(4).repeat_interleave(4)
        >>> loss = loss_fn(embeddings, labels)
        >>> anchor, positive, negative = loss_fn.mine(pairwise_distance_matrix(embeddings), labels)
    """

    def __init__(self, margin: float = 0.2, metric: str = "euclidean", mining: str = "batch_hard") -> None:
        super().__init__()
        _check_choice("metric", metric, METRICS)
        _check_choice("mining", mining, MINING)
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        self.margin, self.metric, self.mining = margin, metric, mining

    @staticmethod
    def _masks(labels: Tensor) -> tuple[Tensor, Tensor]:
        same = labels[:, None] == labels[None, :]
        eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        return same & ~eye, ~same

    @torch.no_grad()
    def mine(self, distances: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, B) distances and (B,) labels -> (anchor, positive, negative) index tensors of the triplets.

        For ``batch_all`` these are all valid triplets, including those with zero loss.
        """
        if distances.dim() != 2 or distances.shape != (len(labels), len(labels)) or labels.dim() != 1:
            raise ValueError(f"expected distances (B, B) and labels (B,), got {tuple(distances.shape)} "
                             f"and {tuple(labels.shape)}")
        labels = labels.to(distances.device)
        positive, negative = self._masks(labels)
        if self.mining == "batch_all":
            return (positive[:, :, None] & negative[:, None, :]).nonzero(as_tuple=True)
        has_negative = negative.any(dim=1)
        inf = torch.finfo(distances.dtype).max
        if self.mining == "batch_hard":
            anchors = (positive.any(dim=1) & has_negative).nonzero(as_tuple=True)[0]
            hardest_positive = distances.masked_fill(~positive, -inf).argmax(dim=1)
            hardest_negative = distances.masked_fill(~negative, inf).argmin(dim=1)
            return anchors, hardest_positive[anchors], hardest_negative[anchors]
        # semi_hard: candidates[a, p, n] = n is a negative of a farther from a than p is.
        d_ap, d_an = distances[:, :, None], distances[:, None, :]
        candidates = negative[:, None, :] & (d_an > d_ap)
        semi_hard = torch.where(candidates, d_an, inf).argmin(dim=2)
        farthest_negative = distances.masked_fill(~negative, -inf).argmax(dim=1)
        chosen = torch.where(candidates.any(dim=2), semi_hard, farthest_negative[:, None])
        anchors, positives = (positive & has_negative[:, None]).nonzero(as_tuple=True)
        return anchors, positives, chosen[anchors, positives]

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """``embeddings``: (B, D); ``labels``: (B,) integer classes. Returns a scalar."""
        if embeddings.dim() != 2 or labels.shape != (len(embeddings),):
            raise ValueError(f"expected embeddings (B, D) and labels (B,), got {tuple(embeddings.shape)} "
                             f"and {tuple(labels.shape)}")
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            embeddings = _full_precision(embeddings)
            labels = labels.to(embeddings.device)
            distances = pairwise_distance_matrix(embeddings, self.metric)
            zero = embeddings.sum() * 0.0
            if self.mining == "batch_all":
                positive, negative = self._masks(labels)
                valid = positive[:, :, None] & negative[:, None, :]
                losses = F.relu(distances[:, :, None] - distances[:, None, :] + self.margin) * valid
                active = (losses > 0).sum()
                return losses.sum() / active if active > 0 else zero
            anchor, positive_idx, negative_idx = self.mine(distances.detach(), labels)
            if len(anchor) == 0:
                return zero
            losses = F.relu(distances[anchor, positive_idx] - distances[anchor, negative_idx] + self.margin)
            return losses.mean()
