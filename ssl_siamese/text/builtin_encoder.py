"""A small text encoder trained from scratch, for machines without pretrained weights.

Its tokenizer is trained on the user's corpus (:func:`fit_tokenizer`, WordPiece) and travels inside the
module's state dict (``get_extra_state``), so a checkpoint or ``torch.save(encoder.state_dict())`` holds
everything. ``kind="bag"``: the mean of token embeddings plus hashed token-bigram embeddings (fast on a
CPU, strong for short texts); ``kind="transformer"``: token + position embeddings, a few pre-norm
Transformer layers, masked mean pooling.

Example:
    >>> encoder = BuiltinTextEncoder(vocab_size=4000, dim=128)
    >>> encoder.fit_tokenizer(corpus_texts)
    >>> embeddings = encoder.encode(["image viewer", "audio player"])    # (2, 128)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import Tensor, nn

from ssl_siamese.text.encoder import TextEncoder, masked_mean
from ssl_siamese.text.tokenizer import PaddedTokenizer, train_tokenizer

KINDS = ("bag", "transformer")


class BuiltinTextEncoder(TextEncoder):
    """Embedding bag (with hashed bigrams) or small Transformer over a corpus-trained WordPiece tokenizer."""

    export_file = "builtin_encoder.pt"

    def __init__(self, vocab_size: int = 8000, dim: int = 256, kind: str = "bag", bigram_buckets: int = 32768,
                 layers: int = 2, heads: int = 4, max_length: int = 128, normalize: bool = False) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown built-in encoder kind {kind!r}; choose one of {', '.join(KINDS)}")
        self.vocab_size, self.dim, self.kind, self.max_length = vocab_size, dim, kind, max_length
        self.bigram_buckets = bigram_buckets if kind == "bag" else 0
        self.normalize = normalize
        self._tokenizer: Tokenizer | None = None
        self.embedding = nn.Embedding(vocab_size + self.bigram_buckets, dim, padding_idx=0)
        nn.init.normal_(self.embedding.weight, std=dim ** -0.5)
        if kind == "transformer":
            self.position = nn.Embedding(max_length, dim)
            layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=4 * dim, dropout=0.1, batch_first=True,
                                               norm_first=True)
            self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(dim)

    def fit_tokenizer(self, texts: Iterable[str]) -> None:
        """Train the WordPiece tokenizer on ``texts`` (the training corpus), at most ``vocab_size`` tokens."""
        self._tokenizer = train_tokenizer(texts, vocab_size=self.vocab_size)

    @property
    def has_tokenizer(self) -> bool:
        return self._tokenizer is not None

    def load_tokenizer(self, state_dict: Mapping[str, Any], prefix: str = "") -> None:
        """The tokenizer of a state dict that holds this encoder under ``prefix`` (none there: none here)."""
        self.set_extra_state(state_dict.get(f"{prefix}_extra_state"))

    def options(self) -> dict[str, Any]:
        """The constructor arguments (what an export records)."""
        options = {"vocab_size": self.vocab_size, "dim": self.dim, "kind": self.kind,
                   "bigram_buckets": self.bigram_buckets, "max_length": self.max_length, "normalize": self.normalize}
        if self.kind == "transformer":
            options.update(layers=len(self.transformer.layers), heads=self.transformer.layers[0].self_attn.num_heads)
        return options

    @property
    def tokenizer(self) -> PaddedTokenizer:
        if self._tokenizer is None:
            raise RuntimeError("the built-in encoder has no tokenizer yet: call encoder.fit_tokenizer(texts) on the "
                               "training texts first (the text_siamese recipe does), or load a state dict that has one")
        return PaddedTokenizer(self._tokenizer, self.max_length)

    def get_extra_state(self) -> Any:
        return {"tokenizer": self._tokenizer.to_str() if self._tokenizer is not None else None}

    def set_extra_state(self, state: Any) -> None:
        text = (state or {}).get("tokenizer")
        self._tokenizer = Tokenizer.from_str(text) if text else None

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        ids, mask = features["input_ids"], features["attention_mask"]
        if self.kind == "bag":
            pooled = masked_mean(self.embedding(ids), mask)
            if self.bigram_buckets and ids.shape[1] > 1:
                pairs = (ids[:, :-1] * 1_000_003 + ids[:, 1:]) % self.bigram_buckets + self.vocab_size
                pair_mask = mask[:, :-1] * mask[:, 1:]
                pooled = pooled + masked_mean(self.embedding(pairs), pair_mask)
        else:
            positions = torch.arange(ids.shape[1], device=ids.device)
            hidden = self.embedding(ids) + self.position(positions)
            hidden = self.transformer(hidden, src_key_padding_mask=mask == 0)
            pooled = masked_mean(self.norm(hidden), mask)
        return F.normalize(pooled, dim=-1) if self.normalize else pooled
