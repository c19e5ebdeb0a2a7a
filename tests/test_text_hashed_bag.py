"""The hashed n-gram embedding bag: features against hand-worked cases, embeddings against a float64 mean,
batch invariance, the sparse gradient and its SparseAdam step, and export (the text benchmarks' quick modes run in
tests/test_benchmarks.py)."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from sklearn.utils import murmurhash3_32

from ssl_siamese.text.export import export_text_encoder, load_text_encoder
from ssl_siamese.text.hashed_bag import HashedBagEncoder, HashedFeatures
from ssl_siamese.text.module import TextSiamese

BUCKETS = 2 ** 20


def bucket(feature: str) -> int:
    return abs(murmurhash3_32(feature, seed=0, positive=False)) % BUCKETS


def expected(words: dict[str, int], trigrams: dict[str, int]) -> dict[int, float]:
    """Feature id -> count: word features in [0, BUCKETS), character trigrams in [BUCKETS, 2 BUCKETS)."""
    counts: dict[int, float] = {}
    for feature, n in words.items():
        counts[bucket(feature)] = counts.get(bucket(feature), 0) + n
    for feature, n in trigrams.items():
        counts[BUCKETS + bucket(feature)] = counts.get(BUCKETS + bucket(feature), 0) + n
    return counts


@pytest.mark.parametrize("text, words, trigrams", [
    ("Fast viewer", {"fast": 1, "viewer": 1, "fast viewer": 1},
     {" fa": 1, "fas": 1, "ast": 1, "st ": 1, " vi": 1, "vie": 1, "iew": 1, "ewe": 1, "wer": 1, "er ": 1}),
    # lower-cased; one-letter words count; punctuation splits words but stays in the character n-grams
    ("a A, a", {"a": 3, "a a": 2}, {" a ": 2, " a,": 1, "a, ": 1}),
    ("Go-2", {"go": 1, "2": 1, "go 2": 1}, {" go": 1, "go-": 1, "o-2": 1, "-2 ": 1}),  # trigrams keep the hyphen
])
def test_features_are_hand_worked_word_bigram_and_char_trigram_hashes(text, words, trigrams):
    (ids, counts), = HashedFeatures(buckets=BUCKETS).features([text])
    assert dict(zip(ids.tolist(), counts.tolist())) == expected(words, trigrams)
    batch = HashedFeatures(buckets=BUCKETS)([text])
    assert batch["offsets"].tolist() == [0]
    assert batch["weights"].sum().item() == pytest.approx(1.0)


def test_embedding_is_the_count_weighted_mean_of_the_rows_in_float64():
    encoder = HashedBagEncoder(dim=8, buckets=BUCKETS)
    table = encoder.embedding.weight.detach().double()
    reference = expected({"a": 3, "a a": 2}, {" a ": 2, " a,": 1, "a, ": 1})
    mean = sum(n * table[i] for i, n in reference.items()) / sum(reference.values())
    torch.testing.assert_close(encoder.encode(["a A, a"])[0].double(), mean, rtol=1e-5, atol=1e-6)
    assert torch.equal(encoder.encode([" \t ", ""]), torch.zeros(2, 8))  # a blank text: an empty bag, zero


def test_a_text_alone_or_inside_a_batch_gets_the_same_embedding_in_train_and_eval_paths():
    torch.manual_seed(0)
    encoder = HashedBagEncoder(dim=16, buckets=4096)
    texts = ["image viewer", "a long description of an audio player " * 20, "x", "image viewer for GNOME"]
    batch = encoder.encode(texts)
    for i, text in enumerate(texts):
        torch.testing.assert_close(encoder.encode([text])[0], batch[i], rtol=0, atol=1e-6)
    trained_path = encoder(encoder.tokenizer(texts))  # grad enabled: the unique-rows path used in training
    torch.testing.assert_close(trained_path.detach(), batch, rtol=0, atol=1e-6)


def test_sparse_gradient_equals_the_dense_one_and_sparse_adam_moves_only_those_rows():
    torch.manual_seed(0)
    model = TextSiamese(encoder="hashed", dim=8, buckets=512, loss="symmetric", lr=0.1)
    encoder = model.encoder
    queries, documents = ["image viewer", "audio player", "text editor"], ["views images", "plays audio", "edits"]
    q, d = (encoder.tokenizer(t) for t in (queries, documents))
    model.loss_fn(encoder(q), encoder(d)).backward()
    sparse = encoder.embedding.weight.grad.to_dense()
    dense_table = encoder.embedding.weight.detach().clone().requires_grad_()

    def dense(features):
        return torch.nn.functional.embedding_bag(features["input_ids"], dense_table, features["offsets"],
                                                 mode="sum", per_sample_weights=features["weights"])

    model.loss_fn(dense(q), dense(d)).backward()
    torch.testing.assert_close(sparse, dense_table.grad, rtol=1e-5, atol=1e-7)

    optimizer = torch.optim.SparseAdam(list(model.parameters()), lr=0.1)  # what configure_optimizers picks
    before = encoder.embedding.weight.detach().clone()
    optimizer.step()
    moved = (encoder.embedding.weight.detach() != before).any(1)
    used = torch.zeros_like(moved)
    used[torch.cat([q["input_ids"], d["input_ids"]])] = True
    assert moved.any() and not (moved & ~used).any()


def test_under_nccl_ddp_the_table_gets_dense_gradients_and_adam(monkeypatch):
    import ssl_siamese.text.module as module
    from ssl_siamese.text.losses import text_keys

    assert module.sparse_all_reduce_available()  # one process: sparse
    queries, documents = ["image viewer", "audio player", "text editor"], ["views images", "plays audio", "edits"]
    weights, grads = {}, {}
    for backend in ("gloo", "nccl"):
        torch.manual_seed(0)
        model = TextSiamese(encoder="hashed", dim=8, buckets=512, loss="symmetric", lr=0.1)
        monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)  # as DDP on 2 ranks sets it up
        monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
        monkeypatch.setattr(torch.distributed, "get_backend", lambda b=backend: b)
        model.setup("fit")
        monkeypatch.undo()
        assert model.encoder.sparse_gradients == (backend == "gloo") == model.encoder.embedding.sparse
        monkeypatch.setattr(TextSiamese, "trainer", property(lambda self: type("T", (), {
            "estimated_stepping_batches": 10})()))
        optimizer = model.configure_optimizers()["optimizer"]
        monkeypatch.undo()
        assert type(optimizer) is (torch.optim.SparseAdam if backend == "gloo" else torch.optim.Adam)
        batch = {"query": model.encoder.tokenizer(queries), "positive": model.encoder.tokenizer(documents),
                 "keys": {"query": text_keys(queries), "positive": text_keys(documents)}}
        model.pair_loss(batch).backward()
        grad = model.encoder.embedding.weight.grad
        assert grad.is_sparse == (backend == "gloo")
        grads[backend] = grad.to_dense() if grad.is_sparse else grad
        before = model.encoder.embedding.weight.detach().clone()
        optimizer.step()
        weights[backend] = model.encoder.embedding.weight.detach() - before
    torch.testing.assert_close(grads["nccl"], grads["gloo"])
    # first steps in float64: Adam -lr g / (|g| + eps); SparseAdam adds eps before the bias correction of v
    g = grads["gloo"].double()
    torch.testing.assert_close(weights["nccl"].double(), -0.1 * g / (g.abs() + 1e-8), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(weights["gloo"].double(), -0.1 * g / (g.abs() + 1e-8 / 0.001 ** 0.5), rtol=1e-4,
                               atol=1e-7)


class SaveTable(__import__("pytorch_lightning").Callback):
    """Each rank writes its table after training (DDP must keep them identical)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_train_end(self, trainer, pl_module) -> None:
        torch.save(pl_module.encoder.embedding.weight.detach().clone(), f"{self.folder}/rank{trainer.global_rank}.pt")


def test_sparse_gradients_under_ddp_on_two_gloo_processes_keep_the_ranks_identical(tmp_path):
    import pytorch_lightning as pl

    from ssl_siamese.text.datamodule import TextPairDataModule

    rows = [{"query": f"tool number {i} for task {i % 7}", "positive": f"A program that does task {i % 7}, "
             f"variant {i}.", "group": str(i)} for i in range(96)]
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    torch.manual_seed(0)
    model = TextSiamese(encoder="hashed", dim=8, buckets=256, loss="symmetric", lr=0.05)
    initial = model.encoder.embedding.weight.detach().clone()
    data = TextPairDataModule(str(tmp_path / "pairs.jsonl"), test_fraction=0.2, batch_size=8)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[SaveTable(str(tmp_path))])
    trainer.fit(model, datamodule=data)
    tables = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert torch.equal(tables[0], tables[1]), "gloo all-reduced the sparse gradients: one table on both ranks"
    assert (tables[0] != initial).any(1).sum() > 10, "rows of the batches' features moved"


def test_export_round_trip_and_pickled_tokenizer(tmp_path):
    encoder = HashedBagEncoder(dim=8, buckets=1024, normalize=True)
    texts = ["image viewer", "audio player"]
    loaded = load_text_encoder(export_text_encoder(encoder, tmp_path / "enc"))
    assert isinstance(loaded, HashedBagEncoder) and loaded.options() == encoder.options()
    torch.testing.assert_close(loaded.encode(texts), encoder.encode(texts), rtol=0, atol=0)
    copy = pickle.loads(pickle.dumps(encoder.tokenizer))
    assert all(torch.equal(a, b) for a, b in zip(copy(texts).values(), encoder.tokenizer(texts).values()))
