"""Write a trained text encoder to ``<folder>`` and read it back.

Hugging Face and sentence-transformers encoders become a sentence-transformers folder
(:func:`export_sentence_transformer`: ``SentenceTransformer(folder)`` loads it); the built-in encoder becomes
``<folder>/builtin_encoder.pt`` and the hashed bag ``<folder>/hashed_bag.pt`` (options and state dict,
tokenizer included, loadable weights-only).

Example:
    >>> path = export_text_encoder(model, "out/text_siamese/exported_models/text_encoder")
    >>> encoder = load_text_encoder(path)   # BuiltinTextEncoder, HashedBagEncoder or SentenceTransformerEncoder
"""

from __future__ import annotations

from pathlib import Path

import torch

from ssl_siamese.text.encoder import TextEncoder
from ssl_siamese.text.registry import text_encoder_class
from ssl_siamese.text.st_export import export_sentence_transformer

BUILTIN_FILE = "builtin_encoder.pt"
HASHED_FILE = "hashed_bag.pt"
# the file an encoder built from its options is exported to (its export_file) -> its row of TEXT_ENCODERS
EXPORT_FILES = {HASHED_FILE: "hashed", BUILTIN_FILE: "builtin"}


def export_text_encoder(encoder: TextEncoder, folder: str | Path) -> Path:
    """Write ``encoder`` into ``folder`` (created) and return the folder."""
    folder = Path(folder)
    if encoder.export_file is None:
        return export_sentence_transformer(encoder, folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"options": encoder.options(), "state_dict": encoder.state_dict()}, folder / encoder.export_file)
    return folder


def load_text_encoder(folder: str | Path) -> TextEncoder:
    """The encoder :func:`export_text_encoder` wrote in ``folder``."""
    folder = Path(folder)
    for file, name in EXPORT_FILES.items():
        if (folder / file).is_file():
            saved = torch.load(folder / file, weights_only=True)
            encoder = text_encoder_class(name)(**saved["options"])
            encoder.load_state_dict(saved["state_dict"])
            return encoder
    if (folder / "modules.json").is_file():
        return text_encoder_class("sentence_transformers")(str(folder))
    raise FileNotFoundError(f"{folder} holds no exported text encoder ({BUILTIN_FILE}, {HASHED_FILE} or a "
                            "sentence-transformers modules.json)")
