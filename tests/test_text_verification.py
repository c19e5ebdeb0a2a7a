"""Verification ROC/EER of labelled text pairs: the labels, the AUC against sklearn, and the text_siamese
recipe on a scored pair file (verification before and after training, ROC picture)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from ssl_siamese.text.hashed_bag import HashedBagEncoder
from ssl_siamese.text.pairs import TextPair
from ssl_siamese.text.verification import labelled_pairs, verify


def test_labels_from_scores_or_hard_negatives():
    scored = [TextPair("a", "b", score=0.9), TextPair("c", "d", score=0.5), TextPair("e", "f", score=1.0)]
    a, b, same = labelled_pairs(scored)
    assert (a, b, same.tolist()) == (["a", "c", "e"], ["b", "d", "f"], [True, False, True])
    a, b, same = labelled_pairs([TextPair("q", "p", negative="n"), TextPair("r", "s", negative="t")])
    assert (a, b, same.tolist()) == (["q", "r", "q", "r"], ["p", "s", "n", "t"], [True, True, False, False])
    assert labelled_pairs([TextPair("a", "b")]) is None
    assert labelled_pairs([TextPair("a", "b", score=1.0)]) is None  # one kind only: no ROC


def test_verification_auc_equals_sklearn_on_the_cosine_in_float64():
    torch.manual_seed(0)
    encoder = HashedBagEncoder(dim=16, buckets=2048)
    rng = random.Random(0)
    words = [f"w{i}" for i in range(50)]
    pairs = []
    for i in range(60):
        query = rng.sample(words, 4)
        positive = query[:3] + rng.sample(words, 2) if i % 2 else rng.sample(words, 5)
        pairs.append(TextPair(" ".join(query), " ".join(positive), score=float(i % 2)))
    labelled = labelled_pairs(pairs)
    roc = verify(encoder, labelled)
    ea, eb = encoder.encode(labelled[0]).double(), encoder.encode(labelled[1]).double()
    cosine = ((ea * eb).sum(1) / (ea.norm(dim=1) * eb.norm(dim=1))).numpy()
    assert roc.auc == pytest.approx(roc_auc_score(labelled[2].numpy(), cosine), abs=1e-6)
    assert 0.0 <= roc.eer <= 0.5


def test_recipe_reports_verification_before_and_after_training(tmp_path):
    from ssl_siamese.recipes import text_siamese

    rng = random.Random(0)
    words = [f"word{i}" for i in range(300)]
    records = []
    for i in range(480):
        query = rng.sample(words, 5)
        same = i % 2 == 0
        positive = rng.sample(query, 3) + rng.sample(words, 3) if same else rng.sample(words, 6)
        records.append({"query": " ".join(query), "positive": " ".join(positive), "score": float(same),
                        "group": f"g{i}"})
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in records))
    out = tmp_path / "run"
    results = text_siamese.main(["--data.source", str(data), "--data.test_fraction", "0.3", "--data.batch_size", "32",
                                 "--model.encoder", "hashed", "--model.dim", "32", "--model.buckets", "4096",
                                 "--model.loss", "cosine", "--model.lr", "0.05", "--trainer.max_epochs", "2",
                                 "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
                                 "--trainer.enable_checkpointing", "false", "--log_to", "csv", "--out", str(out)])
    verification = results["verification"]
    assert set(verification) == {"dense_at_init", "dense"}
    assert verification["dense"]["auc"] > 0.9 and verification["dense"]["eer"] < 0.2
    assert (out / "eval_roc.png").is_file()
    saved = json.loads((out / "results.json").read_text())
    assert np.isclose(saved["verification"]["dense"]["auc"], verification["dense"]["auc"])
