"""Using a trained backbone on images: embed them, search the embeddings, classify and find duplicates.

``embeddings``: ``embed_images`` (training's evaluation preprocessing, ``Preprocess``) and ``EmbeddingIndex``
(exact cosine k-nearest neighbours, saved as ``.npz``). ``oneshot``: ``OneShotClassifier``, classes from one or
a few reference images each. ``duplicates``: ``find_duplicates``, every pair of a corpus over a cosine
threshold. The names below are imported on first use.

Example:
    >>> from ssl_siamese.search import EmbeddingIndex, embed_images
    >>> index = EmbeddingIndex(embed_images(backbone, gallery, metadata), labels=labels)
    >>> scores, indices = index.search(embed_images(backbone, queries, metadata), k=5)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ssl_siamese._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(["Preprocess", "preprocessing", "embed_images", "EmbeddingIndex", "RESIZE"],
                    "ssl_siamese.search.embeddings"),
    **dict.fromkeys(["OneShotClassifier", "UNKNOWN", "UNREADABLE"], "ssl_siamese.search.oneshot"),
    "find_duplicates": "ssl_siamese.search.duplicates",
}

if TYPE_CHECKING:  # the same names, eagerly, for type checkers and IDEs
    from ssl_siamese.search.duplicates import find_duplicates
    from ssl_siamese.search.embeddings import RESIZE, EmbeddingIndex, Preprocess, embed_images, preprocessing
    from ssl_siamese.search.oneshot import UNKNOWN, UNREADABLE, OneShotClassifier

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = list(_EXPORTS)
