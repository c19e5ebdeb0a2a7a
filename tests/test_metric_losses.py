"""Metric losses and samplers against brute-force float64 references written with explicit loops."""

import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from ssl_siamese.losses.metric import ContrastiveLoss, TripletLoss, pairwise_distance_matrix
from ssl_siamese.data.samplers import PKBatchSampler, assert_no_class_overlap, balanced_pairs, class_disjoint_split

# Class 3 has one sample: it is a negative for others but never an anchor.
LABELS = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 3])


def reference_distance(x, i, j, metric):
    a, b = x[i].tolist(), x[j].tolist()
    if metric == "euclidean":
        return math.sqrt(sum((u - v) ** 2 for u, v in zip(a, b)))
    dot = sum(u * v for u, v in zip(a, b))
    return 1.0 - dot / (math.sqrt(sum(u * u for u in a)) * math.sqrt(sum(v * v for v in b)))


def reference_triplets(x, labels, margin, metric, mining):
    """Loops over all (a, p, n); returns (loss, chosen triplets, semi-hard fallback count)."""
    labels = labels.tolist()
    n = len(labels)
    d = [[reference_distance(x, i, j, metric) for j in range(n)] for i in range(n)]
    chosen, fallbacks = [], 0
    for a in range(n):
        positives = [p for p in range(n) if p != a and labels[p] == labels[a]]
        negatives = [q for q in range(n) if labels[q] != labels[a]]
        if not positives or not negatives:
            continue
        if mining == "batch_hard":
            p = max(positives, key=lambda j: d[a][j])
            chosen.append((a, p, min(negatives, key=lambda j: d[a][j])))
        elif mining == "semi_hard":
            for p in positives:
                farther = [q for q in negatives if d[a][q] > d[a][p]]
                if farther:
                    chosen.append((a, p, min(farther, key=lambda j: d[a][j])))
                else:
                    fallbacks += 1
                    chosen.append((a, p, max(negatives, key=lambda j: d[a][j])))
        else:
            chosen += [(a, p, q) for p in positives for q in negatives]
    losses = [max(d[a][p] - d[a][q] + margin, 0.0) for a, p, q in chosen]
    if mining == "batch_all":
        active = [value for value in losses if value > 0]
        return (sum(active) / len(active) if active else 0.0), chosen, fallbacks
    return (sum(losses) / len(losses) if losses else 0.0), chosen, fallbacks


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_distance_matrix_matches_reference(metric):
    x = torch.randn(7, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    distances = pairwise_distance_matrix(x, metric)
    expected = torch.tensor([[reference_distance(x, i, j, metric) for j in range(7)] for i in range(7)],
                            dtype=torch.float64)
    assert torch.allclose(distances, expected, atol=1e-10)
    assert (distances.diagonal() == 0).all()


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("mining", ["batch_hard", "semi_hard", "batch_all"])
def test_triplet_loss_and_mining_match_brute_force(mining, metric):
    margin = 0.3 if metric == "euclidean" else 0.1
    loss_fn = TripletLoss(margin=margin, metric=metric, mining=mining)
    total_fallbacks = 0
    for seed in range(4):
        x = torch.randn(12, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        expected_loss, expected_triplets, fallbacks = reference_triplets(x, LABELS, margin, metric, mining)
        total_fallbacks += fallbacks
        loss = loss_fn(x, LABELS)
        assert loss.item() == pytest.approx(expected_loss, abs=1e-9)
        triplets = loss_fn.mine(pairwise_distance_matrix(x, metric), LABELS)
        assert sorted(zip(*(t.tolist() for t in triplets))) == sorted(expected_triplets)
        assert all(a != 11 for a, _, _ in expected_triplets)  # the singleton class never anchors
    if mining == "semi_hard":
        assert total_fallbacks > 0  # the fallback branch was exercised


def test_contrastive_loss_hand_computed():
    x0 = torch.zeros(2, 2)
    x1 = torch.tensor([[3.0, 4.0], [0.6, 0.8]])
    # d = 5 (same: 25) and d = 1 (different, margin 2: (2 - 1)^2 = 1) -> mean 13.
    assert ContrastiveLoss(margin=2.0)(x0, x1, torch.tensor([1, 0])).item() == pytest.approx(13.0)
    assert ContrastiveLoss(margin=2.0)(x0, x1, torch.tensor([True, False])).item() == pytest.approx(13.0)
    # A different pair beyond the margin costs nothing: d = 5 > 2.
    assert ContrastiveLoss(margin=2.0)(x0, x1, torch.tensor([0, 1])).item() == pytest.approx(1.0 / 2)
    # Cosine: d = 1 (orthogonal, same: 1) and d = 0 (different, margin 0.5: 0.25) -> mean 0.625.
    a, b = torch.tensor([[1.0, 0.0], [2.0, 0.0]]), torch.tensor([[0.0, 3.0], [1.0, 0.0]])
    loss = ContrastiveLoss(margin=0.5, metric="cosine")(a, b, torch.tensor([1, 0]))
    assert loss.item() == pytest.approx(0.625)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("mining", ["batch_hard", "semi_hard", "batch_all"])
def test_gradient_pulls_positive_and_pushes_negative(mining, metric):
    # Unit vectors: the positive 60 degrees away in the xy-plane, the negative 40 degrees away in xz.
    a60, a40 = math.radians(60), math.radians(40)
    anchor = [1.0, 0.0, 0.0]
    positive, negative = [math.cos(a60), math.sin(a60), 0.0], [math.cos(a40), 0.0, math.sin(a40)]
    x = torch.tensor([anchor, positive, negative], requires_grad=True)
    labels = torch.tensor([0, 0, 1])
    loss = TripletLoss(margin=0.5, metric=metric, mining=mining)(x, labels)
    assert loss.item() > 0
    loss.backward()
    # Point 1 is also an anchor (with positive 0), so step the anchor alone: 0.01 of SGD on row 0.
    step = torch.zeros_like(x)
    step[0] = 0.01 * x.grad[0]
    before = pairwise_distance_matrix(x.detach(), metric)
    after = pairwise_distance_matrix(x.detach() - step, metric)
    assert after[0, 1] < before[0, 1]  # anchor pulled toward the positive
    assert after[0, 2] > before[0, 2]  # and pushed away from the negative


@pytest.mark.parametrize("mining", ["batch_hard", "semi_hard", "batch_all"])
def test_float32_gradient_matches_float64_for_near_points(mining):
    # Unit-norm embeddings about 1e-3 apart: from the Gram matrix, float32 keeps only a digit or two of
    # these distances and the gradient was off by 15-100%; from the differences it agrees to ~1e-7.
    labels = torch.arange(4).repeat_interleave(3)
    for seed in range(3):
        generator = torch.Generator().manual_seed(seed)
        centre = F.normalize(torch.randn(1, 64, dtype=torch.float64, generator=generator))
        points = (centre + 1e-4 * torch.randn(12, 64, dtype=torch.float64, generator=generator)).float()
        gradients = []
        for x in (points, points.double()):  # the same points in both precisions
            x = x.clone().requires_grad_(True)
            TripletLoss(margin=1e-3, mining=mining)(x, labels).backward()
            gradients.append(x.grad.double())
        error = (gradients[0] - gradients[1]).norm() / gradients[1].norm()
        assert gradients[1].norm() > 0 and error < 1e-4, (seed, error.item())


def test_euclidean_distance_matrix_near_points_and_coincident_points():
    x = torch.tensor([[1.0, 1.0], [1.0 + 1e-4, 1.0], [1.0, 1.0]], requires_grad=True)
    distances = pairwise_distance_matrix(x)
    assert distances[0, 1].item() == pytest.approx(1e-4, rel=1e-3)  # the Gram matrix gave 0 here
    assert distances[0, 2].item() == 0.0 and (distances.diagonal() == 0).all()
    distances.sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_contrastive_gradient_pulls_positives_and_pushes_negatives_inside_the_margin(metric):
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 4, dtype=torch.float64, generator=generator)
    x1 = x0 + 0.3 * torch.randn(6, 4, dtype=torch.float64, generator=generator)
    x1[5] = -10.0 * x0[5]  # far apart: beyond the margin for both metrics (cosine distance 2 > 1.5)
    same = torch.tensor([1, 1, 1, 0, 0, 0])
    margin = 10.0 if metric == "euclidean" else 1.5
    x0.requires_grad_(True)
    x1.requires_grad_(True)
    loss_fn = ContrastiveLoss(margin=margin, metric=metric)
    loss_fn(x0, x1, same).backward()
    before = paired(x0.detach(), x1.detach(), metric)
    assert (before[3:5] < margin).all() and before[5] >= margin
    after = paired(x0.detach() - 1e-3 * x0.grad, x1.detach() - 1e-3 * x1.grad, metric)
    assert (after[:3] < before[:3]).all()   # positives pulled together
    assert (after[3:5] > before[3:5]).all()  # negatives inside the margin pushed apart
    assert x0.grad[5].abs().max() == 0 and x1.grad[5].abs().max() == 0  # beyond the margin: no gradient


def paired(x0, x1, metric):
    return torch.tensor([reference_distance(torch.stack([a, b]), 0, 1, metric) for a, b in zip(x0, x1)],
                        dtype=torch.float64)


@pytest.mark.parametrize("mining", ["batch_hard", "semi_hard", "batch_all"])
@pytest.mark.parametrize("labels", [[0, 0, 0, 0], [0, 1, 2, 3]], ids=["no-negative", "no-positive"])
def test_batches_without_triplets_give_zero_loss_with_grad(mining, labels):
    x = torch.randn(4, 8, requires_grad=True)
    loss = TripletLoss(mining=mining)(x, torch.tensor(labels))
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("mining", ["batch_hard", "semi_hard", "batch_all"])
def test_satisfied_batch_and_coincident_points_stay_finite(mining):
    # Two tight clusters far apart: every triplet meets the margin; duplicated rows have distance 0.
    base = torch.tensor([[0.0, 0.0], [0.0, 0.0], [10.0, 0.0], [10.0, 0.0]])
    x = base.clone().requires_grad_(True)
    loss = TripletLoss(margin=0.2, mining=mining)(x, torch.tensor([0, 0, 1, 1]))
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert torch.isfinite(x.grad).all()
    x = base.clone().requires_grad_(True)  # now the duplicates carry a positive loss
    loss = TripletLoss(margin=20.0, mining=mining)(x, torch.tensor([0, 0, 1, 1]))
    loss.backward()
    assert loss.item() > 0 and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_contrastive_identical_pair_has_finite_grad(metric):
    x0 = torch.tensor([[1.0, 2.0], [0.5, -1.0]], requires_grad=True)
    x1 = torch.tensor([[1.0, 2.0], [0.5, -1.0]], requires_grad=True)
    loss = ContrastiveLoss(margin=1.0, metric=metric)(x0, x1, torch.tensor([1, 0]))
    assert loss.item() == pytest.approx(0.5)  # same pair at d = 0 costs 0, different pair (1 - 0)^2 / 2
    loss.backward()
    assert torch.isfinite(x0.grad).all() and torch.isfinite(x1.grad).all()


def test_bad_input_raises_with_choices():
    with pytest.raises(ValueError, match="batch_hard, semi_hard, batch_all"):
        TripletLoss(mining="hardest")
    with pytest.raises(ValueError, match="euclidean, cosine"):
        TripletLoss(metric="manhattan")
    with pytest.raises(ValueError, match="euclidean, cosine"):
        ContrastiveLoss(metric="dot")
    with pytest.raises(ValueError, match="euclidean, cosine"):
        pairwise_distance_matrix(torch.randn(3, 2), metric="l1")
    with pytest.raises(ValueError):
        TripletLoss()(torch.randn(4, 8), torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError):
        ContrastiveLoss()(torch.randn(4, 8), torch.randn(3, 8), torch.ones(4))
    with pytest.raises(ValueError):
        ContrastiveLoss()(torch.randn(4, 8), torch.randn(4, 8), torch.ones(3))


# Samplers ---------------------------------------------------------------------------------------------

def imbalanced_labels(sizes):
    return [c for c, size in enumerate(sizes) for _ in range(size)]


def test_pk_batches_have_p_classes_of_k_samples():
    labels = imbalanced_labels([50, 30, 10, 3, 2, 1])  # class 5 is a singleton, classes 3-4 have < k
    sampler = PKBatchSampler(labels, p=3, k=4, num_batches=200)
    assert len(sampler) == 200 and len(list(sampler)) == 200
    seen = set()
    for batch in sampler:
        counts = Counter(labels[i] for i in batch)
        assert len(batch) == 12 and len(counts) == 3 and set(counts.values()) == {4}
        seen |= counts.keys()
        for c in counts:  # classes with >= k samples give k distinct ones; smaller ones give all of theirs
            distinct = {i for i in batch if labels[i] == c}
            assert len(distinct) == min(4, labels.count(c))
    assert seen == {0, 1, 2, 3, 4}
    assert len(PKBatchSampler(labels, p=2, k=4)) == len(labels) // 8


def test_pk_sampler_is_deterministic_per_epoch():
    labels = imbalanced_labels([20, 15, 10, 8, 6])
    sampler = PKBatchSampler(labels, p=3, k=2, seed=7)
    sampler.set_epoch(1)
    first = list(sampler)
    again = PKBatchSampler(labels, p=3, k=2, seed=7)
    again.set_epoch(1)
    assert list(again) == first and list(sampler) == first
    sampler.set_epoch(2)
    assert list(sampler) != first


def test_pk_sampler_shards_one_draw_over_ranks():
    labels = imbalanced_labels([20, 15, 10, 8, 6])
    single = PKBatchSampler(labels, p=3, k=2, seed=7, num_batches=10)
    ranks = [PKBatchSampler(labels, p=3, k=2, seed=7, num_batches=5, rank=r, world_size=2) for r in range(2)]
    for sampler in (single, *ranks):
        sampler.set_epoch(3)
    batches = [list(sampler) for sampler in ranks]
    assert len(batches[0]) == len(batches[1]) == 5
    assert list(single) == [batch for pair in zip(*batches) for batch in pair], "rank r takes batches r, r+2, ..."
    assert batches[0] != batches[1]
    default = [len(PKBatchSampler(labels, p=3, k=2, rank=r, world_size=2)) for r in range(2)]
    assert default == [len(labels) // 12] * 2, "one pass over the data per epoch, split over the ranks"
    with pytest.raises(ValueError, match="rank"):
        PKBatchSampler(labels, p=3, k=2, rank=2, world_size=2)


def test_pk_sampler_picks_classes_uniformly_under_imbalance():
    sizes = [200, 100, 20, 5, 3]
    labels = imbalanced_labels(sizes)
    num_batches, p = 2000, 2
    for balanced in (True, False):
        sampler = PKBatchSampler(labels, p=p, k=2, num_batches=num_batches, class_balanced=balanced)
        counts = Counter(c for batch in sampler for c in {labels[i] for i in batch})
        expected = num_batches * p / len(sizes)
        chi_square = sum((counts[c] - expected) ** 2 / expected for c in range(len(sizes)))
        if balanced:
            assert chi_square < 20  # df = 4; p-value about 5e-4 under uniform choice
        else:
            assert counts[0] > 3 * counts[4]  # proportional choice favours the big class


def test_pk_sampler_rejects_too_few_classes():
    with pytest.raises(ValueError, match="p=3"):
        PKBatchSampler([0, 0, 1, 1, 2], p=3, k=2)


def test_balanced_pairs_are_half_positive_and_class_balanced():
    labels = imbalanced_labels([40, 20, 6, 2])
    i, j, same = balanced_pairs(torch.tensor(labels), num_pairs=400, seed=1)
    assert len(i) == len(j) == len(same) == 400 and int(same.sum()) == 200
    lab = torch.tensor(labels)
    assert (lab[i] == lab[j]).tolist() == same.tolist()
    assert (i[same] != j[same]).all()
    positive_classes = Counter(lab[i[same]].tolist())
    assert max(positive_classes.values()) - min(positive_classes.values()) <= 1 and len(positive_classes) == 4
    assert torch.equal(balanced_pairs(labels, 400, seed=1)[0], i)


def test_balanced_pairs_with_a_chosen_number_of_positives():
    i, j, same = balanced_pairs(torch.arange(6), num_pairs=10, num_positive=0)  # every image its own class
    assert not same.any() and (i != j).all()
    i, j, same = balanced_pairs([4, 4, 4], num_pairs=5, num_positive=5)  # one class: positives only
    assert same.all() and (i != j).all()
    lab = torch.tensor(imbalanced_labels([5, 3, 2]))
    i, j, same = balanced_pairs(lab, num_pairs=12, num_positive=3)
    assert int(same.sum()) == 3 and (lab[i] == lab[j]).tolist() == same.tolist()
    with pytest.raises(ValueError, match="num_positive=0"):
        balanced_pairs(torch.arange(6), num_pairs=10)
    with pytest.raises(ValueError, match=">= 2 classes"):
        balanced_pairs([4, 4, 4], num_pairs=4)
    with pytest.raises(ValueError, match="num_positive"):
        balanced_pairs(lab, num_pairs=4, num_positive=5)


def test_class_disjoint_split_has_no_overlap():
    labels = torch.tensor(imbalanced_labels([5, 4, 3, 6, 2]))
    train_idx, test_idx = class_disjoint_split(labels, held_out_classes=[1, 3])
    assert set(labels[test_idx].tolist()) == {1, 3} and set(labels[train_idx].tolist()) == {0, 2, 4}
    assert sorted(train_idx.tolist() + test_idx.tolist()) == list(range(len(labels)))
    assert_no_class_overlap(labels, train_idx, test_idx)
    with pytest.raises(AssertionError, match=r"\[0\]"):
        assert_no_class_overlap(labels, train_idx, torch.tensor([0, 5]))  # classes 0 and 1
    with pytest.raises(ValueError):
        class_disjoint_split(labels, held_out_classes=[9])
