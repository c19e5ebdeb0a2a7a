"""The text encoder interface shared by every encoder, and :func:`build_text_encoder` from a name.

A text encoder is an ``nn.Module`` with a picklable ``tokenizer`` (texts -> a dict of tensors, padded to
the longest text of the batch; the DataLoader's collate calls it, in workers too), a ``forward`` from that
dict to ``(B, dim)`` embeddings, and ``encode(texts)`` for inference.

Example:
    >>> encoder = build_text_encoder("path/to/hf-model-folder", pooling="mean", normalize=True)
    >>> embeddings = encoder.encode(["a sentence", "another one"])   # (2, hidden size), on the CPU
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

Tokenize = Callable[[Sequence[str]], dict[str, Tensor]]


class TextEncoder(nn.Module):
    """Base class: subclasses set ``dim``, provide ``tokenizer`` and ``forward(features) -> (B, dim)``."""

    dim: int

    @property
    def tokenizer(self) -> Tokenize:
        raise NotImplementedError

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 256) -> Tensor:
        """Embeddings ``(N, dim)`` (float32, CPU) of ``texts``, in eval mode; the module's mode is restored."""
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        tokenize = self.tokenizer
        out = []
        for start in range(0, len(texts), batch_size):
            features = {k: v.to(device) for k, v in tokenize(list(texts[start:start + batch_size])).items()}
            out.append(self(features).float().cpu())
        self.train(was_training)
        return torch.cat(out) if out else torch.empty(0, self.dim)


def build_text_encoder(name: str = "builtin", **options: Any) -> TextEncoder:
    """``"builtin"`` (:class:`BuiltinTextEncoder`), ``"hashed"`` (:class:`HashedBagEncoder`), a local
    sentence-transformers folder (it has ``modules.json``: :class:`SentenceTransformerEncoder`) or any
    Hugging Face model name or folder (:class:`HFTextEncoder`). ``options`` go to that class; those it does
    not take are ignored, so one config can hold the options of all of them.
    """
    import inspect

    if name == "builtin":
        from ssl_siamese.text.builtin_encoder import BuiltinTextEncoder as cls
    elif name == "hashed":
        from ssl_siamese.text.hashed_bag import HashedBagEncoder as cls
    elif (Path(name).expanduser() / "modules.json").is_file():
        from ssl_siamese.text.st_encoder import SentenceTransformerEncoder as cls
    else:
        from ssl_siamese.text.hf_encoder import HFTextEncoder as cls
    accepted = inspect.signature(cls.__init__).parameters
    chosen = {key: value for key, value in options.items() if key in accepted}
    return cls(**chosen) if name in ("builtin", "hashed") else cls(name, **chosen)
