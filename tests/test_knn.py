"""Weighted kNN against sklearn and a float64 formula; the KNNEvaluation callback in a Trainer and on 2 ranks.

sklearn's ``KNeighborsClassifier(metric="cosine", weights=lambda d: exp((1 - d) / t))`` weighs a neighbour
at cosine distance ``d = 1 - cos`` by ``exp(cos / t)``: the InstDisc vote that ``weighted_knn_scores`` sums.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from sklearn.neighbors import KNeighborsClassifier
from torch.utils.data import DataLoader, TensorDataset

from ssl_siamese.evaluation.features import ValidationFeatures, gather_rows
from ssl_siamese.evaluation.knn import KNNEvaluation, capped_k, topk_accuracy, weighted_knn_scores

from helpers import run_gloo_ranks

NUM_CLASSES, DIM = 10, 16


def blobs(n: int, seed: int, spread: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy clusters around fixed random centres; ``seed`` draws a new sample of the same clusters."""
    centres = torch.randn(NUM_CLASSES, DIM, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    return centres[labels] + spread * torch.randn(n, DIM, generator=g), labels


def reference_scores(query: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor, k: int,
                     t: float) -> np.ndarray:
    """Per-class sums of ``exp(cos / t)`` over the ``k`` most similar bank items, in float64 loops."""
    q = query.double().numpy()
    b = bank.double().numpy()
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    scores = np.zeros((len(q), NUM_CLASSES))
    for i in range(len(q)):
        similarity = b @ q[i]
        for j in np.argsort(-similarity)[:k]:
            scores[i, int(bank_labels[j])] += np.exp(similarity[j] / t)
    return scores


def sklearn_topk(query, bank, bank_labels, query_labels, k: int, t: float) -> dict[int, float]:
    knn = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute",
                               weights=lambda d: np.exp((1 - d) / t))
    knn.fit(bank.double().numpy(), bank_labels.numpy())
    proba = knn.predict_proba(query.double().numpy())
    assert (proba > 0).sum(axis=1).min() >= 5, "a query with < 5 voted classes: top-5 would depend on ties"
    truth = np.searchsorted(knn.classes_, query_labels.numpy())
    rank = (proba > proba[np.arange(len(proba)), truth][:, None]).sum(axis=1)  # classes scored higher
    return {1: float((rank < 1).mean()), 5: float((rank < 5).mean())}


@pytest.mark.parametrize("k, t", [(50, 0.1), (200, 0.07)])
def test_weighted_knn_matches_sklearn_and_float64(k, t):
    bank, bank_labels = blobs(300, seed=1)
    query, query_labels = blobs(40, seed=2)
    scores = weighted_knn_scores(query, bank, bank_labels, NUM_CLASSES, k=k, temperature=t, chunk_size=7)
    expected = reference_scores(query, bank, bank_labels, k, t)
    np.testing.assert_allclose(scores.double().numpy(), expected, rtol=1e-4)
    got = topk_accuracy(scores, query_labels)
    assert got == pytest.approx(sklearn_topk(query, bank, bank_labels, query_labels, k, t), abs=1e-6)
    assert 0 < got[1] < got[5] < 1  # neither trivial nor perfect: the comparison means something


def test_topk_accuracy_hand_worked():
    scores = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.6, 0.1, 0.3]])
    labels = torch.tensor([1, 1, 0, 2])
    assert topk_accuracy(scores, labels, ks=(1, 2, 5)) == {1: 0.25, 2: 0.75, 5: 1.0}


# --------------------------------------------------------------------------- the callback in a Trainer


class FixedFeatures(pl.LightningModule):
    """``validation_step`` returns the batch itself as features; training does a trivial step."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(1))

    def training_step(self, batch, batch_idx):
        return (self.weight ** 2).sum()

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        features, labels = batch
        return {"features": features, "labels": labels}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loaders() -> tuple[list[DataLoader], tuple[torch.Tensor, ...]]:
    bank, bank_labels = blobs(120, seed=3)
    query, query_labels = blobs(30, seed=4)
    return ([DataLoader(TensorDataset(bank, bank_labels), batch_size=32),
             DataLoader(TensorDataset(query, query_labels), batch_size=8)], (bank, bank_labels, query, query_labels))


def tiny_trainer(callback: KNNEvaluation, **kwargs) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=[callback], **kwargs)


def test_callback_logs_the_knn_accuracy_of_the_validation_features():
    val_loaders, (bank, bank_labels, query, query_labels) = loaders()
    knn = KNNEvaluation(k=20, temperature=0.1, chunk_size=4)
    trainer = tiny_trainer(knn)
    trainer.validate(FixedFeatures(), dataloaders=val_loaders, verbose=False)
    assert knn.protocol == {"k": 12, "temperature": 0.1, "bank": 120, "queries": 30}  # 120 images, 10 classes
    expected = reference_scores(query, bank, bank_labels, k=12, t=0.1)
    truth = query_labels.numpy()
    rank = (expected > expected[np.arange(len(truth)), truth][:, None]).sum(axis=1)
    assert float(trainer.callback_metrics["knn/top1"]) == pytest.approx((rank < 1).mean(), abs=1e-6)
    assert float(trainer.callback_metrics["knn/top5"]) == pytest.approx((rank < 5).mean(), abs=1e-6)
    assert knn.history == [(-1, pytest.approx((rank < 1).mean()), pytest.approx((rank < 5).mean()), 0)]
    # the features are the inputs here, so the raw-pixel baseline, same k, bank and queries, is the same figure
    assert knn.pixel_baseline.top1 == pytest.approx((rank < 1).mean())


def test_capped_k_is_at_most_the_average_class_size_of_the_bank():
    assert capped_k(200, bank_size=322, num_classes=7) == 46  # the real-folder trial's bank: k=200 was most of it
    assert capped_k(200, bank_size=5000, num_classes=10) == 200 and capped_k(5, bank_size=3, num_classes=7) == 1


def test_a_max_steps_stop_mid_epoch_is_measured_at_its_last_step():
    """4 batches per epoch, max_steps 6: the last kNN figure was that of step 4, older than the final weights."""
    val_loaders, _ = loaders()
    train = DataLoader(TensorDataset(torch.zeros(16, 1)), batch_size=4)
    knn = KNNEvaluation(k=20)
    tiny_trainer(knn, max_epochs=5, max_steps=6).fit(FixedFeatures(), train_dataloaders=train,
                                                     val_dataloaders=val_loaders)
    assert [(entry.epoch, entry.step) for entry in knn.history] == [(0, 4), (1, 6)]


def test_every_n_epochs_computes_on_every_nth_and_the_last_epoch():
    val_loaders, _ = loaders()
    train = DataLoader(TensorDataset(torch.zeros(4, 1)), batch_size=4)
    knn = KNNEvaluation(k=20, every_n_epochs=2)
    trainer = tiny_trainer(knn, max_epochs=5)
    trainer.fit(FixedFeatures(), train_dataloaders=train, val_dataloaders=val_loaders)
    assert [epoch for epoch, *_ in knn.history] == [1, 3, 4]  # 0-based: 2nd, 4th and the last (5th)
    trainer.validate(FixedFeatures(), dataloaders=val_loaders, verbose=False)
    assert knn.history[-1][0] == -1  # trainer.validate always computes
    with pytest.raises(ValueError, match="every_n_epochs"):
        KNNEvaluation(every_n_epochs=0)


def test_validation_features_keep_the_first_rows_up_to_the_limit():
    collected = ValidationFeatures({0: 5}, cpu=True)
    for start in (0, 3, 6):
        collected.add({"features": torch.arange(start, start + 3.0).view(3, 1), "labels": torch.arange(3)}, 0)
    collected.add({"loss": torch.tensor(1.0)}, 1)  # not features: ignored
    features, labels = collected.take(0)
    assert features.flatten().tolist() == [0, 1, 2, 3, 4] and labels.tolist() == [0, 1, 2, 0, 1]
    empty, empty_labels = collected.take(1)
    assert empty.shape == (0, 0) and empty_labels.shape == (0,) and empty_labels.dtype == torch.long


# --------------------------------------------------------------------------- two gloo ranks

ROWS = {0: (7, 5), 1: (2, 0)}  # (bank rows, query rows) per rank: unequal, and rank 1 has no queries


def rank_data(rank: int) -> tuple[torch.Tensor, ...]:
    bank, bank_labels = blobs(sum(r[0] for r in ROWS.values()), seed=5)
    query, query_labels = blobs(sum(r[1] for r in ROWS.values()), seed=6)
    b0, q0 = ROWS[0]
    bank_part = slice(0, b0) if rank == 0 else slice(b0, None)
    query_part = slice(0, q0) if rank == 0 else slice(q0, None)
    return bank[bank_part], bank_labels[bank_part], query[query_part], query_labels[query_part]


def rank_result(rank: int, world_size: int) -> dict:
    bank, bank_labels, query, query_labels = rank_data(rank)
    logged: dict[str, float] = {}
    module = SimpleNamespace(device=torch.device("cpu"), log=lambda name, value, **_: logged.update({name: value}))
    trainer = SimpleNamespace(sanity_checking=False, state=SimpleNamespace(fn="validate"), current_epoch=0,
                              global_step=0)
    knn = KNNEvaluation(k=4, temperature=0.1)
    knn.on_validation_epoch_start(trainer, module)
    knn.on_validation_batch_end(trainer, module, {"features": bank, "labels": bank_labels}, None, 0, 0)
    if len(query):
        knn.on_validation_batch_end(trainer, module, {"features": query, "labels": query_labels}, None, 0, 1)
    knn.on_validation_epoch_end(trainer, module)
    gathered = gather_rows(torch.empty(0, 0) if rank == 1 else torch.ones(3, 2))
    return {"logged": logged, "gathered": gathered}


def test_two_ranks_with_unequal_features_match_one_process(tmp_path):
    results = run_gloo_ranks(rank_result, 2, tmp_path)
    bank, bank_labels, query, query_labels = (torch.cat(parts) for parts in zip(rank_data(0), rank_data(1)))
    k = capped_k(4, len(bank), len(bank_labels.unique()))
    expected = topk_accuracy(weighted_knn_scores(query, bank, bank_labels, NUM_CLASSES, k=k), query_labels)
    for result in results:
        assert result["logged"] == pytest.approx({"knn/top1": expected[1], "knn/top5": expected[5]})
        assert torch.equal(result["gathered"], torch.ones(3, 2))  # rank 1's empty (0, 0) takes rank 0's width
