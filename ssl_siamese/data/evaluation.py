"""The labelled train and test images that the evaluation recipes measure a backbone on, for every dataset
pretraining reads, with the test images pretraining itself validated on and did not train on:

- ``cifar10``, ``cifar100``, ``stl10``, ``fashion_mnist``, ``synthetic``: the dataset's test split;
- ``folder`` with ``test/`` (or ``val/``): that folder, its classes matched to the training classes by name;
- ``folder`` without one: the share of each class that pretraining held out
  (:func:`~ssl_siamese.data.splits.split_held_out` with the same ``val_fraction`` and data ``seed``, by default
  pretraining's defaults 0.1 and 0);
- ``stream``, a folder written by ``python -m ssl_siamese.data.prepare`` (also when given as ``folder``, as in
  pretraining): its ``val`` split, held out by ``prepare``; the training images are its ``train`` split. Both
  are decoded into memory, resized and centre-cropped to ``image_size`` as the kNN monitor's images are.

``test_split`` says which, in words, for the log and ``results.json``.

Example:
    >>> splits = evaluation_splits("folder", "photos/", image_size=64)  # doctest: +SKIP
    >>> len(splits.train), len(splits.test), splits.test_split
    (1800, 200, 'the 200 images held out of photos (0.1 of each class, data seed 0), ...')
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ssl_siamese.data.folders import folder_split_dir
from ssl_siamese.data.info import DEFAULT_VAL_FRACTION, ImageTensors, check_dataset
from ssl_siamese.data.sources import load_split
from ssl_siamese.data.splits import align_classes, split_held_out
from ssl_siamese.data.streamed import ShardFolder, looks_prepared, read_split


@dataclass
class EvaluationSplits:
    """What :func:`evaluation_splits` returns: the two splits, the dataset read and which images are the test ones."""

    train: ImageTensors
    test: ImageTensors
    dataset: str
    test_split: str


def evaluation_splits(dataset: str, data_dir: str | Path = "./data", image_size: int | None = None,
                      download: bool = True, seed: int = 0, val_fraction: float = DEFAULT_VAL_FRACTION,
                      cache_dir: str | Path | None = None, num_workers: int = 0) -> EvaluationSplits:
    """The labelled train and test images of ``dataset`` for a probe or fine-tuning (see the module docstring).

    ``seed`` and ``val_fraction`` are pretraining's ``--data.seed`` and ``--data.val_fraction``: they draw the
    test images of a labelled folder without ``test/`` (pretraining with ``--data.classes`` drew them among
    those classes only, so from other images). ``image_size`` applies to folders and shards.

    Raises:
        DataNotFoundError: the data is not there.
        ValueError: data without labels, or a folder of which nothing is held out.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"--data.val_fraction must be in [0, 1), not {val_fraction}: the share of each class of a "
                         "labelled folder without test/ that pretraining held out (0.1 by default).")
    redirected = dataset == "folder" and looks_prepared(data_dir)
    dataset = "stream" if redirected else dataset
    info = check_dataset(dataset)
    where = str(data_dir) if dataset == "stream" else Path(data_dir).expanduser().resolve()
    if dataset == "stream":
        shards = ShardFolder(data_dir)
        if not shards.classes:
            raise ValueError(f"The shards in {shards.root} hold no labels (prepared from a folder without one "
                             "sub-folder per class), so there is nothing to evaluate with; prepare a labelled folder.")
        size = image_size or info.image_size
        train, test = (read_split(shards, split, size, num_workers=num_workers) for split in ("train", "val"))
        rule = shards.meta.get("split_rule")
        how = {"hash": f"{shards.meta.get('val_fraction', '')} of the images by path hash",
               "folders": "its val/ or test/ folder"}.get(rule, "by prepare")
        note = " (the folder given is a prepared shard folder: read as --data.dataset stream)" if redirected else ""
        return EvaluationSplits(train, test, dataset, f"the val split of the shards in {shards.root}{note} "
                                f"({len(test)} images, held out by prepare: {how}), which pretraining validated on "
                                "and did not train on")
    train = load_split(dataset, "train", data_dir, download, image_size, cache_dir)
    test_dir = folder_split_dir(where, "test") if dataset == "folder" else None
    if dataset == "folder" and test_dir is None:
        if not train.has_labels:
            raise ValueError(f"{where} has no class sub-folders, so its images have no labels to evaluate with; "
                             "put them in one sub-folder per class.")
        train, test = split_held_out(train, val_fraction, seed)
        if test is None:
            raise ValueError(f"{where} has no test/ or val/ folder, and val_fraction {val_fraction:g} of its "
                             f"{len(train)} images in {len(train.classes)} classes holds out none to test on: "
                             "pass the --data.val_fraction pretraining used (0.1 by default), or add a test/ folder.")
        return EvaluationSplits(train, test, dataset, f"the {len(test)} images held out of {where} "
                                f"({val_fraction:g} of each class, data seed {seed}), which pretraining with the same "
                                "--data.val_fraction and --data.seed validated on and did not train on")
    test = load_split(dataset, "test", data_dir, download, image_size, cache_dir)
    if dataset == "folder":
        return EvaluationSplits(train, align_classes(test, train.classes), dataset, f"the folder {test_dir}")
    return EvaluationSplits(train, test, dataset, f"the test split of {dataset}")
