"""Any Hugging Face ``transformers`` encoder as a text Siamese backbone: ``AutoModel`` + mean or CLS pooling.

Example:
    >>> encoder = HFTextEncoder("sentence-transformers/all-MiniLM-L6-v2", pooling="mean", normalize=True)
    >>> encoder = HFTextEncoder("./my-bert-folder", local_files_only=True)      # a local folder, no download
    >>> embeddings = encoder.encode(["a sentence", "another one"])
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from ssl_siamese.text.encoder import TextEncoder, masked_mean
from ssl_siamese.extras import require

POOLINGS = ("mean", "cls")


class HFTokenizer:
    """A Hugging Face tokenizer as a collate-time callable: padded to the longest text, truncated, tensors."""

    def __init__(self, tokenizer, max_length: int = 128) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, texts: Sequence[str]) -> dict[str, Tensor]:
        return dict(self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                                   return_tensors="pt"))


class HFTextEncoder(TextEncoder):
    """``AutoModel`` and ``AutoTokenizer`` from a model name or local folder; pooled last hidden states.

    ``pooling="mean"`` averages the non-padding tokens, ``"cls"`` takes the first token; ``normalize``
    scales embeddings to unit length. ``local_files_only=True`` never touches the network.
    """

    def __init__(self, name_or_path: str, pooling: str = "mean", normalize: bool = False, max_length: int = 128,
                 local_files_only: bool = False) -> None:
        super().__init__()
        transformers = require("transformers", "A Hugging Face text encoder (HFTextEncoder)")
        AutoModel, AutoTokenizer = transformers.AutoModel, transformers.AutoTokenizer

        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
        try:
            self.model = AutoModel.from_pretrained(name_or_path, local_files_only=local_files_only)
            self.hf_tokenizer = AutoTokenizer.from_pretrained(name_or_path, local_files_only=local_files_only)
        except OSError as error:
            raise FileNotFoundError(f"cannot load the Hugging Face model {name_or_path!r} (a model name, or a local "
                                    f"folder with config.json, the weights and the tokenizer files): {error}") from error
        self.name_or_path, self.pooling, self.normalize, self.max_length = name_or_path, pooling, normalize, max_length
        self.dim = self.model.config.hidden_size
        self._inputs = set(inspect.signature(self.model.forward).parameters)

    @property
    def tokenizer(self) -> HFTokenizer:
        return HFTokenizer(self.hf_tokenizer, self.max_length)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        hidden = self.model(**{k: v for k, v in features.items() if k in self._inputs}).last_hidden_state
        pooled = hidden[:, 0] if self.pooling == "cls" else masked_mean(hidden, features["attention_mask"])
        return F.normalize(pooled, dim=-1) if self.normalize else pooled
