"""The 2-D map of embeddings the explorer page draws: PCA (default) or t-SNE.

Both work on the L2-normalised embeddings, the cosine geometry the neighbour lists use. PCA is
:func:`ssl_siamese.evaluation.plots.pca_2d` (seeded, seconds for 50,000 points). t-SNE is scikit-learn's
Barnes-Hut ``TSNE`` (PCA initialisation, fixed seed) on the first 50 principal components (Euclidean
distances between unit vectors order pairs as cosine similarity does); it shows clusters better but takes
minutes for tens of thousands of points on a CPU.

Example:
    >>> points = map_2d(torch.randn(1000, 128), "pca")    # (1000, 2) float32 numpy
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

PROJECTIONS = ("pca", "tsne")
TSNE_INPUT_COMPONENTS = 50


def map_2d(features: Tensor | np.ndarray, method: str = "pca") -> np.ndarray:
    """``(N, 2)`` float32 coordinates of ``(N, D)`` embeddings by ``method`` (``"pca"`` or ``"tsne"``)."""
    from ssl_siamese.evaluation.plots import pca_2d, pca_project  # imports Lightning: only when a map is made

    normalised = F.normalize(torch.as_tensor(features).float(), dim=1)
    if method == "pca":
        return pca_2d(normalised).numpy().astype(np.float32)
    if method != "tsne":
        raise ValueError(f"Unknown projection {method!r}; choose one of {', '.join(PROJECTIONS)}.")
    try:
        from sklearn.manifold import TSNE
    except ImportError as error:
        raise ImportError("The t-SNE map needs scikit-learn: pip install scikit-learn (or use the PCA map, "
                          "--projection pca).") from error
    if len(normalised) < 3:
        return pca_2d(normalised).numpy().astype(np.float32)
    reduced = pca_project(normalised, TSNE_INPUT_COMPONENTS).numpy()
    perplexity = min(30.0, (len(normalised) - 1) / 3)
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=0)
    return tsne.fit_transform(reduced).astype(np.float32)
