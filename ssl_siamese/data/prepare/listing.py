"""Listing a source folder and splitting it (the plan of a prepare run): which file goes to which split, with
which label, and in which order it is written.

Example:
    >>> jobs, classes, skipped, rule = plan(Path("photos/"), val_fraction=0.1)  # doctest: +SKIP
    >>> rule, len(jobs["train"]), classes[:2]
    ('hash', 9000, ['cat', 'dog'])
    >>> written = storage_order(jobs["train"], seed=0)  # the same seeded permutation on every run
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

from ssl_siamese.data.info import MAX_HELD_OUT
from ssl_siamese.data.images import list_image_files


@dataclass(frozen=True)
class Job:
    """One image file to write: its position in the sorted listing of the whole source, path and label."""

    index: int
    path: str
    relative: str
    label: int


def _hash_fraction(relative: str) -> float:
    """A stable number in [0, 1) from a relative path: the same file lands in the same split on every run."""
    return int.from_bytes(hashlib.sha1(relative.encode("utf-8")).digest()[:8], "big") / 2.0**64


def _labels(files: list[Path], root: Path) -> tuple[dict[Path, str | None], bool]:
    """Class name of each file (its first sub-folder under ``root``), and whether every file has one."""
    names = {path: (path.relative_to(root).parts[0] if len(path.relative_to(root).parts) > 1 else None)
             for path in files}
    return names, bool(names) and all(name is not None for name in names.values())


def plan(src: Path, val_fraction: float) -> tuple[dict[str, list[Job]], list[str], list[tuple[str, str]], str]:
    """``(jobs per split, classes, skipped (relative path, reason), split rule)`` for the source folder.

    Split rule "folders" when ``src`` has ``train/`` and ``val/`` (or ``test/``) sub-folders, else "hash": a file
    goes to val when the hash of its relative path is below ``val_fraction`` (the lowest hashes, at most
    :data:`MAX_HELD_OUT`). Labels are the class sub-folders (sorted, one list for both splits) when every
    image sits in one; otherwise every label is -1 and the class list is empty.
    """
    images, others = list_image_files(src)
    skipped = [(path.relative_to(src).as_posix(), f"not an image file type ({path.suffix or 'no extension'})")
               for path in others]
    held_out = next((name for name in ("val", "test") if (src / name).is_dir()), None)
    has_train = (src / "train").is_dir()
    if held_out is not None and not has_train:  # else its images would become a class named "val"
        raise ValueError(f"SRC {src} has a {held_out}/ folder but no train/ folder; put the training images "
                         f"in {src / 'train'} (one sub-folder per class).")
    if has_train and held_out is not None:
        rule, roots = "folders", {"train": src / "train", "val": src / held_out}
    else:  # a train/ folder alone is the training set, split by hash like a plain folder
        rule, roots = "hash", {"train": src / "train" if has_train else src}
    members: dict[str, list[Path]] = {split: [] for split in roots}
    for path in images:
        split = next((s for s, root in roots.items() if root in path.parents), None)
        if split is None:
            used = " and ".join(f"{root.name}/" for root in roots.values())
            skipped.append((path.relative_to(src).as_posix(), f"outside the {used} folders"))
        else:
            members[split].append(path)
    names, labelled = {}, True
    for split, root in roots.items():
        split_names, split_labelled = _labels(members[split], root)
        names.update(split_names)
        labelled = labelled and (split_labelled or not members[split])
    classes = sorted({name for name in names.values() if name is not None}) if labelled else []
    label_of = {name: i for i, name in enumerate(classes)}
    position = {path: i for i, path in enumerate(images)}
    jobs = {split: [Job(position[path], str(path), path.relative_to(src).as_posix(),
                        label_of.get(names[path], -1) if labelled else -1) for path in files]
            for split, files in members.items()}
    if rule == "hash":
        ranked = sorted((_hash_fraction(job.relative), job.index) for job in jobs["train"])
        held = {index for fraction, index in ranked[:MAX_HELD_OUT] if fraction < val_fraction}
        jobs = {"train": [job for job in jobs["train"] if job.index not in held],
                "val": [job for job in jobs["train"] if job.index in held]}
    return {split: js for split, js in jobs.items() if js}, classes, skipped, rule



def storage_order(jobs: list[Job], seed: int) -> list[Job]:
    """``jobs`` in the order they are written: a permutation seeded by ``seed`` (the same on every run).

    The sorted listing groups classes (and, in an unlabelled folder, similar images), and litdata's reading
    shuffle only permutes chunks and the items inside each chunk, so shards written in listing order stream
    batches of one class or two (issue 23). Written in a random order, as WebDataset and FFCV advise, every
    chunk is a uniform sample of the split and so is every batch read from it.
    """
    order = list(jobs)
    random.Random(seed).shuffle(order)
    return order
