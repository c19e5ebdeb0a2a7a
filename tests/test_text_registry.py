"""The text encoder registry: every row resolves, names map to rows as ``--model.encoder`` takes them, and an
unknown name, a misspelt one or a missing package says what is known or what to install."""

from __future__ import annotations

import sys

import pytest
import torch

from ssl_siamese.text.encoder import TextEncoder, build_text_encoder
from ssl_siamese.text.export import EXPORT_FILES, export_text_encoder, load_text_encoder
from ssl_siamese.text.module import TextSiamese
from ssl_siamese.text.registry import FROM_MODEL, TEXT_ENCODERS, text_encoder_class, text_encoder_name

SMALL = {"dim": 8, "vocab_size": 60, "bigram_buckets": 16, "buckets": 64}  # options of every row built from options
TEXTS = ["image viewer for the desktop", "audio player", "a text editor", "image editor"] * 5


@pytest.mark.parametrize("name", list(TEXT_ENCODERS))
def test_every_row_resolves_to_a_text_encoder_class(name):
    cls = text_encoder_class(name)
    assert issubclass(cls, TextEncoder)
    assert f"{cls.__module__}.{cls.__name__}" == TEXT_ENCODERS[name]


@pytest.mark.parametrize("name", [row for row in TEXT_ENCODERS if row not in FROM_MODEL])
def test_each_row_built_from_options_builds_by_name_trains_its_tokenizer_if_needed_and_exports(name, tmp_path):
    encoder = build_text_encoder(name, **SMALL, pooling="cls")  # pooling: an option of another row, ignored
    assert type(encoder) is text_encoder_class(name) and text_encoder_name(name) == name
    if not encoder.has_tokenizer:
        encoder.fit_tokenizer(TEXTS)
    assert encoder.has_tokenizer
    embeddings = encoder.encode(TEXTS[:3])
    assert embeddings.shape == (3, 8)
    assert EXPORT_FILES[encoder.export_file] == name  # what load_text_encoder reads back, by the same row
    loaded = load_text_encoder(export_text_encoder(encoder, tmp_path / "export"))
    assert type(loaded) is type(encoder) and loaded.options() == encoder.options()
    torch.testing.assert_close(loaded.encode(TEXTS[:3]), embeddings)


def test_a_model_name_or_folder_maps_to_the_row_that_loads_it(tmp_path):
    (tmp_path / "st").mkdir()
    (tmp_path / "st" / "modules.json").write_text("[]")
    assert text_encoder_name(str(tmp_path / "st")) == "sentence_transformers"
    assert text_encoder_name("sentence-transformers/all-MiniLM-L6-v2") == "huggingface"
    assert text_encoder_name(str(tmp_path)) == "huggingface"  # a folder without modules.json
    with pytest.raises(ValueError, match="loads a model: pass the model's name or folder"):
        build_text_encoder("huggingface")


def test_an_unknown_row_is_refused_with_the_known_names():
    with pytest.raises(ValueError) as refused:
        text_encoder_class("hashd")
    assert "did you mean hashed?" in str(refused.value)
    assert all(name in str(refused.value) for name in TEXT_ENCODERS)


def test_a_misspelt_encoder_is_refused_before_any_download(monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("a misspelt name went to Hugging Face")

    monkeypatch.setattr(text_encoder_class("huggingface"), "__init__", no_download)
    with pytest.raises(ValueError, match="Unknown text encoder 'builtn'; did you mean builtin?.*hashed"):
        TextSiamese(encoder="builtn")


def test_a_missing_package_names_the_extra_that_installs_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # `import tokenizers` now fails as if not installed
    for module in ("ssl_siamese.text.builtin_encoder", "ssl_siamese.text.tokenizer"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.raises(ImportError, match=r"'builtin' needs the Python package tokenizers: "
                                          r"pip install 'ssl_siamese\[text\]'"):
        text_encoder_class("builtin")
