"""Linear probe: a linear classifier trained on frozen, precomputed features (the standard SSL protocol).

The caller computes the features once with the frozen backbone. They are standardised with the training
mean and standard deviation, and an ``nn.Linear`` is trained with cross-entropy by mini-batch SGD
(momentum 0.9, cosine learning-rate decay per step, zero initialisation). SGD rather than L-BFGS: it
scales to large feature banks in batches, and with zero initialisation and a seeded shuffle it is
deterministic. The returned classifier has the standardisation folded into its weights, so it takes raw
features. ``weight_decay_sweep`` picks the weight decay on a validation split carved from the train set.
Top-1/top-5 accuracy and the confusion matrix are torchmetrics' (``multiclass_accuracy``, micro average).

Example:
    >>> result = fit_linear_probe(train_x, train_y, test_x, test_y, epochs=100, lr=0.1)
    >>> print(result.top1, result.top5, result.confusion.shape)
    >>> sweep = weight_decay_sweep(train_x, train_y, test_x, test_y, weight_decays=(0, 1e-4, 1e-3))
    >>> print(sweep.best_weight_decay, sweep.validation_top1, sweep.result.top1)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_confusion_matrix


@dataclass(frozen=True)
class LinearProbeResult:
    """Test top-1 and top-5 accuracy, the classifier (on raw features) and the ``(C, C)`` confusion matrix.

    ``confusion[i, j]`` counts test samples of class ``i`` predicted as class ``j``.
    """

    top1: float
    top5: float
    classifier: nn.Linear
    confusion: Tensor


@dataclass(frozen=True)
class WeightDecaySweep:
    """The chosen weight decay, the validation top-1 of each candidate, and the refit on all train data."""

    best_weight_decay: float
    validation_top1: dict[float, float]
    result: LinearProbeResult


def _train_linear(features: Tensor, labels: Tensor, num_classes: int, epochs: int, lr: float,
                  weight_decay: float, batch_size: int, seed: int) -> nn.Linear:
    """SGD with momentum and a per-step cosine schedule on standardised ``features``."""
    linear = nn.utils.skip_init(nn.Linear, features.shape[1], num_classes, device=features.device)  # no global RNG
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    optimizer = torch.optim.SGD(linear.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(features) / batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs * steps_per_epoch))
    generator = torch.Generator().manual_seed(seed)
    with torch.enable_grad():
        for _ in range(epochs):
            order = torch.randperm(len(features), generator=generator).to(features.device)
            for batch in order.split(batch_size):
                loss = F.cross_entropy(linear(features[batch]), labels[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
    return linear


def fit_linear_probe(train_features: Tensor, train_labels: Tensor, test_features: Tensor, test_labels: Tensor,
                     num_classes: int | None = None, epochs: int = 100, lr: float = 0.1,
                     weight_decay: float = 0.0, batch_size: int = 1024, seed: int = 0) -> LinearProbeResult:
    """Train a linear classifier on ``train_features`` and report it on ``test_features``.

    ``num_classes`` defaults to one more than the largest label seen. Runs on the features' device;
    the same inputs and ``seed`` give the same result.
    """
    train_features = train_features.detach().float()
    device = train_features.device
    test_features = test_features.detach().float().to(device)
    train_labels = train_labels.detach().long().to(device)
    test_labels = test_labels.detach().long().to(device)
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max()).item()) + 1
    mean = train_features.mean(dim=0)
    std = train_features.std(dim=0, correction=0).clamp_min(1e-6)
    linear = _train_linear((train_features - mean) / std, train_labels, num_classes, epochs, lr,
                           weight_decay, batch_size, seed)
    with torch.no_grad():  # fold the standardisation in: W (x - m) / s + b = (W / s) x + (b - (W / s) m)
        linear.weight.div_(std)
        linear.bias.sub_(linear.weight @ mean)
        logits = linear(test_features)
    accuracy = partial(multiclass_accuracy, logits, test_labels, num_classes, average="micro")
    top1, top5 = accuracy(top_k=1).item(), accuracy(top_k=min(5, num_classes)).item()
    confusion = multiclass_confusion_matrix(logits, test_labels, num_classes)
    return LinearProbeResult(top1=top1, top5=top5, classifier=linear, confusion=confusion)


def weight_decay_sweep(train_features: Tensor, train_labels: Tensor, test_features: Tensor, test_labels: Tensor,
                       weight_decays: tuple[float, ...] = (0.0, 1e-5, 1e-4, 1e-3), val_fraction: float = 0.2,
                       num_classes: int | None = None, epochs: int = 100, lr: float = 0.1,
                       batch_size: int = 1024, seed: int = 0) -> WeightDecaySweep:
    """Choose the weight decay by top-1 on a seeded random ``val_fraction`` of train, then refit on all of it.

    Ties go to the first candidate in ``weight_decays``. The test set is used only by the final refit.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max()).item()) + 1
    order = torch.randperm(len(train_features), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(val_fraction * len(train_features)))
    val, fit = order[:n_val].to(train_features.device), order[n_val:].to(train_features.device)
    options = {"num_classes": num_classes, "epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed}
    validation_top1 = {
        wd: fit_linear_probe(train_features[fit], train_labels[fit], train_features[val], train_labels[val],
                             weight_decay=wd, **options).top1
        for wd in weight_decays
    }
    best = max(weight_decays, key=lambda wd: validation_top1[wd])
    result = fit_linear_probe(train_features, train_labels, test_features, test_labels, weight_decay=best,
                              **options)
    return WeightDecaySweep(best_weight_decay=best, validation_top1=validation_top1, result=result)
