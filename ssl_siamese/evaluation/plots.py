"""Evaluation figures (embedding PCA, nearest neighbours, confusion matrix, ROC) and ``log_figure``.

Figures are plain ``matplotlib.figure.Figure`` objects drawn on the Agg canvas, never through pyplot, so
they need no display, keep no global state and are freed like any object. ``log_figure`` logs one to
W&B (as a ``wandb.Image``) when a ``WandbLogger`` is present and always writes a PNG, so the pictures
exist with W&B off too.

Example:
    >>> figure = embedding_projection_figure(features, labels, class_names=["cat", "dog"])
    >>> log_figure(trainer, "pictures/embedding_pca", figure, "out/simclr/pictures")
    PosixPath('out/simclr/pictures/pictures_embedding_pca.png')
    >>> figure_to_array(figure).shape     # (H, W, 3) uint8
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from pytorch_lightning.loggers import Logger, WandbLogger
from torch import Tensor


def new_figure(width: float, height: float) -> Figure:
    """A figure of ``width x height`` inches on the Agg canvas."""
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def figure_to_array(figure: Figure) -> np.ndarray:
    """Render ``figure`` to a ``(H, W, 3)`` uint8 RGB array."""
    canvas = figure.canvas if isinstance(figure.canvas, FigureCanvasAgg) else FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _colours(num_classes: int) -> np.ndarray:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if num_classes <= 10 else "tab20" if num_classes <= 20 else "turbo"]
    return cmap(np.linspace(0, 1, num_classes) if num_classes > 20 else np.arange(num_classes))


def pca_project(features: Tensor, components: int) -> Tensor:
    """Project ``(N, D)`` features on their first ``min(components, N, D)`` principal components
    (``torch.pca_lowrank``), on the CPU in float32.

    The randomised solver runs with a fixed seed in a forked RNG, so the result is reproducible and the
    caller's random stream is untouched.
    """
    features = features.detach().float().cpu()
    q = min(components, *features.shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        _, _, v = torch.pca_lowrank(features, q=q, center=True)
    return (features - features.mean(0)) @ v[:, :q]


def pca_2d(features: Tensor) -> Tensor:
    """``pca_project`` on two components; fewer than 2 dimensions or samples are padded with zeros."""
    points = pca_project(features, 2)
    return torch.nn.functional.pad(points, (0, 2 - points.shape[1]))


def embedding_projection_figure(features: Tensor, labels: Tensor, class_names: Sequence[str] | None = None,
                                title: str = "Embedding (PCA)") -> Figure:
    """Scatter of the 2-D PCA of ``features`` coloured by ``labels`` (label < 0: grey)."""
    points, labels = pca_2d(features).numpy(), labels.detach().cpu().numpy()
    num_classes = max(int(labels.max()) + 1 if len(labels) else 0, len(class_names or []))
    colours = _colours(max(1, num_classes))
    figure = new_figure(6.5, 5)
    axes = figure.add_subplot()
    unlabelled = labels < 0
    if unlabelled.any():
        axes.scatter(*points[unlabelled].T, s=4, c="lightgrey", label="unlabelled")
    for c in range(num_classes):
        chosen = labels == c
        if chosen.any():
            name = class_names[c] if class_names and c < len(class_names) else str(c)
            axes.scatter(*points[chosen].T, s=4, color=colours[c], label=name)
    if num_classes <= 20:
        axes.legend(fontsize=7, markerscale=3, loc="best")
    axes.set(title=title, xlabel="PC 1", ylabel="PC 2")
    return figure


def _as_hwc(image: Tensor) -> np.ndarray:
    """uint8 ``(C, H, W)`` -> ``(H, W, C)`` (``(H, W)`` for one channel), for ``imshow``."""
    array = image.detach().cpu().numpy()
    return array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)


def neighbour_grid_figure(query_images: Tensor, neighbour_images: Tensor, query_labels: Tensor | None = None,
                          neighbour_labels: Tensor | None = None,
                          class_names: Sequence[str] | None = None) -> Figure:
    """One row per query: the query (first column) then its nearest neighbours in order.

    ``query_images`` is uint8 ``(Q, C, H, W)``, ``neighbour_images`` uint8 ``(Q, K, C, H, W)``. With
    labels, each tile is titled by class and a neighbour's title is green when its class matches the
    query's, red otherwise.
    """
    rows, k = neighbour_images.shape[:2]
    figure = new_figure(1.1 * (k + 1), 1.2 * rows)
    grid = figure.subplots(rows, k + 1, squeeze=False)

    def name(label: Tensor) -> str:
        index = int(label)
        return class_names[index] if class_names and 0 <= index < len(class_names) else str(index)

    for r in range(rows):
        tiles = [query_images[r]] + list(neighbour_images[r])
        for c, (axes, tile) in enumerate(zip(grid[r], tiles)):
            axes.imshow(_as_hwc(tile), cmap="gray", vmin=0, vmax=255)
            axes.set_xticks([])
            axes.set_yticks([])
            if query_labels is None:
                continue
            if c == 0:
                axes.set_title(f"query: {name(query_labels[r])}", fontsize=6, fontweight="bold")
            elif neighbour_labels is not None:
                label = neighbour_labels[r, c - 1]
                colour = "green" if int(label) == int(query_labels[r]) else "red"
                axes.set_title(name(label), fontsize=6, color=colour)
    return figure


def confusion_matrix_figure(confusion: Tensor | np.ndarray, class_names: Sequence[str] | None = None,
                            title: str = "Confusion matrix") -> Figure:
    """Row-normalised ``(C, C)`` confusion (row = true class, column = prediction), with counts for C <= 20."""
    counts = np.asarray(confusion.cpu() if isinstance(confusion, Tensor) else confusion, dtype=np.int64)
    rates = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    names = list(class_names) if class_names else [str(i) for i in range(len(counts))]
    size = max(5.0, 0.5 * len(counts) + 2)
    figure = new_figure(size + 1, size)
    axes = figure.add_subplot()
    image = axes.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, label="fraction of the true class")
    ticks = np.arange(len(counts))
    axes.set_xticks(ticks, names, rotation=45, ha="right", fontsize=7)
    axes.set_yticks(ticks, names, fontsize=7)
    axes.set(xlabel="predicted", ylabel="true", title=title)
    if len(counts) <= 20:
        for i in range(len(counts)):
            for j in range(len(counts)):
                axes.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=9 if len(counts) <= 10 else 6,
                          color="white" if rates[i, j] > 0.5 else "black")
    return figure


def roc_figure(fpr: Tensor | np.ndarray, tpr: Tensor | np.ndarray, auc: float, eer: float,
               title: str = "ROC") -> Figure:
    """The ROC curve with the chance diagonal and the equal-error-rate point (where FPR = 1 - TPR)."""
    fpr, tpr = (np.asarray(x.cpu() if isinstance(x, Tensor) else x, dtype=np.float64) for x in (fpr, tpr))
    figure = new_figure(5, 5)
    axes = figure.add_subplot()
    axes.plot(fpr, tpr, label=f"AUC = {auc:.4f}")
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8, label="chance")
    axes.plot([eer], [1 - eer], "o", color="red", label=f"EER = {eer:.4f}")
    axes.plot([0, 1], [1, 0], linestyle=":", color="red", linewidth=0.6)
    axes.set(xlim=(0, 1), ylim=(0, 1), xlabel="false positive rate", ylabel="true positive rate",
             title=title, aspect="equal")
    axes.legend(loc="lower right", fontsize=8)
    return figure


def _loggers(trainer_or_loggers: Any) -> list[Logger]:
    if trainer_or_loggers is None or trainer_or_loggers is False:
        return []
    if hasattr(trainer_or_loggers, "loggers"):
        return list(trainer_or_loggers.loggers)
    if isinstance(trainer_or_loggers, Logger):
        return [trainer_or_loggers]
    return list(trainer_or_loggers)


def log_figure(trainer_or_loggers: Any, key: str, figure: Figure | np.ndarray, out_dir: str | Path,
               step: int | None = None, filename: str | None = None) -> Path | None:
    """Save ``figure`` as ``<out_dir>/<filename>`` (default: the key, '/' -> '_', + ``.png``); log it to W&B.

    It is logged to every ``WandbLogger`` under ``key`` (W&B keeps one image per step under a key).

    ``trainer_or_loggers`` is a Trainer, a Logger, a list of them, or None (PNG only). With a Trainer
    only global rank zero writes (others return None) and ``step`` defaults to its global step.
    """
    trainer = trainer_or_loggers if isinstance(trainer_or_loggers, pl.Trainer) else None
    if trainer is not None:
        if not trainer.is_global_zero:
            return None
        step = trainer.global_step if step is None else step
    image = figure_to_array(figure) if isinstance(figure, Figure) else np.asarray(figure, dtype=np.uint8)
    path = Path(out_dir) / (filename or f"{key.replace('/', '_')}.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    for logger in _loggers(trainer_or_loggers):
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[image], step=step)
    return path
