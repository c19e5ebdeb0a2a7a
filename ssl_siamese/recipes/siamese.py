"""Supervised Siamese metric learning on some classes, evaluated on unseen classes.

    python -m ssl_siamese.recipes.siamese --data.dataset fashion_mnist --data.data_dir ./data \
        --train_classes 0-6 --eval_classes Sneaker,Bag,"Ankle boot" [--pretrained backbone.pt] \
        [--loss triplet --mining semi_hard] [--epochs 5] [--n_query 15] [--near_duplicates drop] \
        [--class_balanced true] [--log_to wandb] [--ckpt_every_n_steps 100] [--ckpt_path last.ckpt] [--out out/siamese]

Trains :class:`SupervisedSiamese` on P x K batches of ``--train_classes`` (train split), then evaluates the
frozen backbone features of ``--eval_classes`` (test split, never seen in training) before and after
training: N-way 1-shot accuracy with its 95% CI (``fewshot_episodes``, N = number of eval classes, ``--n_query``
queries per class: by default 15, or fewer when the smallest eval class has fewer than 16 images, as printed),
verification ROC AUC and EER on balanced pairs (``verification_roc``) and Recall@1/5/10 (``recall_at_k``).
Classes are indices, ranges or names (``0-6``, ``Sneaker,Bag``); the run starts by printing every class's
index, name and image counts, and a selection that cannot work (index out of range, unknown name, classes
on both sides, fewer than 2 classes or 2 images of a class) stops with that table before training. A
``folder`` without ``test/`` or ``val/`` takes the eval classes' images from its training folder.
Before training, training images that are near-copies of eval images (average hash, confirmed by the pixel
difference) are dropped (``--near_duplicates drop``), only reported (``report``) or stop the run (``fail``).
Prints the near-duplicate report and the metrics table, writes ``results.json`` (with the near-duplicate
counts and example pairs) and exports the backbone to ``<out>/exported_models/backbone.pt``. ``--epochs 0``
only evaluates (e.g. an SSL backbone). Checkpoints go to ``<out>/checkpoints/last.ckpt`` at every epoch end
(or every ``--ckpt_every_n_steps``), atomically, with the random states and the position in the epoch's
P x K batches; ``--ckpt_path <out>/checkpoints/last.ckpt`` resumes a killed run, and ends with the weights the
uninterrupted run would have had. ``--log_to`` (wandb, csv, tensorboard, none) logs the training loss and,
at the end, the before/after metrics (and, on W&B, the metrics table).

Example:
    >>> result = run_siamese("fashion_mnist", "./data", range(7), ["Sneaker", 8, 9], epochs=1, out="out/siamese")
    >>> result["after"]["fewshot_1shot"], result["after"]["auc"]
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import Logger, WandbLogger
from torch import Tensor

from ssl_siamese.callbacks.nan_guard import NonFiniteLossGuard
from ssl_siamese.callbacks.rng_state import RNGStateCheckpoint
from ssl_siamese.checkpoints import SafeCheckpointIO, check_resume_checkpoint, read_checkpoint
from ssl_siamese.cli.arguments import parse_args as parse_checked
from ssl_siamese.cli.arguments import recipe_parser
from ssl_siamese.data.pk import NEAR_DUPLICATE_MODES, PKDataModule
from ssl_siamese.evaluation.fewshot import fewshot_episodes, max_queries
from ssl_siamese.evaluation.plots import log_figure, roc_figure
from ssl_siamese.evaluation.retrieval import VerificationResult, pair_scores, recall_at_k, verification_roc
from ssl_siamese.evaluation.wandb_media import log_roc_curve
from ssl_siamese.export import export_backbone, export_pretrained
from ssl_siamese.cli.loggers import LOGGERS, WANDB_MODES, WandbRunId, make_logger, stored_wandb_run_id
from ssl_siamese.methods.siamese import SupervisedSiamese
from ssl_siamese.samplers import balanced_pairs


def parse_classes(spec: str) -> list[int | str]:
    """``"0-6"`` -> ``[0, ..., 6]``; ``"0,2,5-7"`` -> ``[0, 2, 5, 6, 7]``; other items are class names.

    ``"Sneaker,Bag"`` -> ``["Sneaker", "Bag"]``; ``"T-shirt/top"`` stays a name (a range is two integers).
    Names are resolved against the data's classes by ``PKDataModule.setup``.
    """
    classes: list[int | str] = []
    for part in (part.strip() for part in spec.split(",")):
        if not part:
            raise ValueError(f"empty class in {spec!r}: give indices, ranges or names such as 0-6, 0,2,4 or Sneaker,Bag")
        low, dash, high = part.partition("-")
        if low.strip().isdigit() and (not dash or high.strip().isdigit()):
            classes += list(range(int(low), int(high or low) + 1))
        else:
            classes.append(part)
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


def verification_curve(features: Tensor, labels: Tensor, num_pairs: int = 4000, seed: int = 0) -> VerificationResult:
    """Verification ROC on ``num_pairs`` seeded pairs, half same-class and half different-class."""
    i, j, same = balanced_pairs(labels, num_pairs=num_pairs, seed=seed)
    return verification_roc(pair_scores(features[i], features[j]), same)


def log_roc(loggers: list[Logger], roc: VerificationResult, out: Path, title: str, step: int) -> Path | None:
    """The ROC curve as ``<out>/eval_roc.png`` and, on W&B, as that image and an interactive chart."""
    path = log_figure(loggers, "eval/roc", roc_figure(roc.fpr, roc.tpr, roc.auc, roc.eer, title=title), out,
                      step=step)
    log_roc_curve(loggers, "eval/roc_interactive", roc.fpr, roc.tpr, auc=roc.auc, step=step)
    return path


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


def checkpoint_callback(folder: str | Path, every_n_steps: int = 0) -> ModelCheckpoint:
    """``last.ckpt`` in ``folder`` every ``every_n_steps`` training steps, or at each epoch end (0).

    Lightning writes ``last.ckpt`` at an epoch end only together with a top-k checkpoint, so the epoch-end
    mode also keeps the latest ``epoch=E-step=S.ckpt`` (one file, replaced each epoch).
    """
    return ModelCheckpoint(dirpath=folder, save_last=True, save_top_k=0 if every_n_steps else 1,
                           every_n_train_steps=every_n_steps or None)


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


def run_siamese(dataset: str = "fashion_mnist", data_dir: str = "./data",
                train_classes: Iterable[int | str] = range(7), eval_classes: Iterable[int | str] = range(7, 10),
                backbone: str | None = None, pretrained: str | None = None, loss: str = "triplet",
                mining: str = "semi_hard", margin: float | None = None, embedding_dim: int = 128,
                epochs: int = 5, p: int | None = None, k: int = 8, batches_per_epoch: int | None = None,
                lr: float = 0.5, train_subset: int | None = None, eval_subset: int | None = None,
                class_balanced: bool = True, near_duplicates: str = "drop", hash_size: int = 8,
                episodes: int = 600, n_query: int | None = None, out: str | Path = "out/siamese",
                download: bool = True, seed: int = 0, progress: bool = True, log_to: str = "none",
                wandb_mode: str | None = None, ckpt_path: str | None = None,
                ckpt_every_n_steps: int = 0) -> dict[str, Any]:
    """Train on ``train_classes``, evaluate before/after on ``eval_classes``, export; returns the results.

    Classes are indices or names. ``backbone=None`` means the pretrained file's architecture, or ``tiny_cnn``
    without one. ``p=None`` uses every training class in each batch (at most 16). ``lr`` is per 256 images
    (SGD, cosine schedule). ``class_balanced``, ``near_duplicates`` and ``hash_size`` are
    :class:`PKDataModule`'s. ``n_query=None`` sizes the episodes to the data (:func:`choose_n_query`).
    Checkpoints: ``<out>/checkpoints/last.ckpt`` at each epoch end, or every ``ckpt_every_n_steps`` steps;
    ``ckpt_path`` resumes from one. ``log_to`` and ``wandb_mode`` are :func:`ssl_siamese.loggers.make_logger`'s;
    a run resumed from a checkpoint continues the W&B run the checkpoint was written under.
    Raises ``ValueError`` for a selection, evaluation size or checkpoint that cannot work, before training.
    """
    if ckpt_every_n_steps < 0:
        raise ValueError(f"ckpt_every_n_steps must be >= 0 (0: at each epoch end), got {ckpt_every_n_steps}")
    pl.seed_everything(seed, verbose=False)
    dm = PKDataModule(dataset, data_dir, train_classes, eval_classes, p=p, k=k, batches_per_epoch=batches_per_epoch,
                      train_subset=train_subset, eval_subset=eval_subset, download=download, seed=seed,
                      class_balanced=class_balanced, near_duplicates=near_duplicates, hash_size=hash_size)
    dm.setup("fit")  # checks the class selection; raises for near_duplicates="fail" when the split leaks
    print(dm.class_table())
    if dm.eval_split_used != dm.hparams.eval_split:
        print(f"{data_dir} has no test/ or val/ split: the eval classes' images come from the "
              f"{dm.eval_split_used} split (the two class sets are disjoint)")
    print(dm.duplicate_report)
    if near_duplicates == "drop":
        print(f"near-duplicates: dropped {dm.near_duplicates['dropped_train_images']} training images")
    labels = dm.eval_data.labels
    n_query, how = choose_n_query(labels, n_query, names=dm.class_names)
    print(f"few-shot evaluation: {how}")
    model_kwargs: dict[str, Any] = {} if backbone is None and pretrained else {"backbone": backbone or "tiny_cnn"}
    model = SupervisedSiamese(embedding_dim=embedding_dim, loss=loss, mining=mining, margin=margin,
                              pretrained=pretrained, lr=lr, batch_size=dm.batch_size, view_size=dm.image_size,
                              mean=dm.mean, std=dm.std, **model_kwargs)
    if ckpt_path is not None:
        check_resume_checkpoint(model, ckpt_path)
    out = Path(out)
    run_id = stored_wandb_run_id(read_checkpoint(ckpt_path)) if log_to == "wandb" and ckpt_path else None
    logger = make_logger(log_to, out, "siamese", mode=wandb_mode, run_id=run_id)
    loggers = [logger] if logger else []
    evaluate = {"episodes": episodes, "n_query": n_query, "seed": seed}
    features = backbone_features(model, dm.eval_data.images)
    results: dict[str, Any] = {"before": evaluate_unseen(features, labels, **evaluate)}
    started = time.perf_counter()
    if epochs > 0:
        checkpoint = checkpoint_callback(out / "checkpoints", ckpt_every_n_steps)
        trainer = pl.Trainer(max_epochs=epochs, accelerator="auto", devices=1, logger=loggers or False,
                             callbacks=[NonFiniteLossGuard(), RNGStateCheckpoint(), WandbRunId(), checkpoint],
                             plugins=[SafeCheckpointIO()], default_root_dir=str(out),
                             log_every_n_steps=min(10, len(dm.train_dataloader())),
                             enable_progress_bar=progress, enable_model_summary=False, num_sanity_val_steps=0)
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
        features = backbone_features(model, dm.eval_data.images)
        results["after"] = evaluate_unseen(features, labels, **evaluate)
    results["train_seconds"] = time.perf_counter() - started
    columns = {"before": results["before"]} | ({"after": results["after"]} if "after" in results else {})
    print(format_table(columns))
    log_results(loggers, results, step=int(model.global_step))
    roc = verification_curve(features, labels, seed=seed)  # the same pairs and curve as the table's last column
    results["roc_png"] = str(log_roc(loggers, roc, out, f"verification ROC on unseen classes after {epochs} epochs",
                                     step=int(model.global_step)))
    names = dm.class_names
    recorded = dict(data=dataset, epochs=epochs, loss=loss, train_classes=[names[c] for c in dm.train_classes],
                    eval_classes=[names[c] for c in dm.eval_classes])
    results["backbone_path"] = str(export_backbone(model, out / "exported_models" / "backbone.pt", **recorded))
    final = results.get("after", results["before"])  # the unseen-class figures of the exported weights
    metrics = {f"unseen_{key}": final[key] for key in ("fewshot_1shot", "auc", "eer", "recall@1")}
    results["backbone_folder"] = str(export_pretrained(model, out / "exported_models" / "backbone", metrics=metrics,
                                                       **recorded))
    results.update(train_classes=[names[c] for c in dm.train_classes],
                   eval_classes=[names[c] for c in dm.eval_classes], eval_split=dm.eval_split_used,
                   near_duplicates=dm.near_duplicates, train_images=len(dm.train_data),
                   eval_images=len(dm.eval_data), steps=int(model.global_step))
    (out / "results.json").write_text(json.dumps(results, indent=2))
    for each in loggers:  # flush and close the W&B run so its files are complete now
        if isinstance(each, WandbLogger):
            each.experiment.finish()
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """The command line: parse, run, and turn a wrong input (``ValueError``, missing file) into a one-line exit."""
    parser = recipe_parser("python -m ssl_siamese.recipes.siamese", __doc__.split("\n\n")[0])
    parser.add_argument("--data.dataset", default="fashion_mnist",
                        help="a labelled dataset: fashion_mnist, cifar10, cifar100, folder (one sub-folder per "
                             "class, optionally in train/ and test/), synthetic")
    parser.add_argument("--data.data_dir", default="./data", help="where the dataset lies")
    parser.add_argument("--data.download", type=bool, default=True, help="download a missing torchvision dataset")
    parser.add_argument("--train_classes", default="0-6",
                        help="indices, ranges or names, e.g. 0-6, 0,2,4 or Sneaker,Bag (the run prints them all)")
    parser.add_argument("--eval_classes", default="7-9",
                        help="as --train_classes, disjoint from them")
    parser.add_argument("--backbone", default=None, help="default: the pretrained file's, else tiny_cnn")
    parser.add_argument("--pretrained", default=None, help="an exported backbone (export_backbone) to start from")
    parser.add_argument("--loss", default="triplet", choices=["triplet", "contrastive"], help="metric loss")
    parser.add_argument("--mining", default="semi_hard", choices=["batch_hard", "semi_hard", "batch_all"],
                        help="which triplets of a batch the triplet loss uses")
    parser.add_argument("--margin", type=float, default=None, help="default: 0.2 triplet, 1.0 contrastive")
    parser.add_argument("--embedding_dim", type=int, default=128, help="output size of the embedding head")
    parser.add_argument("--epochs", type=int, default=5, help="0: evaluate only")
    parser.add_argument("--p", type=int, default=None, help="classes per batch (default: all train classes)")
    parser.add_argument("--k", type=int, default=8, help="images per class in a batch")
    parser.add_argument("--batches_per_epoch", type=int, default=None,
                        help="P x K batches per epoch (default: about one pass over the training images)")
    parser.add_argument("--lr", type=float, default=0.5, help="per 256 images")
    parser.add_argument("--train_subset", type=int, default=None, help="at most this many training images (seeded)")
    parser.add_argument("--eval_subset", type=int, default=None, help="at most this many eval images (seeded)")
    parser.add_argument("--class_balanced", type=bool, default=True,
                        help="true: classes drawn uniformly into batches; false: in proportion to their size")
    parser.add_argument("--near_duplicates", default="drop", choices=NEAR_DUPLICATE_MODES,
                        help="training images that are near-copies of eval images: report, drop, or fail")
    parser.add_argument("--hash_size", type=int, default=8, help="average-hash side for the duplicate check")
    parser.add_argument("--episodes", type=int, default=600, help="few-shot episodes (the 95%% CI shrinks with more)")
    parser.add_argument("--n_query", type=int, default=None,
                        help="queries per class in the 1-shot episodes (default: 15, or fewer when the smallest "
                             "eval class has fewer than 16 images)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the model, the batches and the evaluation")
    parser.add_argument("--out", default="out/siamese", help="output folder: checkpoints/, exported_models/, logs")
    parser.add_argument("--log_to", default="wandb", choices=LOGGERS, help="experiment logger")
    parser.add_argument("--wandb_mode", default=None, choices=WANDB_MODES,
                        help="W&B: offline (under <out>/wandb, `wandb sync` it later) or online; unset: $WANDB_MODE "
                             "if set, else offline")
    parser.add_argument("--ckpt_path", default=None,
                        help="resume from this checkpoint (e.g. <out>/checkpoints/last.ckpt)")
    parser.add_argument("--ckpt_every_n_steps", type=int, default=0,
                        help="write <out>/checkpoints/last.ckpt every N training steps; 0: at each epoch end")
    args = parse_checked(parser, argv).as_dict()  # a misspelt option gets the closest valid one
    args.pop("config", None)
    data = args.pop("data")
    args.update(dataset=data["dataset"], data_dir=data["data_dir"], download=data["download"])
    try:
        args.update(train_classes=parse_classes(str(args["train_classes"])),
                    eval_classes=parse_classes(str(args["eval_classes"])))
        return run_siamese(**args)
    except (FileNotFoundError, ValueError) as error:  # DataNotFoundError and CheckpointError among them
        sys.exit(f"{parser.prog}: error: {error}")


if __name__ == "__main__":
    main()
