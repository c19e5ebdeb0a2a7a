"""A hashed n-gram embedding bag: the fastest text encoder to train from scratch on a CPU.

Each text becomes a bag of hashed features: lower-cased word unigrams and word bigrams (words: runs of
letters and digits), and character trigrams of each whitespace-separated word padded with spaces
(punctuation kept; scikit-learn's ``HashingVectorizer``: MurmurHash3 of the
feature, ``abs(hash) % buckets``; word features in rows ``[0, buckets)``, character features in
``[buckets, 2 * buckets)``). The embedding is the count-weighted mean of the features' rows of one
table (``torch.nn.EmbeddingBag``), so a text's embedding does not depend on its batch. No tokenizer is
trained, nothing is downloaded, and out-of-vocabulary words still share character trigrams.

Training touches only the rows of the batch's features: the gradient is sparse (one row per distinct
feature of the batch), and :class:`~ssl_siamese.text.module.TextSiamese` steps it with
``torch.optim.SparseAdam``, which updates only those rows. NCCL cannot all-reduce sparse tensors, so under
DDP on NCCL the module switches the table to dense gradients (:meth:`HashedBagEncoder.use_sparse_gradients`)
and steps it with Adam; gloo (CPU) all-reduces the sparse rows.

Example:
    >>> encoder = HashedBagEncoder(dim=256, buckets=2 ** 18)
    >>> embeddings = encoder.encode(["image viewer", "audio player"])    # (2, 256)
    >>> encoder.tokenizer(["image viewer"])     # {"input_ids", "offsets", "weights"}: flat features, counts
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_siamese.extras import require
from ssl_siamese.text.encoder import TextEncoder

WORD_PATTERN = r"(?u)\b\w+\b"  # every run of letters/digits is a word (one-letter words included)


class HashedFeatures:
    """Texts -> ``{"input_ids", "offsets", "weights"}``: the hashed features of all texts end to end, where
    each text starts, and each feature's count divided by its text's total (a blank text has no feature:
    an empty bag, a zero embedding). Picklable; remembers up to ``cache_size`` texts (training sees each
    text once per epoch).
    """

    def __init__(self, buckets: int = 2 ** 18, word_ngrams: int = 2, char_ngrams: int = 3, lowercase: bool = True,
                 cache_size: int = 300_000) -> None:
        self.buckets, self.word_ngrams, self.char_ngrams = buckets, word_ngrams, char_ngrams
        self.lowercase, self.cache_size = lowercase, cache_size
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._vectorizers = self._build()

    def _build(self) -> list[Any]:
        HashingVectorizer = require("sklearn.feature_extraction.text",
                                    "The hashed text encoder").HashingVectorizer

        common = {"n_features": self.buckets, "alternate_sign": False, "norm": None, "dtype": np.float32,
                  "lowercase": self.lowercase}
        vectorizers = [HashingVectorizer(ngram_range=(1, self.word_ngrams), token_pattern=WORD_PATTERN, **common)]
        if self.char_ngrams:
            vectorizers.append(HashingVectorizer(analyzer="char_wb", ngram_range=(self.char_ngrams,) * 2, **common))
        return vectorizers

    def __getstate__(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if key not in ("_cache", "_vectorizers")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._cache, self._vectorizers = {}, self._build()

    @property
    def num_rows(self) -> int:
        """Rows of the embedding table: ``buckets`` per feature family (words; character n-grams)."""
        return self.buckets * len(self._vectorizers)

    def features(self, texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each text's ``(feature ids, counts)``, ids ascending."""
        import scipy.sparse as sp

        missing = list(dict.fromkeys(text for text in texts if text not in self._cache))
        if missing:
            matrix = sp.hstack([v.transform(missing) for v in self._vectorizers], format="csr")
            matrix.sort_indices()
            if len(self._cache) + len(missing) > self.cache_size:
                self._cache.clear()
            for i, text in enumerate(missing):
                row = slice(matrix.indptr[i], matrix.indptr[i + 1])
                ids, counts = matrix.indices[row].astype(np.int64), matrix.data[row]
                self._cache[text] = (ids, counts)
        found = [self._cache[text] for text in texts]
        if len(self._cache) > self.cache_size:  # one call larger than the cache: do not keep it
            self._cache.clear()
        return found

    def __call__(self, texts: Sequence[str]) -> dict[str, Tensor]:
        rows = self.features(list(texts))
        lengths = np.array([len(ids) for ids, _ in rows], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if len(rows) else lengths
        weights = [counts / counts.sum() for _, counts in rows]
        return {"input_ids": torch.from_numpy(np.concatenate([ids for ids, _ in rows]) if rows else lengths),
                "offsets": torch.from_numpy(offsets),
                "weights": torch.from_numpy(np.concatenate(weights).astype(np.float32) if rows else
                                            np.zeros(0, np.float32))}


class _GatherRows(torch.autograd.Function):
    """``weight[rows]`` whose gradient is a coalesced sparse tensor with one entry per row (``rows`` unique, sorted)."""

    @staticmethod
    def forward(ctx: Any, weight: Tensor, rows: Tensor) -> Tensor:
        ctx.save_for_backward(rows)
        ctx.shape = weight.shape
        return weight[rows]

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (rows,) = ctx.saved_tensors
        sparse = torch.sparse_coo_tensor(rows.unsqueeze(0), grad, ctx.shape, is_coalesced=True,
                                         check_invariants=False)
        return sparse, None


class HashedBagEncoder(TextEncoder):
    """Mean of hashed word, word-bigram and character-trigram embeddings (see the module docstring).

    Args:
        dim: embedding size.
        buckets: hash buckets per feature family; the table has ``2 * buckets`` rows (``buckets`` without
            character n-grams).
        word_ngrams: word n-grams from 1 to this (2: unigrams and bigrams).
        char_ngrams: character n-gram length within words (0: none).
        normalize: L2-normalise the output.
    """

    sparse_gradients = True  # TextSiamese steps the table with SparseAdam (see use_sparse_gradients)
    export_file = "hashed_bag.pt"

    def __init__(self, dim: int = 256, buckets: int = 2 ** 18, word_ngrams: int = 2, char_ngrams: int = 3,
                 normalize: bool = False) -> None:
        super().__init__()
        if buckets < 1 or dim < 1:
            raise ValueError(f"buckets and dim must be positive, got buckets={buckets}, dim={dim}")
        self.dim, self.normalize = dim, normalize
        self.features = HashedFeatures(buckets, word_ngrams, char_ngrams)
        self.embedding = nn.EmbeddingBag(self.features.num_rows, dim, mode="sum", sparse=True)
        nn.init.normal_(self.embedding.weight, std=dim ** -0.5)

    def use_sparse_gradients(self, sparse: bool) -> None:
        """Sparse (one row per feature of the batch, the default) or dense gradients for the table: the same values.

        Call before the model is wrapped by DDP (which reads ``embedding.sparse`` to plan its all-reduce).
        """
        self.sparse_gradients = sparse
        self.embedding.sparse = sparse

    def options(self) -> dict[str, Any]:
        """The constructor arguments (what an export records)."""
        f = self.features
        return {"dim": self.dim, "buckets": f.buckets, "word_ngrams": f.word_ngrams, "char_ngrams": f.char_ngrams,
                "normalize": self.normalize}

    @property
    def tokenizer(self) -> HashedFeatures:
        return self.features

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        ids, offsets, weights = features["input_ids"], features["offsets"], features["weights"]
        if self.sparse_gradients and torch.is_grad_enabled() and self.embedding.weight.requires_grad:
            rows, inverse = torch.unique(ids, return_inverse=True)  # the gradient: one row per distinct feature
            table = _GatherRows.apply(self.embedding.weight, rows)
            pooled = F.embedding_bag(inverse, table, offsets, mode="sum", per_sample_weights=weights)
        else:
            pooled = self.embedding(ids, offsets, per_sample_weights=weights)
        return F.normalize(pooled, dim=-1) if self.normalize else pooled
