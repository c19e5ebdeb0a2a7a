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

from pathlib import Path

from ssl_siamese.data.info import DEFAULT_VAL_FRACTION
from ssl_siamese.data.storage import EvaluationSplits, open_storage, resolve_dataset

__all__ = ["EvaluationSplits", "evaluation_splits"]


def evaluation_splits(dataset: str, data_dir: str | Path = "./data", image_size: int | None = None,
                      download: bool = True, seed: int = 0, val_fraction: float = DEFAULT_VAL_FRACTION,
                      cache_dir: str | Path | None = None, num_workers: int = 0) -> EvaluationSplits:
    """The labelled train and test images of ``dataset`` for a probe or fine-tuning (see the module docstring).

    ``seed`` and ``val_fraction`` are pretraining's ``--data.seed`` and ``--data.val_fraction``: they draw the
    test images of a labelled folder without ``test/`` (pretraining with ``--data.classes`` drew them among
    those classes only, so from other images). ``image_size`` applies to folders and shards. The dataset's
    storage (:meth:`~ssl_siamese.data.storage.Storage.evaluation_splits`) reads them.

    Raises:
        DataNotFoundError: the data is not there.
        ValueError: data without labels, or a folder of which nothing is held out.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"--data.val_fraction must be in [0, 1), not {val_fraction}: the share of each class of a "
                         "labelled folder without test/ that pretraining held out (0.1 by default).")
    resolved = resolve_dataset(dataset, data_dir)
    redirected = resolved != dataset
    note = " (the folder given is a prepared shard folder: read as --data.dataset stream)" if redirected else ""
    storage = open_storage({"dataset": resolved, "data_dir": data_dir, "image_size": image_size, "download": download,
                            "seed": seed, "val_fraction": val_fraction, "cache_dir": cache_dir,
                            "num_workers": num_workers})
    return storage.evaluation_splits(note)
