"""CLIP's symmetric image-text loss against a float64 formula written out term by term, and its gathered
negatives on 2 gloo ranks against one process on the whole batch. Kept apart from the other cross-modal tests
so that each spawned rank imports only torch, lightly and the loss."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from helpers import run_gloo_ranks
from ssl_siamese.crossmodal.loss import CLIPLoss


def reference_clip(images, texts, scale) -> float:
    """CLIP's loss written out term by term in float64 Python."""
    i = [x / x.norm() for x in images.double()]
    t = [x / x.norm() for x in texts.double()]
    n = len(i)

    def ce(rows, cols) -> float:
        total = 0.0
        for a in range(n):
            logits = [scale * float(rows[a] @ cols[b]) for b in range(n)]
            total += math.log(sum(math.exp(x) for x in logits)) - logits[a]
        return total / n

    return (ce(i, t) + ce(t, i)) / 2


def test_clip_loss_matches_float64_reference_and_learns_its_temperature():
    g = torch.Generator().manual_seed(0)
    images, texts = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    loss_fn = CLIPLoss(temperature=0.2)
    loss = loss_fn(images, texts)
    assert loss.item() == pytest.approx(reference_clip(images, texts, 5.0), rel=1e-5)
    loss.backward()
    assert loss_fn.log_scale.grad is not None and loss_fn.log_scale.grad.abs() > 0
    fixed = CLIPLoss(temperature=0.2, learn_temperature=False)
    assert not fixed.log_scale.requires_grad
    capped = CLIPLoss(temperature=1e-4, max_scale=100.0)
    assert capped(images, texts).item() == pytest.approx(reference_clip(images, texts, 100.0), rel=1e-5)


def test_clip_loss_rejects_bad_input():
    with pytest.raises(ValueError, match="temperature"):
        CLIPLoss(temperature=0)
    with pytest.raises(ValueError, match="must both be"):
        CLIPLoss()(torch.randn(4, 8), torch.randn(3, 8))


def _ranks_gradients(rank: int, world: int, images, texts) -> tuple:
    """This rank's share of the batch through the loss: loss, input gradients and the temperature's gradient."""
    part = slice(rank * len(images) // world, (rank + 1) * len(images) // world)
    local = [x[part].clone().requires_grad_() for x in (images, texts)]
    loss_fn = CLIPLoss(temperature=0.1)
    loss = loss_fn(*local)
    loss.backward()
    return loss.item(), [x.grad for x in local], loss_fn.log_scale.grad.item()


def test_gathered_negatives_on_two_gloo_ranks_equal_one_process_on_the_whole_batch(tmp_path):
    g = torch.Generator().manual_seed(1)
    images, texts = torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g)
    whole = [x.clone().requires_grad_() for x in (images, texts)]
    loss_fn = CLIPLoss(temperature=0.1)
    expected = loss_fn(*whole)
    expected.backward()
    results = run_gloo_ranks(functools.partial(_ranks_gradients, images=images, texts=texts), 2, tmp_path)
    # DDP averages the ranks' gradients: the mean loss and the averaged gradients are the whole batch's
    assert (results[0][0] + results[1][0]) / 2 == pytest.approx(expected.item(), rel=1e-5)
    for i, x in enumerate(whole):
        gathered = torch.cat([results[0][1][i], results[1][1][i]]) / 2
        torch.testing.assert_close(gathered, x.grad, rtol=1e-4, atol=1e-6)
    assert (results[0][2] + results[1][2]) / 2 == pytest.approx(loss_fn.log_scale.grad.item(), rel=1e-4)
