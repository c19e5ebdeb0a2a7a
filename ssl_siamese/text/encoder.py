"""The text encoder interface shared by every encoder, and :func:`build_text_encoder` from a name.

A text encoder is an ``nn.Module`` with a picklable ``tokenizer`` (texts -> a dict of tensors, padded to
the longest text of the batch; the DataLoader's collate calls it, in workers too), a ``forward`` from that
dict to ``(B, dim)`` embeddings, and ``encode(texts)`` for inference. Callers ask the encoder what it needs
(``has_tokenizer``, ``sparse_gradients``, ``export_file``) rather than test its class; the classes are
registered by name in :mod:`ssl_siamese.text.registry`.

Example:
    >>> encoder = build_text_encoder("path/to/hf-model-folder", pooling="mean", normalize=True)
    >>> embeddings = encoder.encode(["a sentence", "another one"])   # (2, hidden size), on the CPU
    >>> if not encoder.has_tokenizer:                                 # the built-in one learns it from the corpus
    ...     encoder.fit_tokenizer(training_texts)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ssl_siamese.text.registry import FROM_MODEL, text_encoder_class, text_encoder_name

Tokenize = Callable[[Sequence[str]], dict[str, Tensor]]


def masked_mean(hidden: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``hidden`` ``(B, L, D)`` over the positions where ``mask`` ``(B, L)`` is 1."""
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


class TextEncoder(nn.Module):
    """Base class: subclasses set ``dim``, provide ``tokenizer`` and ``forward(features) -> (B, dim)``.

    An encoder that learns its tokenizer from the training texts overrides ``has_tokenizer``,
    ``fit_tokenizer`` and ``load_tokenizer``; one exported as ``<folder>/<export_file>`` (its ``options()``
    and state dict) rather than as a sentence-transformers folder sets ``export_file`` and implements ``options``.
    """

    dim: int
    sparse_gradients: bool = False  # True: the gradient is sparse, stepped by SparseAdam (the hashed bag)
    export_file: str | None = None  # the file export_text_encoder writes; None: a sentence-transformers folder

    @property
    def tokenizer(self) -> Tokenize:
        raise NotImplementedError

    @property
    def has_tokenizer(self) -> bool:
        """False while an encoder that learns its tokenizer from the corpus has not learnt (or loaded) it yet."""
        return True

    def fit_tokenizer(self, texts: Iterable[str]) -> None:
        """Learn the tokenizer from ``texts`` (the training corpus); only an encoder without one can."""
        raise TypeError(f"{type(self).__name__} comes with its tokenizer: there is none to train")

    def load_tokenizer(self, state_dict: Mapping[str, Any], prefix: str = "") -> None:
        """Take the tokenizer a checkpoint's ``state_dict`` holds for this encoder, stored under ``prefix``
        (``"encoder."`` in a ``TextSiamese`` checkpoint); only an encoder that learns its tokenizer stores it."""
        raise TypeError(f"{type(self).__name__} comes with its tokenizer: a checkpoint does not hold it")

    def options(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this encoder around its state dict (what an export records)."""
        raise TypeError(f"{type(self).__name__} is exported as a sentence-transformers folder, not by its options")

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
    Hugging Face model name or folder (:class:`HFTextEncoder`): the rows of
    :data:`~ssl_siamese.text.registry.TEXT_ENCODERS`. ``options`` go to that class; those it does not take are
    ignored, so one config can hold the options of all of them.
    """
    row = text_encoder_name(name)
    cls = text_encoder_class(row)
    accepted = inspect.signature(cls.__init__).parameters
    chosen = {key: value for key, value in options.items() if key in accepted}
    return cls(name, **chosen) if row in FROM_MODEL else cls(**chosen)
