"""The output folder of ``prepare``: its files, its state between runs, and writing one split with litdata.

Each split is written to ``OUT_DIR/.incomplete-<split>/`` and renamed to ``OUT_DIR/<split>/`` when done;
``.prepare.json`` marks an unfinished run (and the settings a rerun must match); ``dataset.json`` is
written last, atomically. Version 2 folders hold their samples in a seeded random order (``"order":
"shuffled"``, ``"order_seed"``); a version 1 folder (sorted order, issue 23) is rewritten by a rerun.

Example:
    >>> lines = write_split(out, "train", jobs["train"], Encoding(), num_workers=4, chunk_bytes="64MB",
    ...                     verbose=True)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from ssl_siamese.data.prepare.encode import Encoding, _SampleWriter
from ssl_siamese.data.prepare.listing import Job

FORMAT = "ssl_siamese.shards"
VERSION = 2
ORDER = "shuffled"
"""dataset.json's "order" since version 2: samples written in a seeded random order (listing.storage_order)."""
SPLITS = ("train", "val")
DATASET_JSON = "dataset.json"
SKIPPED_TXT = "skipped.txt"
SETTINGS_JSON = ".prepare.json"
"""Written when a run starts: marks OUT_DIR as ours and holds the settings a resumed run must match."""



def write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def split_count(split_dir: Path) -> int:
    index = read_json(split_dir / "index.json") or {}
    return sum(chunk["chunk_size"] for chunk in index.get("chunks", []))


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def clear(*paths: Path) -> None:
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def reprepare_command(meta: dict[str, Any], out: str) -> str:
    """The prepare command that writes ``out`` again with the settings recorded in its dataset.json."""
    encoding = "--lossless" if meta.get("encoding") == "png" else f"--quality {meta.get('quality', 90)}"
    return (f"python -m ssl_siamese.data.prepare {meta.get('source', 'IMAGE_FOLDER')} {out} --short_side "
            f"{meta.get('short_side') or 0} {encoding} --val_fraction {meta.get('val_fraction')}")


def prepare_out_dir(out: Path, src: Path, settings: dict[str, Any], overwrite: bool,
                    verbose: bool = False) -> dict[str, Any] | None:
    """Make ``out`` ready to write; returns its dataset.json when it is already complete (and not overwritten).

    Refuses a non-empty folder this module did not write (unless ``overwrite``), and says clearly when
    ``out`` cannot be written to. A complete folder in the sorted order of version 1 is rewritten.
    """
    if out == src or out in src.parents or src in out.parents:
        raise ValueError(f"OUT_DIR {out} and SRC {src} overlap; write the shards to a folder outside the source.")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"OUT_DIR {out} exists and is not a folder.")
    if out.is_dir() and any(out.iterdir()):
        done = read_json(out / DATASET_JSON)
        ours = (done or {}).get("format") == FORMAT or (out / SETTINGS_JSON).is_file()
        if overwrite:
            shutil.rmtree(out)
        elif not ours:
            found = ", ".join(sorted(path.name for path in out.iterdir())[:5])
            raise FileExistsError(f"OUT_DIR {out} is not empty and was not written by ssl_siamese.data.prepare "
                                  f"(it holds {found}); choose a new folder, or pass --overwrite to replace it.")
        elif done is not None and done.get("order") == ORDER:
            return done
        elif done is not None:  # complete, but class-sorted: it would stream one-class batches
            if verbose:
                print(f"prepare: {out} was written in sorted order by an older version (batches of one class); "
                      f"rewriting it in a seeded random order.", flush=True)
            clear(*out.iterdir())
        elif read_json(out / SETTINGS_JSON) != settings:  # an unfinished run with other settings: start over
            clear(*out.iterdir())
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_atomically(out / SETTINGS_JSON, json.dumps(settings, indent=1))
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


def write_split(out: Path, split: str, jobs: list[Job], encoding: Encoding, num_workers: int,
                 chunk_bytes: int | str, verbose: bool, start_method: str | None = None) -> list[str]:
    """Write one split with ``litdata.optimize`` into ``.incomplete-<split>/``, then rename it to ``<split>/``.

    Returns the skipped files' lines. litdata's chunk cache goes to a private folder under ``out``: its
    default (``/tmp/chunks``) is shared by every optimize run on the machine and emptied when one starts.
    """
    import litdata

    partial, skip_dir, cache = out / f".incomplete-{split}", out / f".skipped-{split}", out / f".cache-{split}"
    clear(partial, skip_dir, cache, out / split)
    skip_dir.mkdir()
    with _Environment(DATA_OPTIMIZER_CACHE_FOLDER=str(cache / "chunks"),
                      DATA_OPTIMIZER_DATA_CACHE_FOLDER=str(cache / "data")):
        litdata.optimize(fn=_SampleWriter(jobs, encoding, str(skip_dir)), inputs=list(range(len(jobs))),
                         output_dir=str(partial), chunk_bytes=chunk_bytes, num_workers=num_workers,
                         keep_data_ordered=True, reorder_files=False, mode=None, verbose=verbose,
                         start_method=start_method)
    lines = [path.read_text(encoding="utf-8") for path in sorted(skip_dir.glob("*.txt"))]
    write_atomically(out / f".skipped-{split}.txt", "".join(lines))
    if (partial / "index.json").is_file():
        os.replace(partial, out / split)
    clear(partial, skip_dir, cache)
    return lines


def skipped_lines(out: Path, split: str) -> list[str]:
    path = out / f".skipped-{split}.txt"
    return path.read_text(encoding="utf-8").splitlines(keepends=True) if path.is_file() else []


