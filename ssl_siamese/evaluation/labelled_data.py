"""Which labelled data a trained backbone is evaluated on, and those images: the data it records, by default.

A backbone file records what it was pretrained on (``data``, ``data_dir``, ``data_seed``, ``val_fraction``);
``linear_probe`` and ``finetune`` evaluate on that data by default (:func:`choose_dataset`), on the images
pretraining held out (:func:`held_out_rule`, :func:`evaluation_data`).

Example:
    >>> dataset, data_dir, why = choose_dataset(None, None, metadata, "The backbone b.pt")
    >>> splits = evaluation_data(dataset, data_dir, 32, (5000, 1000), seed=0, rule=held_out_rule(metadata))
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ssl_siamese.data import DATASETS, DEFAULT_VAL_FRACTION, EvaluationSplits, ImageTensors, evaluation_splits


def labelled_datasets() -> list[str]:
    """The datasets that can have labels, which a linear probe or fine-tuning can be measured on (a folder or
    shard folder needs class sub-folders)."""
    return [name for name, info in DATASETS.items() if info.num_classes or name in ("folder", "stream")]


def choose_dataset(dataset: str | None, data_dir: str | Path | None, metadata: dict[str, Any],
                   source: str) -> tuple[str, str, str]:
    """``(dataset, data_dir, why)``: the one given, else the one recorded in the backbone's ``metadata``.

    An export records ``data`` (and, from the recipes, ``data_dir``); a Lightning checkpoint its datamodule's
    ``dataset`` and ``data_dir`` (``load_backbone`` puts both in the metadata). ``why`` says which applied.

    Raises:
        ValueError: no ``dataset`` given and none recorded, or a recorded dataset without labels.
    """
    choices = ", ".join(labelled_datasets())
    if dataset is not None:
        recorded_dir = metadata.get("data_dir") if metadata.get("data") == dataset else None
        return dataset, str(data_dir or recorded_dir or "./data"), "given with --data.dataset"
    recorded = metadata.get("data")
    if recorded is None:
        raise ValueError(f"{source} records no dataset it was trained on, so there is no default to evaluate on: "
                         f"pass --data.dataset NAME (one of {choices}) and --data.data_dir PATH.")
    if recorded not in labelled_datasets():
        raise ValueError(f"{source} was trained on {recorded!r}, which has no labels to evaluate with: pass a "
                         f"labelled --data.dataset (one of {choices}) and --data.data_dir PATH.")
    where = str(data_dir or metadata.get("data_dir") or "./data")
    return recorded, where, "the data the backbone was trained on, recorded in its metadata (--data.dataset overrides)"


def fill_preprocessing(metadata: dict[str, Any], dataset: str, image_size: int | None = None) -> dict[str, Any]:
    """``metadata`` with ``image_size`` (``image_size`` when given), ``mean`` and ``std`` filled in from ``dataset``
    where the backbone records none."""
    info = DATASETS[dataset]
    return {**metadata, "image_size": image_size or metadata.get("image_size") or info.image_size,
            "mean": metadata.get("mean") or info.mean, "std": metadata.get("std") or info.std}


def labelled_subset(split: ImageTensors, size: int | None, seed: int) -> ImageTensors:
    """The labelled images of ``split`` (label >= 0); with ``size``, a random ``size`` of them seeded by ``seed``."""
    split = split.subset(torch.nonzero(split.labels >= 0).flatten())
    if size is None or size >= len(split):
        return split
    return split.subset(torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:size])


def held_out_rule(metadata: dict[str, Any], data_seed: int | None = None,
                  val_fraction: float | None = None) -> tuple[int, float]:
    """``(data seed, val_fraction)`` that drew the held-out share of a labelled folder without ``test/``: those
    given (``--data.seed``, ``--data.val_fraction``), else those the backbone records (``data_seed``,
    ``val_fraction``), else pretraining's defaults (0 and 0.1)."""
    if data_seed is None:
        data_seed = int(metadata.get("data_seed") or 0)
    if val_fraction is None:
        recorded = metadata.get("val_fraction")
        val_fraction = DEFAULT_VAL_FRACTION if recorded is None else float(recorded)
    return data_seed, val_fraction


def evaluation_data(dataset: str, data_dir: str, image_size: int, subsets: tuple[int | None, int | None],
                    seed: int, rule: tuple[int, float], download: bool = True) -> EvaluationSplits:
    """The labelled train and test images to evaluate on (:func:`ssl_siamese.data.evaluation_splits`, ``rule``
    from :func:`held_out_rule`), each cut to a seeded random subset of ``subsets`` images (seeds ``seed`` and
    ``seed + 1``) when given.

    Raises:
        ValueError: no labelled images in one of the two splits (and ``evaluation_splits``' errors).
    """
    splits = evaluation_splits(dataset, data_dir, image_size, download, *rule)
    train, test = (labelled_subset(split, size, seed + i)
                   for i, (split, size) in enumerate(zip((splits.train, splits.test), subsets)))
    if len(train) == 0 or len(test) == 0:
        raise ValueError(f"{splits.dataset} in {data_dir} has no labelled train or test images to evaluate with.")
    return replace(splits, train=train, test=test)
