"""The text encoders of ssl_siamese, in one table: name -> the class that implements it, imported on first use.

The table is the one place a text encoder is registered; :func:`~ssl_siamese.text.encoder.build_text_encoder`
(and so ``TextSiamese(encoder=...)``, ``--model.encoder``, ``CrossModalCLIP(text_encoder=...)``) reads it.
Two kinds of rows: encoders built from their options alone (``"builtin"``, ``"hashed"``: the name is the
row), and encoders that load a model (:data:`FROM_MODEL`), chosen by what the name points to: a folder
with ``modules.json`` is a sentence-transformers model, anything else a Hugging Face model name or folder.
A row's class is imported only when it is used, so an encoder whose extra is not installed costs nothing
until it is asked for, and then the error says what to install.

Example:
    >>> text_encoder_class("hashed")
    <class 'ssl_siamese.text.hashed_bag.HashedBagEncoder'>
    >>> text_encoder_name("./my-bert-folder")      # a model, not a row: the row that loads it
    'huggingface'
"""

from __future__ import annotations

import difflib
import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from ssl_siamese.extras import install_hint

if TYPE_CHECKING:
    from ssl_siamese.text.encoder import TextEncoder

TEXT_ENCODERS: dict[str, str] = {
    "builtin": "ssl_siamese.text.builtin_encoder.BuiltinTextEncoder",  # the text extra (tokenizers)
    "hashed": "ssl_siamese.text.hashed_bag.HashedBagEncoder",  # scikit-learn
    "sentence_transformers": "ssl_siamese.text.st_encoder.SentenceTransformerEncoder",  # the text extra
    "huggingface": "ssl_siamese.text.hf_encoder.HFTextEncoder",  # the text extra (transformers)
}
# the rows built around a model, whose first argument is the model's name or folder (the others take options only)
FROM_MODEL = ("sentence_transformers", "huggingface")


def _unknown(name: str, names: list[str], what: str) -> ValueError:
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.75)
    hint = f"did you mean {close[0]}? " if close else ""
    return ValueError(f"Unknown text encoder {name!r}; {hint}{what} (ssl_siamese.text.registry.TEXT_ENCODERS).")


def text_encoder_name(name: str) -> str:
    """The row of :data:`TEXT_ENCODERS` for ``name`` as ``--model.encoder`` takes it: ``"builtin"``, ``"hashed"``,
    a sentence-transformers folder (``"sentence_transformers"``), or a Hugging Face model name or folder
    (``"huggingface"``).

    Raises:
        ValueError: a row of :data:`FROM_MODEL` named without its model, or a name close to a row's
            (``"hashd"``) that is no folder: a misspelt name, said before any download is tried.
    """
    by_options = [row for row in TEXT_ENCODERS if row not in FROM_MODEL]
    if name in by_options:
        return name
    if name in FROM_MODEL:
        raise ValueError(f"the text encoder {name!r} loads a model: pass the model's name or folder instead")
    path = Path(name).expanduser()
    if (path / "modules.json").is_file():
        return "sentence_transformers"
    if not path.exists() and difflib.get_close_matches(name, by_options, n=1, cutoff=0.75):
        raise _unknown(name, by_options, f"the text encoders are {', '.join(by_options)}, or a Hugging Face "
                                         "model name or folder, or a sentence-transformers folder")
    return "huggingface"


def text_encoder_class(name: str) -> type[TextEncoder]:
    """Import and return the class of the row ``name`` of :data:`TEXT_ENCODERS`.

    Raises:
        ValueError: an unknown row; the message lists the rows and suggests the closest.
        ImportError: the encoder needs a package that is not installed; the message gives the ``pip install`` line.
    """
    if name not in TEXT_ENCODERS:
        raise _unknown(name, list(TEXT_ENCODERS), f"the text encoders are {', '.join(TEXT_ENCODERS)}")
    module_name, _, class_name = TEXT_ENCODERS[name].rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if not error.name or error.name.split(".")[0] == "ssl_siamese":
            raise
        raise ImportError(f"the text encoder {name!r} needs the Python package {error.name.split('.')[0]}: "
                          f"{install_hint(error.name)}") from error
    return getattr(module, class_name)
