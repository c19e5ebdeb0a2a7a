"""Near-duplicate pairs in a corpus of embeddings: every pair whose cosine similarity reaches a threshold.

Exact: the normalised embeddings are compared block by block (``chunk_size`` rows against the rows after
them, so each pair once and no ``N x N`` matrix in memory), with a progress bar over the blocks.

Example:
    >>> pairs = find_duplicates(embeddings, threshold=0.95)      # [(i, j, cosine), ...], i < j, most similar first
    >>> for i, j, score in pairs[:10]: print(f"{score:.3f}  {ids[i]}  <->  {ids[j]}")
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm


def find_duplicates(embeddings: Tensor | np.ndarray, threshold: float = 0.95, chunk_size: int = 1024,
                    progress: bool = True) -> list[tuple[int, int, float]]:
    """Pairs ``(i, j, cosine)`` with ``i < j`` and cosine similarity >= ``threshold``, most similar first
    (ties: by ``i``, then ``j``). Zero vectors have similarity 0 to everything.

    Raises:
        ValueError: embeddings that are not ``(N, D)``, or a threshold outside [-1, 1].
    """
    features = torch.as_tensor(np.asarray(embeddings) if not isinstance(embeddings, Tensor) else embeddings)
    if features.dim() != 2:
        raise ValueError(f"expected embeddings of shape (N, D), got {tuple(features.shape)}")
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"a cosine threshold lies in [-1, 1], got {threshold}")
    features = F.normalize(features.detach().float().cpu(), dim=1)
    found: list[tuple[int, int, float]] = []
    starts = range(0, len(features), chunk_size)
    for start in tqdm(starts, desc="comparing", unit="block", disable=not progress, leave=False):
        block = features[start:start + chunk_size]
        scores = block @ features[start + 1:].T  # row r (item start + r) against items start + 1, ...
        rows, cols = torch.nonzero(scores >= threshold, as_tuple=True)
        later = cols + 1 > rows  # only j > i: item start + 1 + col after item start + row
        rows, cols = rows[later], cols[later]
        values = scores[rows, cols]
        found.extend(zip((rows + start).tolist(), (cols + start + 1).tolist(), values.tolist()))
    found.sort(key=lambda pair: (-pair[2], pair[0], pair[1]))
    return found
