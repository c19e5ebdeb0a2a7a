"""Losses against independent float64 reference formulas written out by hand."""

import math

import pytest
import torch
from lightly.loss import NegativeCosineSimilarity, NTXentLoss

from ssl_siamese.losses import InfoNCELoss


def reference_ntxent(z0, z1, temperature):
    """NT-Xent from the SimCLR paper, one anchor at a time, in float64."""
    z = torch.cat([z0, z1]).double()
    z = z / z.norm(dim=1, keepdim=True)
    n, b = len(z), len(z0)
    total = 0.0
    for i in range(n):
        positive = (i + b) % n
        numerator = math.exp(float(z[i] @ z[positive]) / temperature)
        denominator = sum(math.exp(float(z[i] @ z[j]) / temperature) for j in range(n) if j != i)
        total += -math.log(numerator / denominator)
    return total / n


def reference_infonce(q, k, negatives, temperature):
    q, k, negatives = (x.double() / x.double().norm(dim=1, keepdim=True) for x in (q, k, negatives))
    total = 0.0
    for i in range(len(q)):
        positive = math.exp(float(q[i] @ k[i]) / temperature)
        negative = sum(math.exp(float(q[i] @ n) / temperature) for n in negatives)
        total += -math.log(positive / (positive + negative))
    return total / len(q)


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_ntxent_matches_reference(temperature):
    torch.manual_seed(0)
    z0, z1 = torch.randn(6, 16), torch.randn(6, 16)
    loss = NTXentLoss(temperature=temperature, gather_distributed=True)(z0, z1)
    assert loss.item() == pytest.approx(reference_ntxent(z0, z1, temperature), rel=1e-5)


def test_ntxent_is_accurate_in_half_precision_inputs():
    """Our methods cast projections to float32 before the loss; bf16 rounding then costs < 1e-2."""
    torch.manual_seed(0)
    z0, z1 = torch.randn(32, 64), torch.randn(32, 64)
    loss = NTXentLoss(temperature=0.1)(z0.bfloat16().float(), z1.bfloat16().float())
    assert loss.item() == pytest.approx(reference_ntxent(z0, z1, 0.1), rel=1e-2)


@pytest.mark.parametrize("temperature", [0.07, 0.2])
def test_infonce_matches_reference(temperature):
    torch.manual_seed(1)
    q, k, negatives = torch.randn(5, 8), torch.randn(5, 8), torch.randn(20, 8)
    loss = InfoNCELoss(temperature)(q, k, negatives)
    assert loss.item() == pytest.approx(reference_infonce(q, k, negatives, temperature), rel=1e-5)


def test_infonce_rejects_bad_temperature():
    with pytest.raises(ValueError, match="temperature"):
        InfoNCELoss(0.0)


def test_negative_cosine_matches_reference():
    torch.manual_seed(2)
    p, z = torch.randn(7, 12), torch.randn(7, 12)
    expected = -sum(float(p[i].double() @ z[i].double()) / float(p[i].double().norm() * z[i].double().norm())
                    for i in range(7)) / 7
    assert NegativeCosineSimilarity()(p, z).item() == pytest.approx(expected, rel=1e-5)
