"""Supervised Siamese metric learning on some classes, evaluated on unseen classes.

    python -m ssl_siamese.recipes.siamese --data.dataset fashion_mnist --data.data_dir ./data \
        --train_classes 0-6 --eval_classes 7-9 [--pretrained backbone.pt] [--loss triplet --mining semi_hard] \
        [--epochs 5] [--near_duplicates drop] [--class_balanced true] [--out out/siamese]

Trains :class:`SupervisedSiamese` on P x K batches of ``--train_classes`` (train split), then evaluates the
frozen backbone features of ``--eval_classes`` (test split, never seen in training) before and after
training: N-way 1-shot accuracy with its 95% CI (``fewshot_episodes``, N = number of eval classes),
verification ROC AUC and EER on balanced pairs (``verification_roc``) and Recall@1/5/10 (``recall_at_k``).
Before training, training images that are near-copies of eval images (average hash, confirmed by the pixel
difference) are dropped (``--near_duplicates drop``), only reported (``report``) or stop the run (``fail``).
Prints the near-duplicate report and the metrics table, writes ``results.json`` (with the near-duplicate
counts and example pairs) and exports the backbone to ``<out>/exported_models/backbone.pt``. ``--epochs 0``
only evaluates (e.g. an SSL backbone).

Example:
    >>> result = run_siamese("fashion_mnist", "./data", range(7), range(7, 10), epochs=1, out="out/siamese")
    >>> result["after"]["fewshot_1shot"], result["after"]["auc"]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from ssl_siamese.data_pk import NEAR_DUPLICATE_MODES, PKDataModule
from ssl_siamese.evaluation.fewshot import fewshot_episodes
from ssl_siamese.evaluation.retrieval import pair_scores, recall_at_k, verification_roc
from ssl_siamese.export import export_backbone
from ssl_siamese.methods.siamese import SupervisedSiamese
from ssl_siamese.samplers import balanced_pairs


def parse_bool(text: str) -> bool:
    """``"true"`` / ``"false"`` (any case) -> bool; anything else is an error."""
    if text.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.lower() == "true"


def parse_classes(spec: str) -> list[int]:
    """``"0-6"`` -> ``[0, ..., 6]``; ``"0,2,5-7"`` -> ``[0, 2, 5, 6, 7]``."""
    classes: list[int] = []
    for part in spec.split(","):
        low, _, high = part.strip().partition("-")
        classes += list(range(int(low), int(high or low) + 1))
    return classes


@torch.no_grad()
def backbone_features(model: SupervisedSiamese, images: Tensor, batch_size: int = 512) -> Tensor:
    """Frozen backbone features ``(N, D)`` of uint8 images, preprocessed like evaluation views."""
    was_training = model.training
    model.eval()
    features = torch.cat([model(model.augmentation.normalize(batch.to(model.device))).float().cpu()
                          for batch in images.split(batch_size)])
    model.train(was_training)  # Lightning 2.6 keeps the modes it finds when fitting starts
    return features


def evaluate_unseen(features: Tensor, labels: Tensor, episodes: int = 600, n_query: int = 15,
                    num_pairs: int = 4000, seed: int = 0) -> dict[str, float]:
    """N-way 1-shot accuracy (N = number of classes) with CI, verification AUC / EER, Recall@1/5/10."""
    n_way = len(labels.unique())
    fewshot = fewshot_episodes(features, labels, n_way=n_way, k_shot=1, n_query=n_query, episodes=episodes,
                               seed=seed)
    i, j, same = balanced_pairs(labels, num_pairs=num_pairs, seed=seed)
    roc = verification_roc(pair_scores(features[i], features[j]), same)
    recall = recall_at_k(features, labels, ks=(1, 5, 10))
    return {"n_way": n_way, "fewshot_1shot": fewshot.mean, "fewshot_ci95": fewshot.ci95, "auc": roc.auc,
            "eer": roc.eer, "recall@1": recall[1], "recall@5": recall[5], "recall@10": recall[10]}


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


def run_siamese(dataset: str = "fashion_mnist", data_dir: str = "./data",
                train_classes: Iterable[int] = range(7), eval_classes: Iterable[int] = range(7, 10),
                backbone: str | None = None, pretrained: str | None = None, loss: str = "triplet",
                mining: str = "semi_hard", margin: float | None = None, embedding_dim: int = 128,
                epochs: int = 5, p: int | None = None, k: int = 8, batches_per_epoch: int | None = None,
                lr: float = 0.5, train_subset: int | None = None, eval_subset: int | None = None,
                class_balanced: bool = True, near_duplicates: str = "drop", hash_size: int = 8,
                episodes: int = 600, out: str | Path = "out/siamese", download: bool = True, seed: int = 0,
                progress: bool = True) -> dict[str, Any]:
    """Train on ``train_classes``, evaluate before/after on ``eval_classes``, export; returns the results.

    ``backbone=None`` means the pretrained file's architecture, or ``tiny_cnn`` without one. ``p=None``
    uses every training class in each batch (at most 16). ``lr`` is per 256 images (SGD, cosine schedule).
    ``class_balanced``, ``near_duplicates`` and ``hash_size`` are :class:`PKDataModule`'s.
    """
    pl.seed_everything(seed, verbose=False)
    dm = PKDataModule(dataset, data_dir, train_classes, eval_classes, p=p or min(16, len(set(train_classes))),
                      k=k, batches_per_epoch=batches_per_epoch, train_subset=train_subset,
                      eval_subset=eval_subset, download=download, seed=seed, class_balanced=class_balanced,
                      near_duplicates=near_duplicates, hash_size=hash_size)
    dm.setup("fit")  # raises for near_duplicates="fail" when the split leaks
    print(dm.duplicate_report)
    if near_duplicates == "drop":
        print(f"near-duplicates: dropped {dm.near_duplicates['dropped_train_images']} training images")
    model_kwargs: dict[str, Any] = {} if backbone is None and pretrained else {"backbone": backbone or "tiny_cnn"}
    model = SupervisedSiamese(embedding_dim=embedding_dim, loss=loss, mining=mining, margin=margin,
                              pretrained=pretrained, lr=lr, batch_size=dm.batch_size, view_size=dm.image_size,
                              mean=dm.mean, std=dm.std, **model_kwargs)
    labels = dm.eval_data.labels
    results: dict[str, Any] = {"before": evaluate_unseen(backbone_features(model, dm.eval_data.images), labels,
                                                          episodes=episodes, seed=seed)}
    started = time.perf_counter()
    if epochs > 0:
        trainer = pl.Trainer(max_epochs=epochs, accelerator="auto", devices=1, logger=False,
                             enable_checkpointing=False, enable_progress_bar=progress,
                             enable_model_summary=False, num_sanity_val_steps=0)
        trainer.fit(model, datamodule=dm)
        results["after"] = evaluate_unseen(backbone_features(model, dm.eval_data.images), labels,
                                           episodes=episodes, seed=seed)
    results["train_seconds"] = time.perf_counter() - started
    columns = {"before": results["before"]} | ({"after": results["after"]} if "after" in results else {})
    print(format_table(columns))
    out = Path(out)
    results["backbone_path"] = str(export_backbone(
        model, out / "exported_models" / "backbone.pt", data=dataset, epochs=epochs, loss=loss,
        train_classes=list(dm.train_classes), eval_classes=list(dm.eval_classes)))
    results.update(near_duplicates=dm.near_duplicates, train_images=len(dm.train_data),
                   eval_images=len(dm.eval_data), steps=int(model.global_step))
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data.dataset", dest="dataset", default="fashion_mnist")
    parser.add_argument("--data.data_dir", dest="data_dir", default="./data")
    parser.add_argument("--data.download", dest="download", type=parse_bool, default=True)
    parser.add_argument("--train_classes", type=parse_classes, default="0-6", help="e.g. 0-6 or 0,2,4")
    parser.add_argument("--eval_classes", type=parse_classes, default="7-9", help="disjoint from train")
    parser.add_argument("--backbone", default=None, help="default: the pretrained file's, else tiny_cnn")
    parser.add_argument("--pretrained", default=None, help="an exported backbone (export_backbone) to start from")
    parser.add_argument("--loss", default="triplet", choices=["triplet", "contrastive"])
    parser.add_argument("--mining", default="semi_hard", choices=["batch_hard", "semi_hard", "batch_all"])
    parser.add_argument("--margin", type=float, default=None, help="default: 0.2 triplet, 1.0 contrastive")
    parser.add_argument("--embedding_dim", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=5, help="0: evaluate only")
    parser.add_argument("--p", type=int, default=None, help="classes per batch (default: all train classes)")
    parser.add_argument("--k", type=int, default=8, help="images per class in a batch")
    parser.add_argument("--batches_per_epoch", type=int, default=None)
    parser.add_argument("--lr", type=float, default=0.5, help="per 256 images")
    parser.add_argument("--train_subset", type=int, default=None)
    parser.add_argument("--eval_subset", type=int, default=None)
    parser.add_argument("--class_balanced", type=parse_bool, default=True,
                        help="true: classes drawn uniformly into batches; false: in proportion to their size")
    parser.add_argument("--near_duplicates", default="drop", choices=NEAR_DUPLICATE_MODES,
                        help="training images that are near-copies of eval images: report, drop, or fail")
    parser.add_argument("--hash_size", type=int, default=8, help="average-hash side for the duplicate check")
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="out/siamese")
    return run_siamese(**vars(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
