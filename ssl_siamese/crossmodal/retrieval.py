"""Cross-modal Recall@K (text-to-image and image-to-text) and its chance level.

The gallery of images and the gallery of distinct texts are searched by cosine similarity. A text query
succeeds at K when any of its images (the same text can describe several icons, one per theme) is among
the K nearest images; an image query succeeds when its own text is among the K nearest texts (the usual
image-text retrieval Recall@K). Chance: a random ranking, for a query with n relevant items among N,
succeeds with probability ``1 - C(N - n, K) / C(N, K)``.

Example:
    >>> metrics = cross_modal_recall(image_emb, text_emb, text_of_image=[0, 0, 1], ks=(1, 5, 10))
    >>> metrics["t2i_recall@10"], chance_recall([0, 0, 1], 2, ks=(1,))["i2t_recall@1"]
"""

from __future__ import annotations

from collections.abc import Sequence
from math import comb

import torch
import torch.nn.functional as F
from torch import Tensor

KS = (1, 5, 10)


def _hits(scores: Tensor, relevant: Tensor, ks: Sequence[int]) -> dict[int, float]:
    """Fraction of rows of ``scores`` whose top k columns hold a True of the same row of ``relevant``."""
    order = scores.argsort(dim=1, descending=True)
    ranked_relevant = relevant.gather(1, order)
    return {k: ranked_relevant[:, :k].any(1).double().mean().item() for k in ks}


def cross_modal_recall(image_embeddings: Tensor, text_embeddings: Tensor, text_of_image: Sequence[int],
                       ks: Sequence[int] = KS) -> dict[str, float]:
    """``t2i_recall@k`` and ``i2t_recall@k``: images ``(N, D)``, distinct texts ``(M, D)``, image j's text index."""
    owner = torch.as_tensor(list(text_of_image), dtype=torch.long)
    if len(owner) != len(image_embeddings) or owner.min() < 0 or owner.max() >= len(text_embeddings):
        raise ValueError(f"text_of_image needs one index in [0, {len(text_embeddings)}) per image "
                         f"({len(image_embeddings)}), got {len(owner)}")
    similarity = F.normalize(image_embeddings.double(), dim=1) @ F.normalize(text_embeddings.double(), dim=1).T
    relevant = owner[:, None] == torch.arange(len(text_embeddings))[None, :]  # (N images, M texts)
    i2t = _hits(similarity, relevant, ks)
    t2i = _hits(similarity.T, relevant.T, ks)
    return {**{f"t2i_recall@{k}": v for k, v in t2i.items()}, **{f"i2t_recall@{k}": v for k, v in i2t.items()}}


def chance_recall(text_of_image: Sequence[int], num_texts: int, ks: Sequence[int] = KS) -> dict[str, float]:
    """The expected :func:`cross_modal_recall` of a uniformly random ranking (exact, hypergeometric)."""
    n_images = len(text_of_image)
    counts = torch.bincount(torch.as_tensor(list(text_of_image)), minlength=num_texts).tolist()

    def success(n_relevant: int, gallery: int, k: int) -> float:
        return 1.0 - comb(gallery - n_relevant, k) / comb(gallery, k) if k < gallery else 1.0

    out = {f"t2i_recall@{k}": sum(success(n, n_images, k) for n in counts) / num_texts for k in ks}
    out.update({f"i2t_recall@{k}": success(1, num_texts, k) for k in ks})
    return out
