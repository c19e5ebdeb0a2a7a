"""MoCo's queue of negative keys, kept in checkpoints and never dropping a key.

Ours rather than lightly's ``MemoryBankModule``: when a batch reaches past the end of the bank, lightly
(1.6) writes only the part that fits and restarts at 0, so the tail of that batch never becomes a negative;
``KeyQueue.enqueue`` wraps around and writes every key. The keys of all ranks are gathered with lightly's
``concat_all_gather``.

Example:
    >>> queue = KeyQueue(size=4096, dim=128)
    >>> negatives = queue.keys          # (4096, 128), read before enqueueing this step's keys
    >>> queue.enqueue(torch.randn(512, 128))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightly.models.utils import concat_all_gather
from lightly.utils.dist import world_size
from torch import Tensor, nn


def gather_from_all_ranks(x: Tensor) -> Tensor:
    """Concatenate ``x`` from every rank in rank order (no gradient); ``x`` itself on one process."""
    return x if world_size() == 1 else concat_all_gather(x.contiguous())


class KeyQueue(nn.Module):
    """A first-in-first-out ring buffer of L2-normalised keys.

    The keys and the write pointer are persistent buffers, so a resumed run continues with the same
    queue. ``enqueue`` writes all keys gathered from every rank with wrap-around (the oldest keys are
    overwritten first); only a batch larger than the whole queue keeps just its newest ``size`` keys.
    The queue starts filled with random unit vectors, as in the MoCo reference implementation.
    """

    def __init__(self, size: int = 4096, dim: int = 128) -> None:
        super().__init__()
        if size <= 0:
            raise ValueError(f"queue size must be > 0, got {size}")
        self.size = size
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Append ``keys`` (B, D) from this rank, after gathering those of all ranks."""
        keys = F.normalize(gather_from_all_ranks(keys.detach()).to(self.keys.dtype), dim=1)
        keys = keys[-self.size :]
        index = (self.pointer + torch.arange(len(keys), device=keys.device)) % self.size
        self.keys[index] = keys
        self.pointer.copy_((self.pointer + len(keys)) % self.size)
