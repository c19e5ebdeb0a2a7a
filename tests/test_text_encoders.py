"""Text encoders built locally from configs (no download): padding does not change embeddings, pooling, the
built-in encoder's tokenizer travels in its state dict, and the sentence-transformers export round trip."""

from __future__ import annotations

import pytest
import torch

from ssl_siamese.text.builtin_encoder import BuiltinTextEncoder
from ssl_siamese.text.encoder import build_text_encoder
from ssl_siamese.text.export import export_text_encoder, load_text_encoder
from ssl_siamese.text.hf_encoder import HFTextEncoder
from ssl_siamese.text.st_encoder import SentenceTransformerEncoder

CORPUS = ["real time strategy game of ancient warfare", "audio player for the terminal",
          "a library for reading images", "documentation for the image library", "fast text editor"] * 20
TEXTS = ["strategy game", "a much longer sentence about an audio player for the terminal and its library", "editor"]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A 2-layer BERT with hidden size 32 and a WordPiece vocabulary of the corpus words, saved to a folder."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-bert")
    words = sorted({w for text in CORPUS + TEXTS for w in text.split()})
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=5 + len(words), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(folder)
    return folder


def _alone_equals_batch(encoder) -> None:
    batch = encoder.encode(TEXTS)
    alone = torch.cat([encoder.encode([text]) for text in TEXTS])
    torch.testing.assert_close(batch, alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_hf_encoder_padding_does_not_change_embeddings(tiny_bert, pooling):
    encoder = HFTextEncoder(str(tiny_bert), pooling=pooling, normalize=True, local_files_only=True)
    assert encoder.dim == 32
    _alone_equals_batch(encoder)
    assert torch.allclose(encoder.encode(TEXTS).norm(dim=1), torch.ones(3))


def test_hf_mean_pooling_matches_a_hand_computation(tiny_bert):
    encoder = HFTextEncoder(str(tiny_bert), pooling="mean", local_files_only=True)
    features = encoder.tokenizer(TEXTS[:1])
    with torch.no_grad():
        hidden = encoder.model.eval()(**features).last_hidden_state[0]
    torch.testing.assert_close(encoder.encode(TEXTS[:1])[0], hidden.mean(0))


def test_sentence_transformers_export_round_trip(tiny_bert, tmp_path):
    from sentence_transformers import SentenceTransformer

    encoder = build_text_encoder(str(tiny_bert), pooling="mean", normalize=True, local_files_only=True, kind="bag")
    assert isinstance(encoder, HFTextEncoder)
    folder = export_text_encoder(encoder, tmp_path / "st")
    loaded = SentenceTransformer(str(folder), device="cpu")
    torch.testing.assert_close(torch.from_numpy(loaded.encode(TEXTS)), encoder.encode(TEXTS), rtol=1e-4, atol=1e-5)
    # the folder is also an encoder of ours: a local sentence-transformers model to fine-tune
    again = build_text_encoder(str(folder))
    assert isinstance(again, SentenceTransformerEncoder) and isinstance(load_text_encoder(folder),
                                                                        SentenceTransformerEncoder)
    torch.testing.assert_close(again.encode(TEXTS), encoder.encode(TEXTS), rtol=1e-4, atol=1e-5)
    _alone_equals_batch(again)


@pytest.mark.parametrize("kind", ["bag", "transformer"])
def test_builtin_encoder_padding_invariance_and_state_dict_with_tokenizer(kind, tmp_path):
    torch.manual_seed(0)
    encoder = BuiltinTextEncoder(vocab_size=200, dim=16, kind=kind, bigram_buckets=64, heads=2)
    with pytest.raises(RuntimeError, match="fit_tokenizer"):
        encoder.encode(TEXTS)
    encoder.fit_tokenizer(CORPUS)
    _alone_equals_batch(encoder)
    clone = BuiltinTextEncoder(vocab_size=200, dim=16, kind=kind, bigram_buckets=64, heads=2)
    clone.load_state_dict(encoder.state_dict())
    torch.testing.assert_close(clone.encode(TEXTS), encoder.encode(TEXTS))
    loaded = load_text_encoder(export_text_encoder(encoder, tmp_path / "builtin"))
    torch.testing.assert_close(loaded.encode(TEXTS), encoder.encode(TEXTS))


def test_builtin_tokenizer_survives_pickling_for_dataloader_workers():
    import pickle

    encoder = BuiltinTextEncoder(vocab_size=200, dim=8)
    encoder.fit_tokenizer(CORPUS)
    tokenize = pickle.loads(pickle.dumps(encoder.tokenizer))
    assert torch.equal(tokenize(TEXTS)["input_ids"], encoder.tokenizer(TEXTS)["input_ids"])
    assert tokenize(TEXTS)["attention_mask"].sum(1).min() >= 1


def test_unknown_options_are_refused_clearly(tmp_path):
    with pytest.raises(ValueError, match="kind"):
        BuiltinTextEncoder(kind="lstm")
    with pytest.raises(FileNotFoundError, match="cannot load the Hugging Face model"):
        HFTextEncoder(str(tmp_path / "absent"), local_files_only=True)


def test_builtin_tokenizer_numbers_its_tokens_by_their_text():
    """The trainer numbers equally frequent tokens in a varying order; below the size limit (the same token set
    each run) the renumbered tokenizer is the same every time."""
    from ssl_siamese.text.tokenizer import train_tokenizer

    texts = [f"{word} package number {i} for {word}s" for i in range(50) for word in ("alpha", "beta", "gamma")]
    vocab = train_tokenizer(texts, vocab_size=1000).get_vocab()
    assert vocab == train_tokenizer(texts, vocab_size=1000).get_vocab()
    assert sorted(vocab, key=vocab.get)[2:] == sorted(set(vocab) - {"[PAD]", "[UNK]"})
