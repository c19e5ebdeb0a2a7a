"""Write a trained text encoder to ``<folder>`` and read it back.

Hugging Face and sentence-transformers encoders become a sentence-transformers folder
(:func:`export_sentence_transformer`: ``SentenceTransformer(folder)`` loads it); the built-in encoder becomes
``<folder>/builtin_encoder.pt`` and the hashed bag ``<folder>/hashed_bag.pt`` (options and state dict,
tokenizer included, loadable weights-only).

Example:
    >>> path = export_text_encoder(model, "out/text_siamese/exported_models/text_encoder")
    >>> encoder = load_text_encoder(path)          # BuiltinTextEncoder or SentenceTransformerEncoder
"""

from __future__ import annotations

from pathlib import Path

import torch

from ssl_siamese.text.builtin_encoder import BuiltinTextEncoder
from ssl_siamese.text.encoder import TextEncoder
from ssl_siamese.text.hashed_bag import HashedBagEncoder
from ssl_siamese.text.st_encoder import SentenceTransformerEncoder
from ssl_siamese.text.st_export import export_sentence_transformer

BUILTIN_FILE = "builtin_encoder.pt"
HASHED_FILE = "hashed_bag.pt"


def export_text_encoder(encoder: TextEncoder, folder: str | Path) -> Path:
    """Write ``encoder`` into ``folder`` (created) and return the folder."""
    folder = Path(folder)
    if isinstance(encoder, HashedBagEncoder):
        folder.mkdir(parents=True, exist_ok=True)
        torch.save({"options": encoder.options(), "state_dict": encoder.state_dict()}, folder / HASHED_FILE)
        return folder
    if isinstance(encoder, BuiltinTextEncoder):
        folder.mkdir(parents=True, exist_ok=True)
        options = {"vocab_size": encoder.vocab_size, "dim": encoder.dim, "kind": encoder.kind,
                   "bigram_buckets": encoder.bigram_buckets, "max_length": encoder.max_length,
                   "normalize": encoder.normalize}
        if encoder.kind == "transformer":
            options.update(layers=len(encoder.transformer.layers),
                           heads=encoder.transformer.layers[0].self_attn.num_heads)
        torch.save({"options": options, "state_dict": encoder.state_dict()}, folder / BUILTIN_FILE)
        return folder
    return export_sentence_transformer(encoder, folder)


def load_text_encoder(folder: str | Path) -> TextEncoder:
    """The encoder :func:`export_text_encoder` wrote in ``folder``."""
    folder = Path(folder)
    if (folder / HASHED_FILE).is_file():
        saved = torch.load(folder / HASHED_FILE, weights_only=True)
        encoder = HashedBagEncoder(**saved["options"])
        encoder.load_state_dict(saved["state_dict"])
        return encoder
    if (folder / BUILTIN_FILE).is_file():
        saved = torch.load(folder / BUILTIN_FILE, weights_only=True)
        encoder = BuiltinTextEncoder(**saved["options"])
        encoder.load_state_dict(saved["state_dict"])
        return encoder
    if (folder / "modules.json").is_file():
        return SentenceTransformerEncoder(str(folder))
    raise FileNotFoundError(f"{folder} holds no exported text encoder ({BUILTIN_FILE}, {HASHED_FILE} or a "
                            "sentence-transformers modules.json)")
