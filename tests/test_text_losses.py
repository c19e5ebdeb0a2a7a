"""The text losses against float64 formulas written out term by term, and gathered negatives over 2 gloo ranks."""

from __future__ import annotations

import functools
import math
import os

import pytest
import torch
from helpers import run_gloo_ranks

from ssl_siamese.text.losses import CosineSimilarityLoss, InBatchNegativesLoss, text_keys


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def reference_infonce(q, p, n=None, t=0.05, symmetric=False, texts=None) -> float:
    """-log softmax, one query at a time, in float64 Python loops. ``texts`` = (queries, positives[, negatives]):
    a candidate that is a copy (same query or same positive text as pair i, or a negative equal to i's
    positive) is left out of pair i's softmax."""
    q, p = q.double(), p.double()
    candidates = list(p) + (list(n.double()) if n is not None else [])

    def copy(i: int, j: int) -> bool:  # is candidate j a copy of pair i's target?
        if texts is None or j == i:
            return False
        if j < len(q):
            return texts[0][i] == texts[0][j] or texts[1][i] == texts[1][j]
        return texts[2][j - len(q)] == texts[1][i]

    forward = []
    for i in range(len(q)):
        logits = [_cos(q[i], c) / t for j, c in enumerate(candidates) if not copy(i, j)]
        forward.append(-(_cos(q[i], candidates[i]) / t - math.log(sum(math.exp(x) for x in logits))))
    loss = sum(forward) / len(forward)
    if symmetric:
        backward = []
        for i in range(len(p)):
            logits = [_cos(p[i], c) / t for j, c in enumerate(q) if not copy(i, j)]
            backward.append(-(_cos(p[i], q[i]) / t - math.log(sum(math.exp(x) for x in logits))))
        loss = (loss + sum(backward) / len(backward)) / 2
    return loss


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("hard_negatives", [False, True])
def test_infonce_matches_float64_reference(symmetric, hard_negatives):
    g = torch.Generator().manual_seed(0)
    q, p = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    n = torch.randn(6, 5, generator=g) if hard_negatives else None
    loss = InBatchNegativesLoss(temperature=0.1, symmetric=symmetric)(q, p, n)
    assert loss.item() == pytest.approx(reference_infonce(q, p, n, t=0.1, symmetric=symmetric), rel=1e-5)


QUERIES = ["foo library", "foo library", "bar tool", "baz game", "qux", "quux"]
POSITIVES = ["foo is a library", "foo is a library, v2", "bar does things", "foo is a library", "qux doc", "quux doc"]
NEGATIVES = ["qux doc", "a", "b", "c", "d", "quux doc"]


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("hard_negatives", [False, True])
def test_infonce_leaves_duplicate_texts_out_of_the_negatives(symmetric, hard_negatives):
    g = torch.Generator().manual_seed(2)
    q, p, n = (torch.randn(6, 5, generator=g, dtype=torch.float64) for _ in range(3))
    n = n if hard_negatives else None
    texts = (QUERIES, POSITIVES) + ((NEGATIVES,) if hard_negatives else ())
    keys = dict(zip(("query", "positive", "negative"), (text_keys(t) for t in texts)))
    loss = InBatchNegativesLoss(temperature=0.1, symmetric=symmetric)(q, p, n, keys=keys)
    expected = reference_infonce(q, p, n, t=0.1, symmetric=symmetric, texts=texts)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert loss.item() < InBatchNegativesLoss(temperature=0.1, symmetric=symmetric)(q, p, n).item()


def test_without_negative_keys_the_hard_negatives_are_kept_and_in_batch_copies_still_left_out():
    g = torch.Generator().manual_seed(3)
    q, p, n = (torch.randn(6, 5, generator=g, dtype=torch.float64) for _ in range(3))
    keys = {"query": text_keys(QUERIES), "positive": text_keys(POSITIVES)}
    loss = InBatchNegativesLoss(temperature=0.1)(q, p, n, keys=keys)
    unique = [f"unique {i}" for i in range(6)]  # negatives that copy nothing: the reference keeps them all
    expected = reference_infonce(q, p, n, t=0.1, texts=(QUERIES, POSITIVES, unique))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_text_keys_are_equal_exactly_for_equal_texts():
    keys = text_keys(["a text", "a text", "a text ", "A text"])
    assert keys.dtype == torch.long and keys[0] == keys[1]
    assert len(set(keys.tolist())) == 3
    torch.testing.assert_close(text_keys(["a text"]), keys[:1])  # not salted per process


def test_keys_of_distinct_texts_change_nothing():
    q, p = torch.randn(6, 5), torch.randn(6, 5)
    keys = {"query": text_keys([f"q{i}" for i in range(6)]), "positive": text_keys([f"p{i}" for i in range(6)])}
    loss_fn = InBatchNegativesLoss(0.1, symmetric=True)
    assert loss_fn(q, p, keys=keys).item() == pytest.approx(loss_fn(q, p).item(), rel=1e-6)


def test_infonce_low_precision_input_is_computed_in_float32():
    q, p = torch.randn(8, 16), torch.randn(8, 16)
    loss = InBatchNegativesLoss(0.05)(q.bfloat16(), p.bfloat16())
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(reference_infonce(q.bfloat16().float(), p.bfloat16().float()), rel=1e-4)


def test_infonce_rejects_bad_shapes_and_temperature():
    with pytest.raises(ValueError, match="temperature"):
        InBatchNegativesLoss(temperature=0)
    with pytest.raises(ValueError, match="must both be"):
        InBatchNegativesLoss()(torch.randn(4, 8), torch.randn(3, 8))
    with pytest.raises(ValueError, match="negatives must be"):
        InBatchNegativesLoss()(torch.randn(4, 8), torch.randn(4, 8), torch.randn(4, 7))


def test_cosine_similarity_loss_matches_formula():
    a, b, s = torch.randn(7, 4), torch.randn(7, 4), torch.rand(7)
    expected = sum((_cos(a[i].double(), b[i].double()) - float(s[i])) ** 2 for i in range(7)) / 7
    assert CosineSimilarityLoss()(a, b, s).item() == pytest.approx(expected, rel=1e-5)


def _ranks_loss_and_gradients(rank: int, world: int, q, p, n, texts) -> dict:
    """This rank's share of the batch through the loss, without and with text keys: loss and input gradients
    (and the rank's process id)."""
    part = slice(rank * len(q) // world, (rank + 1) * len(q) // world)
    results = {}
    for with_keys, keys in ((False, None), (True, texts)):
        tensors = [x[part].clone().requires_grad_() for x in (q, p, n)]
        part_keys = None if keys is None else {name: key[part] for name, key in keys.items()}
        loss = InBatchNegativesLoss(0.1, symmetric=True)(*tensors, keys=part_keys)
        loss.backward()
        results[with_keys] = (loss.item(), [x.grad for x in tensors])
    return {**results, "pid": os.getpid()}


def batch_and_keys() -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """A batch of 8 (query, positive, negative) and keys where pairs 0 and 5 share a positive across the ranks,
    2 and 6 a query, and negative 7 copies positive 1."""
    g = torch.Generator().manual_seed(1)
    texts = [[f"q{i}" for i in range(8)], [f"p{i}" for i in range(8)], [f"n{i}" for i in range(8)]]
    texts[1][5], texts[0][6], texts[2][7] = "p0", "q2", "p1"
    return [torch.randn(8, 6, generator=g) for _ in range(3)], dict(zip(("query", "positive", "negative"),
                                                                          map(text_keys, texts)))


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory) -> list[dict]:
    batch, keys = batch_and_keys()
    fn = functools.partial(_ranks_loss_and_gradients, q=batch[0], p=batch[1], n=batch[2], texts=keys)
    return run_gloo_ranks(fn, 2, tmp_path_factory.mktemp("text_losses_ranks"))


@pytest.mark.parametrize("with_keys", [False, True])
def test_gathered_negatives_on_two_gloo_ranks_equal_one_process_on_the_whole_batch(two_rank_results, with_keys):
    batch, keys = batch_and_keys()
    whole = [x.clone().requires_grad_() for x in batch]
    expected = InBatchNegativesLoss(0.1, symmetric=True)(*whole, keys=keys if with_keys else None)
    expected.backward()
    results = [ranks[with_keys] for ranks in two_rank_results]
    # DDP averages the ranks' gradients: the mean loss and the averaged gradients are the whole batch's
    assert (results[0][0] + results[1][0]) / 2 == pytest.approx(expected.item(), rel=1e-5)
    for i, x in enumerate(whole):
        gathered = torch.cat([results[0][1][i], results[1][1][i]]) / 2
        torch.testing.assert_close(gathered, x.grad, rtol=1e-4, atol=1e-6)


def test_rank_results_come_through_files_not_shared_memory(two_rank_results):
    """The ranks' results are saved to files and loaded by the parent. Tensors put in a multiprocessing queue
    are shared through their sender, so a read after the rank had exited failed (ConnectionResetError under
    load; FileNotFoundError in queue.get when this fixture read a queue after the ranks' exit)."""
    assert len({result["pid"] for result in two_rank_results}) == 2  # two processes, neither of them this one
    assert os.getpid() not in {result["pid"] for result in two_rank_results}
    for result in two_rank_results:
        assert all(not grad.is_shared() for grad in result[True][1])
        assert all(grad.shape == (4, 6) and grad.abs().sum() > 0 for grad in result[True][1])
