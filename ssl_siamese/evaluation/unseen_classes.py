"""How well frozen features separate classes never trained on: N-way 1-shot accuracy, verification, Recall@k.

The supervised Siamese recipe (``python -m ssl_siamese.recipes.siamese``) measures the backbone on held-out
classes before and after training with :func:`evaluate_unseen` and prints :func:`format_table`.

Example:
    >>> features = backbone_features(model, eval_images)
    >>> n_query, why = choose_n_query(labels)
    >>> print(format_table({"before": evaluate_unseen(features, labels, n_query=n_query)}))
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from pytorch_lightning.loggers import Logger, WandbLogger
from torch import Tensor

from ssl_siamese.evaluation.fewshot import fewshot_episodes, max_queries
from ssl_siamese.evaluation.retrieval import recall_at_k
from ssl_siamese.evaluation.verification import verification_curve

if TYPE_CHECKING:
    from ssl_siamese.methods.siamese import SupervisedSiamese


@torch.no_grad()
def backbone_features(model: "SupervisedSiamese", images: Tensor, batch_size: int = 512) -> Tensor:
    """Frozen backbone features ``(N, D)`` of uint8 images, preprocessed like evaluation views."""
    was_training = model.training
    model.eval()
    features = torch.cat([model(model.augmentation.normalize(batch.to(model.device))).float().cpu()
                          for batch in images.split(batch_size)])
    model.train(was_training)  # Lightning 2.6 keeps the modes it finds when fitting starts
    return features


def choose_n_query(labels: Tensor, n_query: int | None = None, default: int = 15,
                   names: list[str] | None = None) -> tuple[int, str]:
    """Queries per class for N-way 1-shot episodes over all classes of ``labels``, and a line that says why.

    ``n_query=None``: ``default``, or the largest count the smallest class allows when that is fewer.
    ``names`` names the labels in the messages.
    Raises ``ValueError`` when ``n_query`` is more than the data allows, or when even 1 query is impossible.
    """
    n_way = len(labels.unique())
    classes, counts = labels.unique(return_counts=True)
    label = int(classes[counts.argmin()])
    smallest = (f"the smallest eval class, {label} {names[label] if names else ''}, has {int(counts.min())} "
                "images").replace(" ,", ",")
    most = max_queries(labels, n_way=n_way, k_shot=1)
    if most < 1:
        raise ValueError(f"{n_way}-way 1-shot evaluation needs 2 images of every eval class; {smallest}")
    if n_query is not None:
        if not 1 <= n_query <= most:
            raise ValueError(f"--n_query {n_query} is not possible: {smallest}, so 1-shot episodes take at "
                             f"most {most} queries per class; pass --n_query {most} or less")
        return n_query, f"{n_way}-way 1-shot episodes, {n_query} queries per class (--n_query)"
    chosen = min(default, most)
    why = f"the default {default}" if chosen == default else f"fewer than {default}: {smallest}"
    return chosen, f"{n_way}-way 1-shot episodes, {chosen} queries per class ({why}; set with --n_query)"


def evaluate_unseen(features: Tensor, labels: Tensor, episodes: int = 600, n_query: int = 15,
                    num_pairs: int = 4000, seed: int = 0) -> dict[str, float]:
    """N-way 1-shot accuracy (N = number of classes) with CI, verification AUC / EER, Recall@1/5/10."""
    n_way = len(labels.unique())
    fewshot = fewshot_episodes(features, labels, n_way=n_way, k_shot=1, n_query=n_query, episodes=episodes,
                               seed=seed)
    roc = verification_curve(features, labels, num_pairs, seed)
    recall = recall_at_k(features, labels, ks=(1, 5, 10))
    return {"n_way": n_way, "n_query": n_query, "fewshot_1shot": fewshot.mean, "fewshot_ci95": fewshot.ci95,
            "auc": roc.auc, "eer": roc.eer, "recall@1": recall[1], "recall@5": recall[5], "recall@10": recall[10]}


def format_table(columns: dict[str, dict[str, float]]) -> str:
    """The metrics of each column (e.g. ``before`` / ``after``) as a text table."""
    names = list(columns)
    n_way = next(iter(columns.values()))["n_way"]
    lines = [f"{'metric (unseen classes)':<26}" + "".join(f"{name:>18}" for name in names)]
    lines.append(f"{f'{n_way}-way 1-shot accuracy':<26}" + "".join(
        f"{c['fewshot_1shot']:.4f} ± {c['fewshot_ci95']:.4f}".rjust(18) for c in columns.values()))
    for key, label in [("auc", "verification ROC AUC"), ("eer", "verification EER"),
                       ("recall@1", "Recall@1"), ("recall@5", "Recall@5"), ("recall@10", "Recall@10")]:
        lines.append(f"{label:<26}" + "".join(f"{c[key]:>18.4f}" for c in columns.values()))
    return "\n".join(lines)


def log_results(loggers: list[Logger], results: dict[str, Any], step: int) -> None:
    """The before/after metrics as ``eval/<column>/<metric>`` at ``step``; on W&B also the metrics table."""
    columns = [name for name in ("before", "after") if name in results]
    metrics = {f"eval/{column}/{key}": float(value) for column in columns for key, value in results[column].items()}
    for logger in loggers:
        logger.log_metrics(metrics, step=step)
        if isinstance(logger, WandbLogger):
            keys = list(results[columns[0]])
            logger.log_table("eval/metrics", columns=["metric (unseen classes)", *columns],
                             data=[[key, *(float(results[c][key]) for c in columns)] for key in keys], step=step)
        logger.save()
