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

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint

from ssl_siamese.callbacks.nan_guard import NonFiniteLossGuard
from ssl_siamese.callbacks.rng_state import RNGStateCheckpoint
from ssl_siamese.export.checkpoints import SafeCheckpointIO, check_resume_checkpoint, read_checkpoint
from ssl_siamese.cli.loggers import LOGGERS, WANDB_MODES, WandbRunId, finish_loggers, make_logger, stored_wandb_run_id
from ssl_siamese.cli.recipe import Flag, recipe_main, write_results
from ssl_siamese.data.pk import NEAR_DUPLICATE_MODES, PKDataModule
from ssl_siamese.evaluation.unseen_classes import (
    backbone_features,
    choose_n_query,
    evaluate_unseen,
    format_table,
    log_results,
)
from ssl_siamese.evaluation.verification import log_roc, verification_curve
from ssl_siamese.export import export_backbone, export_pretrained
from ssl_siamese.methods.siamese import SupervisedSiamese

__all__ = ["backbone_features", "checkpoint_callback", "choose_n_query", "evaluate_unseen", "format_table",
           "log_results", "log_roc", "main", "parse_classes", "run_siamese", "verification_curve"]  # as before


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


def checkpoint_callback(folder: str | Path, every_n_steps: int = 0) -> ModelCheckpoint:
    """``last.ckpt`` in ``folder`` every ``every_n_steps`` training steps, or at each epoch end (0).

    Lightning writes ``last.ckpt`` at an epoch end only together with a top-k checkpoint, so the epoch-end
    mode also keeps the latest ``epoch=E-step=S.ckpt`` (one file, replaced each epoch).
    """
    return ModelCheckpoint(dirpath=folder, save_last=True, save_top_k=0 if every_n_steps else 1,
                           every_n_train_steps=every_n_steps or None)


def run_siamese(dataset: str = "fashion_mnist", data_dir: str = "./data",
                train_classes: Iterable[int | str] = range(7), eval_classes: Iterable[int | str] = range(7, 10),
                backbone: str | None = None, pretrained: str | None = None, loss: str = "triplet",
                mining: str = "semi_hard", margin: float | None = None, embedding_dim: int = 128,
                epochs: int = 5, p: int | None = None, k: int = 8, batches_per_epoch: int | None = None,
                lr: float = 0.5, train_subset: int | None = None, eval_subset: int | None = None,
                class_balanced: bool = True, near_duplicates: str = "drop", hash_size: int = 8,
                episodes: int = 600, n_query: int | None = None, out: str | Path = "out/siamese",
                download: bool = True, seed: int = 0, progress: bool = True, log_to: str = "wandb",
                wandb_mode: str | None = None, ckpt_path: str | None = None,
                ckpt_every_n_steps: int = 0) -> dict[str, Any]:
    """Train on ``train_classes``, evaluate before/after on ``eval_classes``, export; returns the results.

    Classes are indices or names. ``backbone=None`` means the pretrained file's architecture, or ``tiny_cnn``
    without one. ``p=None`` uses every training class in each batch (at most 16). ``lr`` is per 256 images
    (SGD, cosine schedule). ``class_balanced``, ``near_duplicates`` and ``hash_size`` are
    :class:`PKDataModule`'s. ``n_query=None`` sizes the episodes to the data (:func:`choose_n_query`).
    Checkpoints: ``<out>/checkpoints/last.ckpt`` at each epoch end, or every ``ckpt_every_n_steps`` steps;
    ``ckpt_path`` resumes from one. ``log_to`` and ``wandb_mode`` are :func:`ssl_siamese.cli.loggers.make_logger`'s;
    a run resumed from a checkpoint continues the W&B run the checkpoint was written under.
    Raises ``ValueError`` for a selection, evaluation size or checkpoint that cannot work, before training.

    Args:
        dataset: A labelled dataset: fashion_mnist, cifar10, cifar100, folder (one sub-folder per class,
            optionally in train/ and test/), synthetic.
        data_dir: Where the dataset lies.
        train_classes: Indices, ranges or names, e.g. 0-6, 0,2,4 or Sneaker,Bag (the run prints them all).
        eval_classes: As --train_classes, disjoint from them.
        backbone: Default: the pretrained file's, else tiny_cnn.
        pretrained: An exported backbone (export_backbone) to start from.
        loss: Metric loss.
        mining: Which triplets of a batch the triplet loss uses.
        margin: Default: 0.2 triplet, 1.0 contrastive.
        embedding_dim: Output size of the embedding head.
        epochs: 0: evaluate only.
        p: Classes per batch (default: all train classes).
        k: Images per class in a batch.
        batches_per_epoch: P x K batches per epoch (default: about one pass over the training images).
        lr: Per 256 images.
        train_subset: At most this many training images (seeded).
        eval_subset: At most this many eval images (seeded).
        class_balanced: True: classes drawn uniformly into batches; false: in proportion to their size.
        near_duplicates: Training images that are near-copies of eval images: report, drop, or fail.
        hash_size: Average-hash side for the duplicate check.
        episodes: Few-shot episodes (the 95% CI shrinks with more).
        n_query: Queries per class in the 1-shot episodes (default: 15, or fewer when the smallest eval class
            has fewer than 16 images).
        out: Output folder: checkpoints/, exported_models/, logs.
        download: Download a missing torchvision dataset.
        seed: Seeds the model, the batches and the evaluation.
        progress: Show a progress bar.
        log_to: Experiment logger.
        wandb_mode: W&B: offline (under <out>/wandb, `wandb sync` it later) or online; unset: $WANDB_MODE if
            set, else offline.
        ckpt_path: Resume from this checkpoint (e.g. <out>/checkpoints/last.ckpt).
        ckpt_every_n_steps: Write <out>/checkpoints/last.ckpt every N training steps; 0: at each epoch end.
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
    write_results(out, results)
    finish_loggers(loggers)
    return results


PROG = "python -m ssl_siamese.recipes.siamese"
CLASSES = "indices, ranges or names, e.g. 0-6, 0,2,4 or Sneaker,Bag (the run prints them all)"
FLAGS = {
    "dataset": Flag("data.dataset"),
    "data_dir": Flag("data.data_dir"),
    "download": Flag("data.download"),
    "train_classes": Flag(type=str, default="0-6", convert=parse_classes, help=f"Training classes: {CLASSES}."),
    "eval_classes": Flag(type=str, default="7-9", convert=parse_classes,
                         help="Unseen classes to evaluate on, as --train_classes, disjoint from them."),
    "loss": Flag(choices=["triplet", "contrastive"]),
    "mining": Flag(choices=["batch_hard", "semi_hard", "batch_all"]),
    "near_duplicates": Flag(choices=NEAR_DUPLICATE_MODES),
    "log_to": Flag(choices=LOGGERS),
    "wandb_mode": Flag(choices=WANDB_MODES),
}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """The command line: parse, run, and turn a wrong input (``ValueError``, missing file) into a one-line exit."""
    return recipe_main(run_siamese, PROG, __doc__.split("\n\n")[0], FLAGS, argv)


if __name__ == "__main__":
    main()
