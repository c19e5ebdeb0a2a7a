"""Write an image folder as sharded litdata datasets for pretraining on data larger than memory (issue 13).

The output follows ``notes/shards_format.md``: ``OUT_DIR/train/`` and ``OUT_DIR/val/`` are litdata optimized
datasets of ``{"image": encoded JPEG/PNG bytes, "label": int (-1 unlabelled), "index": int}``, beside
``dataset.json`` (written last) and ``skipped.txt``. Files are listed and decoded by :mod:`ssl_siamese.images`
(:func:`~ssl_siamese.images.list_image_files`, :func:`~ssl_siamese.images.read_image`); an RGB or grayscale
JPEG whose short side is within the cap is stored as its original bytes.

Resumable: each split is written to ``OUT_DIR/.incomplete-<split>/`` and renamed to ``OUT_DIR/<split>/``
when done, so rerunning the same command after a kill redoes only the unfinished split and gives the same
samples in the same order. A finished ``OUT_DIR`` is left alone unless ``overwrite``.

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
import hashlib
import io
import json
import os
import shutil
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ssl_siamese.data.info import DEFAULT_VAL_FRACTION, MAX_HELD_OUT
from ssl_siamese.images import ImageReadError, list_image_files, read_image

FORMAT = "ssl_siamese.shards"
VERSION = 1
SPLITS = ("train", "val")
DATASET_JSON = "dataset.json"
SKIPPED_TXT = "skipped.txt"
SETTINGS_JSON = ".prepare.json"
"""Written when a run starts: marks OUT_DIR as ours and holds the settings a resumed run must match."""


@dataclass(frozen=True)
class Job:
    """One image file to write: its position in the sorted listing of the whole source, path and label."""

    index: int
    path: str
    relative: str
    label: int


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


# ---------------------------------------------------------------- listing and splitting the source


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


# ---------------------------------------------------------------- encoding one file (runs in litdata's workers)


@dataclass(frozen=True)
class Encoding:
    """How images are stored: JPEG at ``quality`` (or PNG when ``lossless``), short side capped at ``short_side``."""

    short_side: int | None = 256
    quality: int = 90
    lossless: bool = False


def _original_jpeg_fits(path: str, short_side: int | None) -> bool:
    """True for a readable RGB or grayscale JPEG, not EXIF-rotated, whose short side is within the cap."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            fits = (image.format == "JPEG" and image.mode in ("RGB", "L")
                    and (short_side is None or min(image.size) <= short_side)
                    and image.getexif().get(0x0112, 1) == 1)  # orientation: stored bytes decode upright
        if fits:
            read_image(path, size=8)  # decodes at 1/8 scale: a truncated or corrupt file raises here
        return fits
    except (ImageReadError, OSError, SyntaxError, ValueError):
        return False  # the full decode below says why


def encode_file(path: str, encoding: Encoding) -> bytes:
    """The bytes stored for one file: its own bytes when :func:`_original_jpeg_fits`, else decoded by
    :func:`read_image`, the short side resized down to the cap (bicubic, never up) and encoded.

    Raises:
        ImageReadError, FileNotFoundError: the file is not a readable image.
    """
    from PIL import Image

    if not encoding.lossless and _original_jpeg_fits(path, encoding.short_side):
        return Path(path).read_bytes()
    image = Image.fromarray(read_image(path).permute(1, 2, 0).numpy())
    cap = encoding.short_side
    if cap is not None and min(image.size) > cap:
        scale = cap / min(image.size)
        size = tuple(cap if side == min(image.size) else max(cap, round(side * scale)) for side in image.size)
        image = image.resize(size, Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    if encoding.lossless:
        image.save(buffer, format="PNG")
    else:
        image.save(buffer, format="JPEG", quality=encoding.quality)
    return buffer.getvalue()


class _SampleWriter:
    """litdata ``optimize``'s ``fn``: position in the split's job list -> sample dict, or None when unreadable.

    An unreadable file is noted as ``<skip_dir>/<index>.txt`` ("relative path<TAB>reason"), so the main
    process can list it after the workers are done.
    """

    def __init__(self, jobs: list[Job], encoding: Encoding, skip_dir: str) -> None:
        self.jobs, self.encoding, self.skip_dir = jobs, encoding, skip_dir

    def __call__(self, position: int) -> dict[str, Any] | None:
        job = self.jobs[position]
        try:
            data = encode_file(job.path, self.encoding)
        except (ImageReadError, OSError, ValueError) as error:
            reason = " ".join(str(error).replace(job.path, job.relative).split())
            Path(self.skip_dir, f"{job.index}.txt").write_text(f"{job.relative}\t{reason}\n", encoding="utf-8")
            return None
        return {"image": data, "label": job.label, "index": job.index}


# ---------------------------------------------------------------- the output folder


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _split_count(split_dir: Path) -> int:
    index = _read_json(split_dir / "index.json") or {}
    return sum(chunk["chunk_size"] for chunk in index.get("chunks", []))


def _folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def _clear(*paths: Path) -> None:
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _prepare_out_dir(out: Path, src: Path, settings: dict[str, Any], overwrite: bool) -> dict[str, Any] | None:
    """Make ``out`` ready to write; returns its dataset.json when it is already complete (and not overwritten).

    Refuses a non-empty folder this module did not write (unless ``overwrite``), and says clearly when
    ``out`` cannot be written to.
    """
    if out == src or out in src.parents or src in out.parents:
        raise ValueError(f"OUT_DIR {out} and SRC {src} overlap; write the shards to a folder outside the source.")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"OUT_DIR {out} exists and is not a folder.")
    if out.is_dir() and any(out.iterdir()):
        done = _read_json(out / DATASET_JSON)
        ours = (done or {}).get("format") == FORMAT or (out / SETTINGS_JSON).is_file()
        if overwrite:
            shutil.rmtree(out)
        elif not ours:
            found = ", ".join(sorted(path.name for path in out.iterdir())[:5])
            raise FileExistsError(f"OUT_DIR {out} is not empty and was not written by ssl_siamese.data.prepare "
                                  f"(it holds {found}); choose a new folder, or pass --overwrite to replace it.")
        elif done is not None:
            return done
        elif _read_json(out / SETTINGS_JSON) != settings:  # an unfinished run with other settings: start over
            _clear(*out.iterdir())
    try:
        out.mkdir(parents=True, exist_ok=True)
        _write_atomically(out / SETTINGS_JSON, json.dumps(settings, indent=1))
    except OSError as error:
        raise PermissionError(f"Cannot write to OUT_DIR {out}: {error}") from error
    return None


class _Environment:
    """Set environment variables for the duration of a ``with`` block (litdata's workers inherit them)."""

    def __init__(self, **values: str) -> None:
        self.values, self.saved = values, {}

    def __enter__(self) -> None:
        self.saved = {name: os.environ.get(name) for name in self.values}
        os.environ.update(self.values)

    def __exit__(self, *exc: Any) -> None:
        for name, value in self.saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _write_split(out: Path, split: str, jobs: list[Job], encoding: Encoding, num_workers: int,
                 chunk_bytes: int | str, verbose: bool, start_method: str | None = None) -> list[str]:
    """Write one split with ``litdata.optimize`` into ``.incomplete-<split>/``, then rename it to ``<split>/``.

    Returns the skipped files' lines. litdata's chunk cache goes to a private folder under ``out``: its
    default (``/tmp/chunks``) is shared by every optimize run on the machine and emptied when one starts.
    """
    import litdata

    partial, skip_dir, cache = out / f".incomplete-{split}", out / f".skipped-{split}", out / f".cache-{split}"
    _clear(partial, skip_dir, cache, out / split)
    skip_dir.mkdir()
    with _Environment(DATA_OPTIMIZER_CACHE_FOLDER=str(cache / "chunks"),
                      DATA_OPTIMIZER_DATA_CACHE_FOLDER=str(cache / "data")):
        litdata.optimize(fn=_SampleWriter(jobs, encoding, str(skip_dir)), inputs=list(range(len(jobs))),
                         output_dir=str(partial), chunk_bytes=chunk_bytes, num_workers=num_workers,
                         keep_data_ordered=True, reorder_files=False, mode=None, verbose=verbose,
                         start_method=start_method)
    lines = [path.read_text(encoding="utf-8") for path in sorted(skip_dir.glob("*.txt"))]
    _write_atomically(out / f".skipped-{split}.txt", "".join(lines))
    if (partial / "index.json").is_file():
        os.replace(partial, out / split)
    _clear(partial, skip_dir, cache)
    return lines


def _skipped_lines(out: Path, split: str) -> list[str]:
    path = out / f".skipped-{split}.txt"
    return path.read_text(encoding="utf-8").splitlines(keepends=True) if path.is_file() else []


# ---------------------------------------------------------------- the public entry points


def prepare(src: str | os.PathLike, out_dir: str | os.PathLike, short_side: int | None = 256, quality: int = 90,
            lossless: bool = False, val_fraction: float = DEFAULT_VAL_FRACTION, num_workers: int | None = None,
            chunk_bytes: int | str = "64MB", overwrite: bool = False, verbose: bool = True,
            start_method: str | None = None) -> PrepareReport:
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
    settings = {"source": str(src), **asdict(encoding), "val_fraction": val_fraction}
    done = _prepare_out_dir(out, src, settings, overwrite)
    if done is not None:
        report = PrepareReport(str(out), done["splits"], done["skipped"], _folder_bytes(out),
                               time.perf_counter() - start, True, done["split_rule"], done["classes"])
        if verbose:
            print(f"prepare: {out} is complete ({report.images:,} images); nothing to do (--overwrite redoes it).")
            asked = {"source": str(src), "encoding": "png" if lossless else "jpeg", "short_side": short_side,
                     "val_fraction": val_fraction, **({} if lossless else {"quality": quality})}
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
            _write_split(out, split, split_jobs, encoding, num_workers or os.cpu_count() or 1, chunk_bytes, verbose,
                         start_method)
        lines += _skipped_lines(out, split)
    lines.sort()
    _write_atomically(out / SKIPPED_TXT, "".join(lines))
    import litdata

    counts = {split: _split_count(out / split) for split in SPLITS if (out / split).is_dir()}
    meta = {"format": FORMAT, "version": VERSION, "engine": "litdata", "classes": classes, "splits": counts,
            "encoding": "png" if lossless else "jpeg", "quality": quality, "short_side": short_side,
            "val_fraction": val_fraction, "split_rule": rule, "source": str(src), "skipped": len(lines),
            "litdata_version": litdata.__version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    _write_atomically(out / DATASET_JSON, json.dumps(meta, indent=1) + "\n")
    for split in SPLITS:  # a kill just after a split's rename can leave its work folders
        _clear(out / f".skipped-{split}.txt", out / f".skipped-{split}", out / f".cache-{split}")
    _clear(out / SETTINGS_JSON)
    report = PrepareReport(str(out), counts, len(lines), _folder_bytes(out), time.perf_counter() - start,
                           False, rule, classes)
    if lines:
        warnings.warn(f"{len(lines)} files were skipped (not readable images); the list with reasons is "
                      f"{out / SKIPPED_TXT}", stacklevel=2)
    if verbose:
        print(report.summary(), flush=True)
    return report


def read_shards(out_dir: str | os.PathLike, split: str = "train", **kwargs: Any) -> "litdata.StreamingDataset":  # noqa: F821
    """One split of a prepared folder as a ``litdata.StreamingDataset`` (in stored order unless ``shuffle=True``).

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
    parser.add_argument("--start_method", choices=["spawn", "fork"], default=None,
                        help="how worker processes start (default: litdata's, spawn; fork starts faster)")
    args = parser.parse_args(argv)
    chunk_bytes = int(args.chunk_bytes) if args.chunk_bytes.isdigit() else args.chunk_bytes
    try:
        prepare(args.src, args.out_dir, args.short_side or None, args.quality, args.lossless, args.val_fraction,
                args.num_workers, chunk_bytes, args.overwrite, start_method=args.start_method)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from ssl_siamese.data import prepare as _module  # the importable copy, so litdata's workers can unpickle it

    sys.exit(_module.main())
