"""What a W&B user looks at beside the PNGs: an embeddings Table, and interactive ROC / confusion charts.

Each function logs to every ``WandbLogger`` of a Trainer (rank zero only) or of a logger list, and does
nothing without one, so callers need no W&B checks:

- :func:`embedding_table`: one row per image with its thumbnail, label, a 2-D PCA projection, its nearest
  neighbours and the embedding itself as numeric columns ``e0, e1, ...`` (W&B's "2D Projection" panel
  runs PCA, t-SNE or UMAP on those in the browser). The thumbnails show in online runs; an offline run
  (the default) stores each image cell as the word "Image" and ``wandb sync`` does not restore it, a known
  W&B limitation (wandb/wandb#4611): the neighbour-grid PNGs stay the offline view of the same images.
- :func:`log_roc_curve`: the ROC curve as a ``wandb.plot.line`` over the points already computed (the
  chart shows exactly the curve of the PNG and of the reported AUC/EER).
- :func:`log_confusion_matrix`: ``wandb.plot.confusion_matrix`` of labels and predictions.

Example:
    >>> log_table(trainer, "pictures/embeddings", embedding_table(features, labels, images, ["cat", "dog"]))
    >>> log_roc_curve(trainer, "verification/roc", fpr, tpr, auc=0.97)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.loggers import WandbLogger
from torch import Tensor

from ssl_siamese.evaluation.plots import _as_hwc, _loggers, pca_2d, pca_project

MAX_EMBEDDING_COLUMNS = 64  # wider embeddings go in as their first 64 principal components


def wandb_loggers(trainer_or_loggers: Any) -> list[WandbLogger]:
    """The ``WandbLogger`` objects of a Trainer (empty off rank zero), a logger, a list, or None."""
    if isinstance(trainer_or_loggers, pl.Trainer) and not trainer_or_loggers.is_global_zero:
        return []
    return [logger for logger in _loggers(trainer_or_loggers) if isinstance(logger, WandbLogger)]


def _log(trainer_or_loggers: Any, loggers: list[WandbLogger], key: str, value: Any, step: int | None) -> None:
    """``experiment.log`` with the Trainer's step as ``trainer/global_step``, as Lightning's WandbLogger logs
    (W&B's own step is left to W&B: an explicit smaller one would be dropped)."""
    if step is None and isinstance(trainer_or_loggers, pl.Trainer):
        step = trainer_or_loggers.global_step
    for logger in loggers:
        logger.experiment.log({key: value} if step is None else {key: value, "trainer/global_step": step})


def embedding_columns(features: Tensor, max_columns: int = MAX_EMBEDDING_COLUMNS) -> np.ndarray:
    """``(N, D)`` features as at most ``max_columns`` numbers per row: the features themselves when
    ``D <= max_columns``, else their projection on the first ``max_columns`` principal components."""
    if features.shape[1] <= max_columns:
        return features.detach().float().cpu().numpy()
    return pca_project(features, max_columns).numpy()


def embedding_table(features: Tensor, labels: Tensor | None = None, images: Tensor | None = None,
                    class_names: Sequence[str] | None = None, neighbours: int = 5,
                    thumbnail: int = 64) -> Any:
    """A ``wandb.Table``: ``index, image, label, pca_x, pca_y, neighbours, e0, e1, ...`` for ``(N, D)`` features.

    ``images`` (``(N, C, H, W)`` uint8, the images the features came from) become thumbnails of at most
    ``thumbnail`` pixels; ``neighbours`` lists the indices of each row's most cosine-similar other rows.
    """
    import wandb

    count = len(features)
    features = features.detach().float().cpu()
    similarity = F.normalize(features, dim=1) @ F.normalize(features, dim=1).T
    similarity.fill_diagonal_(-float("inf"))
    nearest = similarity.topk(min(neighbours, max(count - 1, 0)), dim=1).indices.tolist()
    projection = pca_2d(features).tolist()
    numbers = embedding_columns(features)
    columns = ["index", "image", "label", "pca_x", "pca_y", "neighbours"]
    columns += [f"e{i}" for i in range(numbers.shape[1])]
    rows = []
    for i in range(count):
        label = None if labels is None else int(labels[i])
        name = class_names[label] if class_names and label is not None and 0 <= label < len(class_names) else label
        image = None
        if images is not None:
            small = images[i:i + 1]
            if max(small.shape[-2:]) > thumbnail:
                scale = thumbnail / max(small.shape[-2:])
                size = [max(1, round(side * scale)) for side in small.shape[-2:]]
                small = F.interpolate(small.float(), size=size, mode="bilinear", antialias=True,
                                      align_corners=False).round().clamp(0, 255).to(torch.uint8)
            image = wandb.Image(_as_hwc(small[0]))
        rows.append([i, image, name, *projection[i], " ".join(map(str, nearest[i])), *numbers[i].tolist()])
    return wandb.Table(columns=columns, data=rows)


def log_table(trainer_or_loggers: Any, key: str, table: Any, step: int | None = None) -> bool:
    """Log ``table`` under ``key`` to every W&B logger; True when one took it."""
    loggers = wandb_loggers(trainer_or_loggers)
    _log(trainer_or_loggers, loggers, key, table, step)
    return bool(loggers)


def log_roc_curve(trainer_or_loggers: Any, key: str, fpr: Tensor | np.ndarray, tpr: Tensor | np.ndarray,
                  auc: float | None = None, step: int | None = None) -> bool:
    """Log the ROC curve ``(fpr, tpr)`` as an interactive W&B line chart under ``key``; True when logged."""
    loggers = wandb_loggers(trainer_or_loggers)
    if not loggers:
        return False
    import wandb

    points = np.stack([np.asarray(fpr, dtype=float), np.asarray(tpr, dtype=float)], 1).tolist()
    title = "ROC" + (f" (AUC = {auc:.4f})" if auc is not None else "")
    chart = wandb.plot.line(wandb.Table(columns=["false positive rate", "true positive rate"], data=points),
                            "false positive rate", "true positive rate", title=title)
    _log(trainer_or_loggers, loggers, key, chart, step)
    return True


def pairs_from_confusion(confusion: Tensor) -> tuple[Tensor, Tensor]:
    """(labels, predictions) with ``confusion[i, j]`` pairs ``(i, j)``: the samples a count matrix stands for."""
    counts = torch.as_tensor(confusion).long()
    classes = torch.arange(counts.shape[0])
    labels = classes.repeat_interleave(counts.sum(1))
    predictions = classes.repeat(counts.shape[0]).repeat_interleave(counts.flatten())
    return labels, predictions


def log_confusion_matrix(trainer_or_loggers: Any, key: str, labels: Tensor | Sequence[int],
                         predictions: Tensor | Sequence[int], class_names: Sequence[str] | None = None,
                         step: int | None = None) -> bool:
    """Log W&B's interactive confusion matrix of ``labels`` vs ``predictions`` under ``key``; True when logged."""
    loggers = wandb_loggers(trainer_or_loggers)
    if not loggers:
        return False
    import wandb

    y_true, preds = [int(v) for v in labels], [int(v) for v in predictions]
    names = list(class_names) if class_names else [str(c) for c in range(max(y_true + preds) + 1)]
    chart = wandb.plot.confusion_matrix(y_true=y_true, preds=preds, class_names=names)
    _log(trainer_or_loggers, loggers, key, chart, step)
    return True
