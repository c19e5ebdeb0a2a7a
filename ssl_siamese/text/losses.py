"""Losses for text Siamese encoders: in-batch negatives (InfoNCE) and cosine-similarity regression.

``InBatchNegativesLoss`` is the "multiple negatives ranking" loss of Sentence-BERT / InfoNCE: each query
must pick its own positive among every positive of the batch (and every explicit hard negative), by a
softmax over cosine similarities divided by a temperature. ``symmetric=True`` adds the other direction
(each positive picks its query), as CLIP does. Under DDP the candidates of every rank are gathered with
gradients (``lightly.utils.dist.gather``), so a run on W ranks of batch B sees the same W*B candidates as one
process on the whole batch. Given each text's key (:func:`text_keys`), a candidate that is a copy of the
query's own positive, or the positive of another pair with the same query, is not counted as a negative
(duplicate texts are common in real pair files: 9% of Debian's training pairs share a text with another).
Margin losses (contrastive, triplet) live in :mod:`ssl_siamese.losses.metric`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from lightly.utils import dist
from torch import Tensor, nn

from ssl_siamese.methods.queue import gather_from_all_ranks


def text_keys(texts: Sequence[str]) -> Tensor:
    """One int64 key per text (the first 8 bytes of its BLAKE2b digest): equal texts, equal keys, on every rank."""
    return torch.tensor([int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big",
                                        signed=True) for text in texts], dtype=torch.long)


def _gathered(x: Tensor, enabled: bool) -> Tensor:
    """``x`` from every rank concatenated (with gradients) when DDP runs and ``enabled``, else ``x``."""
    if not enabled or dist.world_size() == 1:
        return x
    return torch.cat(dist.gather(x.contiguous()), dim=0)


def _gathered_keys(x: Tensor, enabled: bool) -> Tensor:
    return gather_from_all_ranks(x) if enabled else x


class InBatchNegativesLoss(nn.Module):
    """InfoNCE with in-batch negatives, one-way or symmetric, optionally with explicit hard negatives.

    ``loss = mean_i -log softmax_j(cos(q_i, c_j) / temperature)[i]`` over the candidates ``c`` = all
    positives of the (gathered) batch followed by all hard negatives. ``symmetric=True`` averages it with
    the positives-to-queries direction (``cos(p_i, q_j)``; hard negatives play no part there). Computed
    in float32 whatever the input precision.

    ``keys`` (optional, ``{"query", "positive"[, "negative"]}`` int64 tensors from :func:`text_keys`) removes
    false negatives: pair ``j`` is not a negative of pair ``i`` (either direction) when their queries or their
    positives are the same text, and a hard negative is not one for a query whose positive it copies.

    Example:
        >>> loss_fn = InBatchNegativesLoss(temperature=0.05, symmetric=True)
        >>> loss = loss_fn(torch.randn(8, 32), torch.randn(8, 32), negatives=torch.randn(8, 32))
        >>> texts = ["q1", "q2"], ["same doc", "same doc"]
        >>> keys = {"query": text_keys(texts[0]), "positive": text_keys(texts[1])}
        >>> loss = loss_fn(torch.randn(2, 32), torch.randn(2, 32), keys=keys)    # no false negative
    """

    def __init__(self, temperature: float = 0.05, symmetric: bool = False, gather_distributed: bool = True) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.symmetric = symmetric
        self.gather_distributed = gather_distributed

    def forward(self, queries: Tensor, positives: Tensor, negatives: Tensor | None = None,
                keys: dict[str, Tensor] | None = None) -> Tensor:
        if queries.shape != positives.shape or queries.dim() != 2:
            raise ValueError(f"queries {tuple(queries.shape)} and positives {tuple(positives.shape)} must both "
                             "be (B, D)")
        q = F.normalize(queries.float(), dim=1)
        p = F.normalize(positives.float(), dim=1)
        labels = torch.arange(len(q), device=q.device) + dist.rank() * len(q) * int(self.gather_distributed)
        candidates = [_gathered(p, self.gather_distributed)]
        if negatives is not None:
            if negatives.dim() != 2 or negatives.shape[1] != q.shape[1]:
                raise ValueError(f"negatives must be (N, {q.shape[1]}), got {tuple(negatives.shape)}")
            candidates.append(_gathered(F.normalize(negatives.float(), dim=1), self.gather_distributed))
        hard = len(candidates[1]) if negatives is not None else 0  # hard negatives, gathered
        masks = self._false_negatives(keys, labels, hard) if keys is not None else (None, None)
        forward = q @ torch.cat(candidates).T / self.temperature
        loss = F.cross_entropy(forward if masks[0] is None else forward.masked_fill(masks[0], -torch.inf), labels)
        if self.symmetric:
            backward = p @ _gathered(q, self.gather_distributed).T / self.temperature
            if masks[1] is not None:
                backward = backward.masked_fill(masks[1], -torch.inf)
            loss = (loss + F.cross_entropy(backward, labels)) / 2
        return loss

    def _false_negatives(self, keys: dict[str, Tensor], labels: Tensor, hard: int) -> tuple[Tensor, Tensor]:
        """Masks of the forward ``(B, candidates)`` and backward ``(B, gathered B)`` logits that are not negatives."""
        local = {name: keys[name].to(labels.device) for name in ("query", "positive")}
        every = {name: _gathered_keys(key, self.gather_distributed) for name, key in local.items()}
        same = ((local["query"][:, None] == every["query"][None]) |
                (local["positive"][:, None] == every["positive"][None]))
        same[torch.arange(len(labels), device=labels.device), labels] = False  # the pair itself stays the target
        copies = torch.zeros(len(labels), hard, dtype=torch.bool, device=labels.device)  # without keys: all kept
        if hard and keys.get("negative") is not None:
            negative = _gathered_keys(keys["negative"].to(labels.device), self.gather_distributed)
            copies = local["positive"][:, None] == negative[None]
        return torch.cat([same, copies], dim=1), same


class CosineSimilarityLoss(nn.Module):
    """Regression of the cosine similarity of each pair onto its score: ``mean((cos(a_i, b_i) - s_i)^2)``.

    For scored pairs (e.g. STS scores scaled to [0, 1] or [-1, 1]).

    Example:
        >>> loss = CosineSimilarityLoss()(torch.randn(8, 32), torch.randn(8, 32), torch.rand(8))
    """

    def forward(self, a: Tensor, b: Tensor, scores: Tensor) -> Tensor:
        cosine = F.cosine_similarity(a.float(), b.float(), dim=1)
        return F.mse_loss(cosine, scores.to(cosine))
