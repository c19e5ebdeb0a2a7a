"""Text Siamese encoders: pair data, losses, encoders (Hugging Face, sentence-transformers, built-in), search.

Example:
    >>> from ssl_siamese.text import TextSiamese, TextPairDataModule
    >>> pl.Trainer(max_epochs=3).fit(TextSiamese("builtin"), datamodule=TextPairDataModule("pairs.jsonl"))

The modules import their heavy dependencies (transformers, sentence-transformers, bm25s) only when used.
"""

from ssl_siamese._lazy import lazy_exports

_EXPORTS = {
    "TextSiamese": "ssl_siamese.text.module",
    "TextPairDataModule": "ssl_siamese.text.datamodule",
    "TextPair": "ssl_siamese.text.pairs",
    "read_pairs": "ssl_siamese.text.pairs",
    "PairCollate": "ssl_siamese.text.pairs",
    "group_split": "ssl_siamese.text.split",
    "debian_description_pairs": "ssl_siamese.text.debian",
    "InBatchNegativesLoss": "ssl_siamese.text.losses",
    "CosineSimilarityLoss": "ssl_siamese.text.losses",
    "text_keys": "ssl_siamese.text.losses",
    "build_text_encoder": "ssl_siamese.text.encoder",
    "BuiltinTextEncoder": "ssl_siamese.text.builtin_encoder",
    "HFTextEncoder": "ssl_siamese.text.hf_encoder",
    "HashedBagEncoder": "ssl_siamese.text.hashed_bag",
    "run_embed_text": "ssl_siamese.text.embed_texts",
    "load_text_model": "ssl_siamese.text.embed_texts",
    "labelled_pairs": "ssl_siamese.text.verification",
    "SentenceTransformerEncoder": "ssl_siamese.text.st_encoder",
    "export_text_encoder": "ssl_siamese.text.export",
    "load_text_encoder": "ssl_siamese.text.export",
    "export_sentence_transformer": "ssl_siamese.text.st_export",
    "dense_search": "ssl_siamese.text.retrieval",
    "bm25_search": "ssl_siamese.text.retrieval",
    "reciprocal_rank_fusion": "ssl_siamese.text.retrieval",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = list(_EXPORTS)
