"""Write an image folder as sharded litdata datasets for pretraining on data larger than memory (issue 13).

The output follows ``notes/shards_format.md``: ``OUT_DIR/train/`` and ``OUT_DIR/val/`` are litdata optimized
datasets of ``{"image": encoded JPEG/PNG bytes, "label": int (-1 unlabelled), "index": int}``, beside
``dataset.json`` (written last) and ``skipped.txt``. Files are listed and decoded by :mod:`ssl_siamese.data.images`
(:func:`~ssl_siamese.data.images.list_image_files`, :func:`~ssl_siamese.data.images.read_image`); an RGB or grayscale
JPEG whose short side is within the cap is stored as its original bytes.

Each split is written in a random order seeded by ``seed`` (recorded in dataset.json as ``order_seed``):
the sorted listing groups classes, and litdata's reading shuffle cannot mix them back (issue 23).

Resumable: each split is written to ``OUT_DIR/.incomplete-<split>/`` and renamed to ``OUT_DIR/<split>/``
when done, so rerunning the same command after a kill redoes only the unfinished split and gives the same
samples in the same order. A finished ``OUT_DIR`` is left alone unless ``overwrite`` (or it was written in
the sorted order of older versions: then it is rewritten).

Example:
    python -m ssl_siamese.data.prepare photos/ shards/ --short_side 256 --num_workers 4

    >>> report = prepare("photos/", "shards/", num_workers=2)  # doctest: +SKIP
    >>> report.splits, report.skipped
    ({'train': 9000, 'val': 469}, 3)
    >>> read_shards("shards/", "train")[0]["label"]  # doctest: +SKIP
    0
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ssl_siamese.data.info import DEFAULT_VAL_FRACTION
from ssl_siamese.data.prepare.encode import Encoding
from ssl_siamese.data.prepare.output import (
    DATASET_JSON,
    FORMAT,
    ORDER,
    SETTINGS_JSON,
    SKIPPED_TXT,
    SPLITS,
    VERSION,
    clear,
    folder_bytes,
    prepare_out_dir,
    skipped_lines,
    split_count,
    write_atomically,
    write_split,
)
from ssl_siamese.data.prepare.listing import plan, storage_order


@dataclass
class PrepareReport:
    """What :func:`prepare` did: images per split, files skipped, bytes on disk, time taken."""

    out_dir: str
    splits: dict[str, int]
    skipped: int
    bytes_on_disk: int
    seconds: float
    already_complete: bool = False
    split_rule: str = "hash"
    classes: list[str] = field(default_factory=list)

    @property
    def images(self) -> int:
        return sum(self.splits.values())

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "images": self.images, "images_per_s": self.images_per_s}

    def summary(self) -> str:
        written = ", ".join(f"{split} {count:,}" for split, count in self.splits.items()) or "nothing"
        return (f"prepare: wrote {written} images, skipped {self.skipped:,}, {self.bytes_on_disk / 1e6:.1f} MB on "
                f"disk in {self.seconds:.1f} s ({self.images_per_s:.1f} images/s) -> {self.out_dir}")



def prepare(src: str | os.PathLike, out_dir: str | os.PathLike, short_side: int | None = 256, quality: int = 90,
            lossless: bool = False, val_fraction: float = DEFAULT_VAL_FRACTION, num_workers: int | None = None,
            chunk_bytes: int | str = "64MB", overwrite: bool = False, verbose: bool = True,
            start_method: str | None = None, seed: int = 0) -> PrepareReport:
    """Write the images under ``src`` to ``out_dir`` as litdata shards (see the module docstring).

    Args:
        src: an ImageFolder (class sub-folders, optionally inside train/ and val/ or test/) or any folder
            of images.
        out_dir: where the shards go; a finished one is left as it is unless ``overwrite``.
        short_side: cap on the shorter side (images are never upscaled); None for no cap.
        quality: JPEG quality of re-encoded images.
        lossless: store PNG instead of JPEG (no original JPEG bytes kept).
        val_fraction: share of images held out by path hash when the source has no train/ + val/ folders.
        num_workers: litdata worker processes (default: one per CPU).
        chunk_bytes: chunk size, as litdata takes it (bytes or "64MB").
        overwrite: replace whatever is in ``out_dir``.
        verbose: litdata's progress bar and the summary line.
        start_method: how litdata starts its workers: None = litdata's default ("spawn": safe, a few seconds
            per split to start); "fork" starts at once (used by the tests).
        seed: seeds the random order the samples of each split are written in (the same seed, the same shards).

    Raises:
        FileNotFoundError / NotADirectoryError: ``src`` missing; ValueError: no images in it.
        FileExistsError: ``out_dir`` holds something else; PermissionError: ``out_dir`` is not writable.
    """
    start = time.perf_counter()
    if short_side is not None and (not isinstance(short_side, int) or short_side < 1):
        raise ValueError(f"short_side must be a positive int or None, not {short_side!r}")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be 1-100, not {quality}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), not {val_fraction}")
    src, out = Path(src).expanduser().resolve(), Path(out_dir).expanduser().resolve()
    if not src.exists():
        raise FileNotFoundError(f"SRC {src} does not exist.")
    if not src.is_dir():
        raise NotADirectoryError(f"SRC {src} is not a folder of images.")
    encoding = Encoding(short_side, quality, lossless)
    settings = {"source": str(src), **asdict(encoding), "val_fraction": val_fraction, "order_seed": seed}
    done = prepare_out_dir(out, src, settings, overwrite, verbose)
    if done is not None:
        report = PrepareReport(str(out), done["splits"], done["skipped"], folder_bytes(out),
                               time.perf_counter() - start, True, done["split_rule"], done["classes"])
        if verbose:
            print(f"prepare: {out} is complete ({report.images:,} images); nothing to do (--overwrite redoes it).")
            asked = {"source": str(src), "encoding": "png" if lossless else "jpeg", "short_side": short_side,
                     "val_fraction": val_fraction, "order_seed": seed, **({} if lossless else {"quality": quality})}
            differing = [f"{key} {done.get(key)!r}" for key, value in asked.items() if done.get(key) != value]
            if differing:
                print(f"prepare: note: it was written with other settings ({', '.join(differing)}).")
        return report

    jobs, classes, skipped, rule = plan(src, val_fraction)
    if not jobs:
        found = ", ".join(path for path, _ in skipped[:5]) or "no files at all"
        raise ValueError(f"SRC {src} holds no image files ({len(skipped)} other files: {found}).")
    lines = [f"{path}\t{reason}\n" for path, reason in skipped]
    for split, split_jobs in jobs.items():
        if (out / split / "index.json").is_file():
            if verbose:
                print(f"prepare: {split} was finished by an earlier run; keeping it.")
        else:
            write_split(out, split, storage_order(split_jobs, seed), encoding, num_workers or os.cpu_count() or 1,
                        chunk_bytes, verbose, start_method)
        lines += skipped_lines(out, split)
    lines.sort()
    write_atomically(out / SKIPPED_TXT, "".join(lines))
    import litdata

    counts = {split: split_count(out / split) for split in SPLITS if (out / split).is_dir()}
    meta = {"format": FORMAT, "version": VERSION, "engine": "litdata", "classes": classes, "splits": counts,
            "encoding": "png" if lossless else "jpeg", "quality": quality, "short_side": short_side,
            "val_fraction": val_fraction, "split_rule": rule, "order": ORDER, "order_seed": seed,
            "source": str(src), "skipped": len(lines),
            "litdata_version": litdata.__version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    write_atomically(out / DATASET_JSON, json.dumps(meta, indent=1) + "\n")
    for split in SPLITS:  # a kill just after a split's rename can leave its work folders
        clear(out / f".skipped-{split}.txt", out / f".skipped-{split}", out / f".cache-{split}")
    clear(out / SETTINGS_JSON)
    report = PrepareReport(str(out), counts, len(lines), folder_bytes(out), time.perf_counter() - start,
                           False, rule, classes)
    if lines:
        warnings.warn(f"{len(lines)} files were skipped (not readable images); the list with reasons is "
                      f"{out / SKIPPED_TXT}", stacklevel=2)
    if verbose:
        print(report.summary(), flush=True)
    return report


def read_shards(out_dir: str | os.PathLike, split: str = "train", **kwargs: Any) -> "litdata.StreamingDataset":  # noqa: F821
    """One split of a prepared folder as a ``litdata.StreamingDataset`` (in stored order, a seeded random one,
    unless ``shuffle=True``).

    Each sample is ``{"image": memoryview of the encoded bytes, "label": int, "index": int}``;
    ``torch.frombuffer(sample["image"], dtype=torch.uint8)`` feeds ``torchvision.io.decode_image``.
    """
    import litdata

    folder = Path(out_dir) / split
    if not (folder / "index.json").is_file():
        raise FileNotFoundError(f"No finished {split!r} split in {out_dir} (no {folder / 'index.json'}).")
    return litdata.StreamingDataset(str(folder), **kwargs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ssl_siamese.data.prepare", description=__doc__.split("\n")[0])
    parser.add_argument("src", help="image folder (ImageFolder layout, optionally train/ + val/ or test/)")
    parser.add_argument("out_dir", help="where the shards, dataset.json and skipped.txt go")
    parser.add_argument("--short_side", type=int, default=256, help="cap on the shorter side; 0 = no cap")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality of re-encoded images")
    parser.add_argument("--lossless", action="store_true", help="store PNG instead of JPEG")
    parser.add_argument("--val_fraction", type=float, default=DEFAULT_VAL_FRACTION,
                        help="held-out share by path hash when SRC has no train/ + val/ folders")
    parser.add_argument("--num_workers", type=int, default=None, help="worker processes (default: CPU count)")
    parser.add_argument("--chunk_bytes", default="64MB", help="chunk size, e.g. 64MB")
    parser.add_argument("--overwrite", action="store_true", help="replace whatever is in OUT_DIR")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random order the samples are written in")
    parser.add_argument("--start_method", choices=["spawn", "fork"], default=None,
                        help="how worker processes start (default: litdata's, spawn; fork starts faster)")
    args = parser.parse_args(argv)
    chunk_bytes = int(args.chunk_bytes) if args.chunk_bytes.isdigit() else args.chunk_bytes
    try:
        prepare(args.src, args.out_dir, args.short_side or None, args.quality, args.lossless, args.val_fraction,
                args.num_workers, chunk_bytes, args.overwrite, start_method=args.start_method, seed=args.seed)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0

