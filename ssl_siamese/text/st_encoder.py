"""A local sentence-transformers model folder as a text Siamese backbone (its own modules and pooling).

Example:
    >>> encoder = SentenceTransformerEncoder("./my-sentence-transformer")   # the folder has modules.json
    >>> embeddings = encoder.encode(["a sentence", "another one"])
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from ssl_siamese.text.encoder import TextEncoder
from ssl_siamese.text.hf_encoder import HFTokenizer
from ssl_siamese.extras import require


class SentenceTransformerEncoder(TextEncoder):
    """``sentence_transformers.SentenceTransformer(path)``; forward returns its ``sentence_embedding``."""

    def __init__(self, path: str) -> None:
        super().__init__()
        SentenceTransformer = require("sentence_transformers", "A sentence-transformers encoder").SentenceTransformer

        if not (Path(path).expanduser() / "modules.json").is_file():
            raise FileNotFoundError(f"{path} is not a sentence-transformers folder (it has no modules.json)")
        self.model = SentenceTransformer(str(Path(path).expanduser()), device="cpu", local_files_only=True)
        dimension = getattr(self.model, "get_embedding_dimension", None)  # renamed in sentence-transformers 6
        self.dim = (dimension or self.model.get_sentence_embedding_dimension)()

    @property
    def tokenizer(self) -> HFTokenizer:
        return HFTokenizer(self.model[0].tokenizer, self.model.max_seq_length)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        return self.model(dict(features))["sentence_embedding"]
