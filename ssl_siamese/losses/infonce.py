"""MoCo's InfoNCE loss against a queue of negative keys.

lightly's ``NTXentLoss`` (SimCLR) and ``NegativeCosineSimilarity`` (SimSiam) are used as they are.
MoCo's InfoNCE is written here because our queue is a separate, checkpointed module (see
``ssl_siamese.methods.queue``) rather than lightly's memory bank, which is not saved in checkpoints and drops
keys at wrap-around.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class InfoNCELoss(nn.Module):
    """MoCo's InfoNCE: one positive key per query against a set of negative keys.

    ``loss = -log( exp(q.k+ / t) / (exp(q.k+ / t) + sum_j exp(q.n_j / t)) )``, averaged over queries.
    Inputs are L2-normalised here; logits are computed in float32 even under autocast.

    Example:
        >>> loss_fn = InfoNCELoss(temperature=0.2)
        >>> q, k, negatives = torch.randn(8, 128), torch.randn(8, 128), torch.randn(4096, 128)
        >>> loss = loss_fn(q, k, negatives)
    """

    def __init__(self, temperature: float = 0.2) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, query: Tensor, positive_key: Tensor, negative_keys: Tensor) -> Tensor:
        """``query`` and ``positive_key``: (B, D); ``negative_keys``: (K, D). Returns a scalar."""
        with torch.autocast(device_type=query.device.type, enabled=False):
            query = F.normalize(query.float(), dim=1)
            positive_key = F.normalize(positive_key.float(), dim=1)
            negative_keys = F.normalize(negative_keys.float(), dim=1)
            positive = (query * positive_key).sum(dim=1, keepdim=True)
            negative = query @ negative_keys.T
            logits = torch.cat([positive, negative], dim=1) / self.temperature
            labels = torch.zeros(len(query), dtype=torch.long, device=query.device)
            return F.cross_entropy(logits, labels)
