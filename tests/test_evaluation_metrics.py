"""Evaluation metrics against independent references: float64 loops, hand-worked cases and sklearn."""

import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score, roc_curve
from torchmetrics.functional.classification import binary_auroc, binary_eer

from ssl_siamese.evaluation.fewshot import fewshot_episodes
from ssl_siamese.evaluation.linear import fit_linear_probe, weight_decay_sweep
from ssl_siamese.evaluation.retrieval import pair_scores, recall_at_k, verification_roc


def blobs(n_per_class, num_classes, dim, spread, seed=0, draw=0):
    """Gaussian clusters around random unit centres (fixed by ``seed``); ``spread`` is the noise std.

    Different ``draw`` values give independent samples of the same clusters (train and test splits).
    """
    centres = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(seed))
    centres = torch.nn.functional.normalize(centres, dim=1)
    g = torch.Generator().manual_seed(seed * 1000 + draw + 1)
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    features = centres[labels] + spread * torch.randn(len(labels), dim, generator=g)
    order = torch.randperm(len(labels), generator=g)
    return features[order], labels[order]


# ---------------------------------------------------------------- retrieval


def brute_force_recall(query, query_labels, gallery, gallery_labels, ks, leave_one_out):
    q = query.double().numpy()
    g = gallery.double().numpy()
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    recalled = {k: 0 for k in ks}
    for i in range(len(q)):
        similarity = [(float(q[i] @ g[j]), j) for j in range(len(g)) if not (leave_one_out and j == i)]
        ranked = [j for _, j in sorted(similarity, reverse=True)]
        for k in ks:
            recalled[k] += any(int(gallery_labels[j]) == int(query_labels[i]) for j in ranked[:k])
    return {k: recalled[k] / len(q) for k in ks}


def test_recall_at_k_matches_brute_force_with_gallery():
    query, query_labels = blobs(12, 8, 16, spread=0.6, seed=1)
    gallery, gallery_labels = blobs(15, 8, 16, spread=0.6, seed=1, draw=1)
    ks = (1, 2, 5, 10, 500)
    got = recall_at_k(query, query_labels, gallery, gallery_labels, ks=ks, chunk_size=7)
    expected = brute_force_recall(query, query_labels, gallery, gallery_labels, ks, leave_one_out=False)
    assert got == pytest.approx(expected, abs=1e-9)
    assert 0 < got[1] < got[5] < 1 and got[500] == 1.0


def test_recall_at_k_leave_one_out_matches_brute_force():
    features, labels = blobs(10, 10, 16, spread=0.7, seed=2)
    ks = (1, 4, 8)
    got = recall_at_k(features, labels, ks=ks, chunk_size=13)
    expected = brute_force_recall(features, labels, features, labels, ks, leave_one_out=True)
    assert got == pytest.approx(expected, abs=1e-9)
    assert 0 < got[1] < 1


def test_recall_leave_one_out_excludes_self():
    features = torch.randn(50, 8, generator=torch.Generator().manual_seed(3))
    unique = torch.arange(50)
    assert recall_at_k(features, unique, ks=(1, 10, 100)) == {1: 0.0, 10: 0.0, 100: 0.0}
    # with the items as a separate gallery each query finds itself first
    assert recall_at_k(features, unique, features, unique, ks=(1,))[1] == 1.0


# ---------------------------------------------------------------- verification


def test_pair_scores_is_rowwise_cosine():
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(20, 6, generator=g), torch.randn(20, 6, generator=g)
    expected = [float(a[i].double() @ b[i].double() / (a[i].double().norm() * b[i].double().norm()))
                for i in range(20)]
    assert pair_scores(a, b).tolist() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("decimals", [None, 1])  # 1 decimal: many tied scores
def test_verification_roc_matches_sklearn(decimals):
    g = torch.Generator().manual_seed(5)
    same = torch.rand(400, generator=g) < 0.4
    scores = same.float() * 0.8 + torch.randn(400, generator=g)
    if decimals is not None:
        scores = scores.round(decimals=decimals)
    result = verification_roc(scores, same)
    fpr, tpr, thresholds = roc_curve(same.numpy(), scores.double().numpy(), drop_intermediate=False)
    np.testing.assert_allclose(result.fpr.numpy(), fpr, atol=1e-12)
    np.testing.assert_allclose(result.tpr.numpy(), tpr, atol=1e-12)
    np.testing.assert_allclose(result.thresholds.numpy()[1:], thresholds[1:], atol=1e-12)
    assert result.thresholds[0] == math.inf
    assert result.auc == pytest.approx(roc_auc_score(same.numpy(), scores.double().numpy()), abs=1e-12)
    # the EER point: false positive rate equals false negative rate there
    assert 0.2 < result.eer < 0.5
    # torchmetrics (on scores mapped into [0, 1], which it does not pass through a sigmoid) agrees; its EER
    # is the ROC point nearest the crossing, ours interpolates the crossing: they differ by at most one step
    unit = (scores - scores.min()) / (scores.max() - scores.min())
    assert result.auc == pytest.approx(binary_auroc(unit, same.long()).item(), abs=1e-6)
    assert abs(result.eer - binary_eer(unit, same.long()).item()) <= 1 / min(same.sum(), (~same).sum())


def test_eer_hand_worked():
    # ROC points (fpr, fnr): inf (0, 1), 0.9 (1/2, 1), 0.8 (1/2, 0), 0.7 (1, 0): the crossing lies halfway
    # between the 0.9 and 0.8 points, where fpr = fnr = 1/2 and the threshold is 0.85.
    result = verification_roc(torch.tensor([0.9, 0.8, 0.7]), torch.tensor([False, True, False]))
    assert result.eer == pytest.approx(0.5) and result.eer_threshold == pytest.approx(0.85)
    assert result.auc == pytest.approx(0.5)
    # (fpr, fnr) at 0.7 is exactly (1/3, 1/3)
    result = verification_roc(torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4]),
                              torch.tensor([True, True, False, True, False, False]))
    assert result.eer == pytest.approx(1 / 3) and result.eer_threshold == pytest.approx(0.7)
    assert result.auc == pytest.approx(8 / 9)


def test_eer_zero_when_perfectly_separated():
    same = torch.tensor([True] * 5 + [False] * 7)
    scores = torch.cat([torch.linspace(0.6, 0.9, 5), torch.linspace(-0.5, 0.4, 7)])
    result = verification_roc(scores, same)
    assert result.eer == 0.0 and result.auc == 1.0
    assert result.eer_threshold == pytest.approx(0.6)  # the lowest same-pair score
    with pytest.raises(ValueError, match="both"):
        verification_roc(scores, torch.ones(12, dtype=torch.bool))


# ---------------------------------------------------------------- few-shot


def test_fewshot_perfect_separation_gives_accuracy_one():
    features, labels = blobs(20, 12, 32, spread=0.05, seed=6)
    result = fewshot_episodes(features, labels, n_way=5, k_shot=1, n_query=15, episodes=50)
    assert result.mean == 1.0 and result.ci95 == 0.0
    assert result.accuracies.shape == (50,)


def test_fewshot_random_features_near_chance():
    g = torch.Generator().manual_seed(7)
    features, labels = torch.randn(1000, 32, generator=g), torch.arange(20).repeat(50)
    result = fewshot_episodes(features, labels, n_way=5, k_shot=5, n_query=15, episodes=200, seed=1)
    assert abs(result.mean - 1 / 5) < 0.03
    expected_ci = 1.96 * result.accuracies.double().std(correction=0).item() / math.sqrt(200)
    assert result.ci95 == pytest.approx(expected_ci) and result.ci95 > 0


def test_fewshot_episode_brute_force():
    features, labels = blobs(25, 10, 8, spread=0.9, seed=8)
    n_way, k_shot, n_query = 4, 3, 5
    result = fewshot_episodes(features, labels, n_way=n_way, k_shot=k_shot, n_query=n_query, episodes=20)
    assert 0.3 < result.mean < 1.0
    for episode in (0, 13):
        support, query = result.support_indices[episode], result.query_indices[episode]
        assert support.shape == (n_way, k_shot) and query.shape == (n_way, n_query)
        rows = torch.cat([support, query], dim=1)
        assert len(set(rows.flatten().tolist())) == n_way * (k_shot + n_query)  # no sample drawn twice
        classes = [set(labels[row].tolist()) for row in rows]
        assert all(len(c) == 1 for c in classes) and len(set.union(*classes)) == n_way
        x = features.double().numpy()
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        prototypes = []
        for row in support.tolist():
            p = sum(x[i] for i in row) / k_shot
            prototypes.append(p / np.linalg.norm(p))
        correct = 0
        for true_class, row in enumerate(query.tolist()):
            for i in row:
                correct += int(np.argmax([x[i] @ p for p in prototypes])) == true_class
        assert result.accuracies[episode].item() == pytest.approx(correct / (n_way * n_query))


def test_fewshot_is_deterministic_and_checks_class_counts():
    features, labels = blobs(20, 8, 8, spread=0.8, seed=9)
    a = fewshot_episodes(features, labels, episodes=10, seed=3)
    b = fewshot_episodes(features, labels, episodes=10, seed=3)
    assert torch.equal(a.accuracies, b.accuracies) and torch.equal(a.query_indices, b.query_indices)
    with pytest.raises(ValueError, match="only 0 of 8 classes"):
        fewshot_episodes(features, labels, n_way=5, k_shot=5, n_query=16)
    short = labels.clone()
    short[labels < 6] = -1  # classes 6 and 7 stay; 0-5 become unlabelled rows, never drawn
    with pytest.raises(ValueError, match="only 2 of 2 classes"):
        fewshot_episodes(features, short, n_way=5)
    result = fewshot_episodes(features, short, n_way=2, k_shot=1, n_query=5, episodes=10)
    drawn = torch.cat([result.support_indices.flatten(), result.query_indices.flatten()])
    assert (short[drawn] >= 0).all()


# ---------------------------------------------------------------- linear probe


def test_linear_probe_separable_reaches_100_percent():
    train_x, train_y = blobs(40, 10, 16, spread=0.05, seed=10)
    test_x, test_y = blobs(20, 10, 16, spread=0.05, seed=10, draw=1)
    result = fit_linear_probe(train_x, train_y, test_x, test_y, epochs=30, batch_size=128)
    assert result.top1 == 1.0 and result.top5 == 1.0
    assert torch.equal(result.confusion, torch.diag(torch.bincount(test_y, minlength=10)))
    # the classifier takes raw features: its predictions give the same accuracy
    assert (result.classifier(test_x).argmax(1) == test_y).all()


def test_linear_probe_random_labels_stays_near_chance():
    g = torch.Generator().manual_seed(11)
    train_x, train_y = torch.randn(500, 32, generator=g), torch.randint(0, 10, (500,), generator=g)
    test_x, test_y = torch.randn(1000, 32, generator=g), torch.randint(0, 10, (1000,), generator=g)
    result = fit_linear_probe(train_x, train_y, test_x, test_y, epochs=20, batch_size=128)
    assert abs(result.top1 - 0.1) < 0.05
    assert abs(result.top5 - 0.5) < 0.07


def test_linear_probe_confusion_and_top5():
    train_x, train_y = blobs(60, 8, 12, spread=0.5, seed=12)
    test_x, test_y = blobs(40, 8, 12, spread=0.5, seed=12, draw=1)
    result = fit_linear_probe(train_x, train_y, test_x, test_y, epochs=20, batch_size=64)
    assert result.confusion.shape == (8, 8) and result.confusion.sum() == len(test_y)
    assert result.confusion.sum(dim=1).tolist() == torch.bincount(test_y, minlength=8).tolist()
    assert (result.confusion.trace() / result.confusion.sum()).item() == pytest.approx(result.top1)
    assert result.top5 >= result.top1 and 0.2 < result.top1 < 1.0
    again = fit_linear_probe(train_x, train_y, test_x, test_y, epochs=20, batch_size=64)
    assert torch.equal(again.classifier.weight, result.classifier.weight)  # deterministic under the seed


def test_linear_probe_agrees_with_sklearn_logistic_regression():
    train_x, train_y = blobs(200, 4, 10, spread=0.45, seed=14)
    test_x, test_y = blobs(200, 4, 10, spread=0.45, seed=14, draw=1)
    result = fit_linear_probe(train_x, train_y, test_x, test_y, epochs=50, batch_size=128)
    mean, std = train_x.mean(0), train_x.std(0, correction=0)
    reference = LogisticRegression(max_iter=2000).fit(((train_x - mean) / std).numpy(), train_y.numpy())
    sklearn_top1 = reference.score(((test_x - mean) / std).numpy(), test_y.numpy())
    assert 0.6 < sklearn_top1 < 0.99
    assert result.top1 == pytest.approx(sklearn_top1, abs=0.03)


def test_weight_decay_sweep_picks_from_validation_and_refits():
    train_x, train_y = blobs(50, 5, 10, spread=0.5, seed=16)
    test_x, test_y = blobs(30, 5, 10, spread=0.5, seed=16, draw=1)
    sweep = weight_decay_sweep(train_x, train_y, test_x, test_y, weight_decays=(0.0, 1e-3, 10.0),
                               epochs=10, batch_size=64)
    assert set(sweep.validation_top1) == {0.0, 1e-3, 10.0}
    assert sweep.validation_top1[sweep.best_weight_decay] == max(sweep.validation_top1.values())
    refit = fit_linear_probe(train_x, train_y, test_x, test_y, weight_decay=sweep.best_weight_decay,
                             epochs=10, batch_size=64)
    assert sweep.result.top1 == refit.top1 and torch.equal(sweep.result.confusion, refit.confusion)
