"""Export a trained text encoder as a folder that ``sentence_transformers.SentenceTransformer(path)`` loads.

Example:
    >>> folder = export_sentence_transformer(model.encoder, "out/text_siamese/exported_models/sentence_transformer")
    >>> from sentence_transformers import SentenceTransformer
    >>> SentenceTransformer(str(folder)).encode(["a sentence"])     # the same embeddings as model.encoder.encode
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from ssl_siamese.text.encoder import TextEncoder
from ssl_siamese.text.hf_encoder import HFTextEncoder
from ssl_siamese.text.st_encoder import SentenceTransformerEncoder
from ssl_siamese.extras import require


def export_sentence_transformer(encoder: TextEncoder, folder: str | Path) -> Path:
    """Write ``encoder`` (an :class:`HFTextEncoder` or :class:`SentenceTransformerEncoder`) to ``folder``.

    The HF case becomes Transformer -> Pooling (mean or CLS, as trained) [-> Normalize]. The built-in
    encoder has no sentence-transformers equivalent: save its ``state_dict()`` (it holds the tokenizer).
    """
    SentenceTransformer = require("sentence_transformers", "Saving a sentence-transformers folder").SentenceTransformer
    models = require("sentence_transformers.models", "Saving a sentence-transformers folder")

    folder = Path(folder)
    if isinstance(encoder, SentenceTransformerEncoder):
        encoder.model.save(str(folder))
        return folder
    if not isinstance(encoder, HFTextEncoder):
        raise TypeError(f"{type(encoder).__name__} cannot be written as a sentence-transformers folder; only "
                        "Hugging Face and sentence-transformers encoders can (save the built-in one's state_dict)")
    with tempfile.TemporaryDirectory() as tmp:
        encoder.model.save_pretrained(tmp)
        encoder.hf_tokenizer.save_pretrained(tmp)
        transformer = models.Transformer(tmp, max_seq_length=encoder.max_length)
        pooling = models.Pooling(encoder.dim, pooling_mode="cls" if encoder.pooling == "cls" else "mean")
        modules = [transformer, pooling] + ([models.Normalize()] if encoder.normalize else [])
        SentenceTransformer(modules=modules, device="cpu").save(str(folder))
    return folder
