"""Shard engines for pretraining on datasets larger than memory (issue 13): litdata vs WebDataset, one table.

The same samples (the JPEG bytes exactly as stored in the file, the int label, the int index) are written as
~64 MB shards by each installed engine (litdata ``optimize``; WebDataset ``ShardWriter``), then read back
through each engine's loader path (litdata ``StreamingDataset`` + ``StreamingDataLoader``; ``WebDataset``
with a shuffle buffer + ``WebLoader``) with the same workers and batch size, once raw (bytes, no decode)
and once decoded the same way for both (``torchvision.io.decode_jpeg`` in the worker, shortest side resized
to 224, centre crop, uint8). Every read checks that each index arrives exactly once with its label.
litdata's mid-epoch resume (``state_dict`` / ``load_state_dict``) is exercised too. MosaicML streaming is
listed when importable; it is not installed here (see BENCHMARKS.md).

    # the whole Imagenette train split (unpacked from ../shared/data to a temp dir), 2 loader workers
    python benchmarks/shard_engines.py --workers 2 --json shard_engines.json
    # smoke test (what the suite runs): a few hundred images, 1 worker
    python benchmarks/shard_engines.py --quick --json /tmp/shard_engines.json
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import platform
import random
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torchvision
from torchvision.datasets import ImageFolder
from torchvision.io import decode_jpeg
from torchvision.transforms.v2 import functional as F

ROOT = Path(__file__).resolve().parents[1]
IMAGENETTE_TAR = ROOT.parent / "shared" / "data" / "imagenette-224" / "imagenette-224.tar"
SHARD_BYTES = 64_000_000
SHUFFLE_BUFFER = 1000
SIZE = 224

Sample = dict[str, Any]


# ---------------------------------------------------------------- the samples, shared by every engine


def unpack_imagenette_train(tar_path: Path, into: Path) -> Path:
    """Extract the ``train/`` split of the Imagenette tar into ``into``; returns the ImageFolder root."""
    with tarfile.open(tar_path) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith("train/")]
        tar.extractall(into, members=members, filter="data")
    return into / "train"


def list_samples(root: Path, limit: int | None) -> list[tuple[int, str, int]]:
    """``(index, path, label)`` of an ImageFolder, or of ``limit`` of its files picked at random (seed 0)."""
    files = ImageFolder(str(root)).samples
    if limit and limit < len(files):
        files = sorted(random.Random(0).sample(files, limit))
    return [(index, path, label) for index, (path, label) in enumerate(files)]


def read_sample(item: tuple[int, str, int]) -> Sample:
    """One stored sample: the file's bytes as they are (no re-encode), its label and its index."""
    index, path, label = item
    return {"image": Path(path).read_bytes(), "label": label, "index": index}


def decode(sample: Sample) -> Sample:
    """The decode both engines run in their workers: JPEG -> shortest side 224 -> centre crop, uint8 CHW."""
    image = decode_jpeg(torch.frombuffer(bytearray(sample["image"]), dtype=torch.uint8),
                        mode=torchvision.io.ImageReadMode.RGB)
    image = F.center_crop(F.resize(image, SIZE, antialias=True), [SIZE, SIZE])
    return {**sample, "image": image}


def collate(samples: list[Sample]) -> Sample:
    """Batch: images stacked when decoded (a list of bytes when raw), labels and indexes as tensors.

    litdata hands out raw bytes as a ``memoryview`` of its chunk, which cannot cross to the main process:
    ``bytes()`` copies it (and is free on WebDataset's ``bytes``).
    """
    images = [s["image"] if isinstance(s["image"], torch.Tensor) else bytes(s["image"]) for s in samples]
    return {"image": torch.stack(images) if isinstance(images[0], torch.Tensor) else images,
            "label": torch.tensor([int(s["label"]) for s in samples]),
            "index": torch.tensor([int(s["index"]) for s in samples])}


def worker_start(workers: int) -> str | None:
    """Loader workers fork for every engine: ``litdata.optimize`` sets the process-wide start method to spawn,
    which would otherwise make every later loader in this process re-import torch in each worker."""
    return "fork" if workers > 0 else None


def folder_megabytes(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6


def check_epoch(batches: Iterable[Sample], expected: dict[int, int]) -> dict[str, Any]:
    """Drain ``batches`` (timed) and check that every index came once with its label (and 224 px when decoded)."""
    start = time.perf_counter()
    counts: collections.Counter[int] = collections.Counter()
    wrong_labels = bad_images = 0
    for batch in batches:
        indexes, labels = batch["index"].tolist(), batch["label"].tolist()
        counts.update(indexes)
        wrong_labels += sum(expected.get(i) != label for i, label in zip(indexes, labels))
        images = batch["image"]
        if isinstance(images, torch.Tensor):
            bad_images += int(images.dtype != torch.uint8 or tuple(images.shape[1:]) != (3, SIZE, SIZE))
    seconds = time.perf_counter() - start
    read = sum(counts.values())
    return {"img_per_s": read / seconds, "seconds": seconds, "read": read,
            "missing": len(set(expected) - set(counts)), "duplicates": sum(c - 1 for c in counts.values() if c > 1),
            "unknown": len(set(counts) - set(expected)), "wrong_labels": wrong_labels, "bad_images": bad_images,
            "every_index_once": read == len(expected) and set(counts) == set(expected)}


# ---------------------------------------------------------------- litdata


def litdata_prepare(items: list[tuple[int, str, int]], out: Path, workers: int) -> None:
    import litdata

    litdata.optimize(fn=read_sample, inputs=items, output_dir=str(out), chunk_bytes=SHARD_BYTES,
                     num_workers=workers, verbose=False)


def litdata_loader(out: Path, cache: Path, workers: int, batch_size: int,
                   transform: Callable[[Sample], Sample] | None) -> Any:
    import litdata

    dataset = litdata.StreamingDataset(str(out), cache_dir=str(cache), shuffle=True, seed=0, transform=transform)
    return litdata.StreamingDataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate,
                                       multiprocessing_context=worker_start(workers))


def litdata_resume(out: Path, cache: Path, workers: int, batch_size: int, expected: dict[int, int]) -> dict[str, Any]:
    """Read half an epoch, save the loader state, read the rest with a new loader: one epoch, no duplicates?"""
    loader = litdata_loader(out, cache, workers, batch_size, None)
    half = len(loader) // 2
    first: list[int] = []
    for step, batch in enumerate(loader):
        first += batch["index"].tolist()
        if step + 1 == half:
            state = loader.state_dict()
            break
    state = json.loads(json.dumps(state))  # what a checkpoint file keeps
    del loader
    resumed = litdata_loader(out, cache, workers, batch_size, None)
    resumed.load_state_dict(state)
    rest = [i for batch in resumed for i in batch["index"].tolist()]
    union = collections.Counter(first + rest)
    ok = len(first + rest) == len(expected) and set(union) == set(expected)
    return {"ok": ok, "before_save": len(first), "after_load": len(rest),
            "duplicates": sum(c - 1 for c in union.values() if c > 1), "missing": len(set(expected) - set(union))}


def litdata_rank_loader(out: Path, cache: Path, workers: int, batch_size: int, rank: int, world_size: int) -> Any:
    """The loader rank ``rank`` of ``world_size`` would build (the rank set by hand: no process group here)."""
    from litdata.utilities.env import _DistributedEnv

    loader = litdata_loader(out, cache, workers, batch_size, None)
    loader.dataset.distributed_env = _DistributedEnv(world_size=world_size, global_rank=rank, num_nodes=1)
    return loader


# ---------------------------------------------------------------- WebDataset


def webdataset_prepare(items: list[tuple[int, str, int]], out: Path, workers: int) -> None:
    """One sequential ``ShardWriter`` (WebDataset has no parallel writer; ``workers`` is unused)."""
    import webdataset as wds

    out.mkdir(parents=True)
    with wds.ShardWriter(str(out / "shard-%06d.tar"), maxsize=SHARD_BYTES, verbose=0) as sink:
        for item in items:
            sample = read_sample(item)
            sink.write({"__key__": f"{sample['index']:08d}", "jpg": sample["image"],
                        "cls": str(sample["label"]).encode(), "idx": str(sample["index"]).encode()})


def webdataset_fields(raw: dict[str, Any]) -> Sample:
    """A WebDataset record (bytes per extension) back to the common sample."""
    return {"image": raw["jpg"], "label": int(raw["cls"]), "index": int(raw["idx"])}


def webdataset_loader(out: Path, cache: Path, workers: int, batch_size: int,
                      transform: Callable[[Sample], Sample] | None) -> Any:
    import webdataset as wds

    urls = [str(p) for p in sorted(out.glob("shard-*.tar"))]
    dataset = wds.WebDataset(urls, shardshuffle=len(urls), nodesplitter=wds.split_by_node, seed=0,
                             empty_check=False).shuffle(SHUFFLE_BUFFER).map(webdataset_fields)
    if transform is not None:
        dataset = dataset.map(transform)
    return wds.WebLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate,
                         multiprocessing_context=worker_start(workers))


def webdataset_rank_loader(out: Path, cache: Path, workers: int, batch_size: int, rank: int, world_size: int) -> Any:
    """The loader rank ``rank`` of ``world_size`` would build: ``split_by_node`` reads RANK and WORLD_SIZE."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size))  # inherited by the forked workers
    return webdataset_loader(out, cache, workers, batch_size, None)


def multi_rank_check(rank_loader: Callable[..., Any], out: Path, cache: Path, args: argparse.Namespace,
                     expected: dict[int, int], world_size: int = 2) -> dict[str, Any]:
    """Read one epoch as each of ``world_size`` ranks would: disjoint, together one epoch, how many per rank?"""
    saved = {key: os.environ.get(key) for key in ("RANK", "WORLD_SIZE")}
    per_rank: list[list[int]] = []
    try:
        for rank in range(world_size):
            loader = rank_loader(out, cache, args.workers, args.batch_size, rank, world_size)
            per_rank.append([i for batch in loader for i in batch["index"].tolist()])
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    union = collections.Counter(i for indexes in per_rank for i in indexes)
    return {"world_size": world_size, "per_rank": [len(indexes) for indexes in per_rank],
            "duplicates": sum(c - 1 for c in union.values() if c > 1), "missing": len(set(expected) - set(union)),
            "one_epoch": sum(union.values()) == len(expected) and set(union) == set(expected)}


# ---------------------------------------------------------------- the comparison

ENGINES: dict[str, dict[str, Any]] = {
    "litdata": {
        "module": "litdata", "prepare": litdata_prepare, "loader": litdata_loader, "rank_loader": litdata_rank_loader,
        "prepare_note": "optimize, one process per --workers",
        "resume": "StreamingDataLoader.state_dict / load_state_dict (mid-epoch, exercised here)",
        "multi_rank": "automatic: chunks (or parts of one) split across ranks and workers",
        "object_storage": "s3://, gs://, azure:// input_dir with local chunk cache"},
    "webdataset": {
        "module": "webdataset", "prepare": webdataset_prepare, "loader": webdataset_loader,
        "rank_loader": webdataset_rank_loader,
        "prepare_note": "ShardWriter, one process",
        "resume": "none built in (restart the epoch, or track shards by hand)",
        "multi_rank": "by shard: nodesplitter=split_by_node + split_by_worker; needs shards >= ranks x workers",
        "object_storage": "any URL or pipe: (curl, aws s3 cp, gsutil cat)"},
    "mosaicml-streaming": {
        "module": "streaming", "prepare": None, "loader": None, "prepare_note": "",
        "resume": "StreamingDataLoader state_dict (not exercised)",
        "multi_rank": "automatic (shards split across ranks and workers)", "object_storage": "s3, gcs, azure, ..."},
}


def installed(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def run_engine(name: str, items: list[tuple[int, str, int]], folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    engine = ENGINES[name]
    row: dict[str, Any] = {"engine": name, "resume": engine["resume"], "multi_rank": engine["multi_rank"],
                           "object_storage": engine["object_storage"]}
    if not installed(engine["module"]):
        return {**row, "skipped": f"{engine['module']} not importable"}
    if engine["prepare"] is None:
        return {**row, "skipped": "installed, but not part of this benchmark yet"}
    out, cache = folder / name, folder / f"{name}-cache"
    start = time.perf_counter()
    engine["prepare"](items, out, args.workers)
    seconds = time.perf_counter() - start
    expected = {index: label for index, _, label in items}
    row.update(prepare_img_per_s=len(items) / seconds, prepare_seconds=seconds, prepare_note=engine["prepare_note"],
               megabytes=folder_megabytes(out))
    print(f"{name}: prepared in {seconds:.1f} s", flush=True)
    for mode, transform in (("raw", None), ("decoded", decode)):
        row[mode] = check_epoch(engine["loader"](out, cache, args.workers, args.batch_size, transform), expected)
    row["every_index_once"] = row["raw"]["every_index_once"] and row["decoded"]["every_index_once"]
    row["labels_match"] = row["raw"]["wrong_labels"] == 0 and row["decoded"]["wrong_labels"] == 0
    row["multi_rank_check"] = multi_rank_check(engine["rank_loader"], out, cache, args, expected)
    if name == "litdata":
        row["resume_check"] = litdata_resume(out, cache, args.workers, args.batch_size, expected)
    print(f"{name}: read raw {row['raw']['seconds']:.1f} s, decoded {row['decoded']['seconds']:.1f} s", flush=True)
    return row


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Each measured engine's speeds relative to litdata's (1.00 for litdata itself)."""
    base = next((r for r in rows if r["engine"] == "litdata" and "skipped" not in r), None)
    for row in rows:
        if base is None or "skipped" in row:
            row["vs_litdata"] = None
            continue
        row["vs_litdata"] = {"prepare": row["prepare_img_per_s"] / base["prepare_img_per_s"],
                             "raw": row["raw"]["img_per_s"] / base["raw"]["img_per_s"],
                             "decoded": row["decoded"]["img_per_s"] / base["decoded"]["img_per_s"]}


def print_table(rows: list[dict[str, Any]]) -> None:
    print("\n| engine | prepare img/s | MB on disk | read img/s raw | read img/s decoded | decoded x litdata "
          "| every index once, labels match | resume mid-epoch | multi-rank |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        if "skipped" in row:
            print(f"| {row['engine']} | skipped: {row['skipped']} | | | | | | {row['resume']} | {row['multi_rank']} |")
            continue
        resume = row.get("resume_check")
        resume_text = (("held: " if resume["ok"] else "FAILED: ") + f"{resume['before_save']} + {resume['after_load']}"
                       f" samples, {resume['duplicates']} duplicates, {resume['missing']} missing"
                       if resume else row["resume"])
        ranks = row["multi_rank_check"]
        rank_text = (f"{row['multi_rank']}; 2 ranks read {' + '.join(map(str, ranks['per_rank']))} samples, "
                     f"{ranks['duplicates']} duplicates, {ranks['missing']} missing")
        print(f"| {row['engine']} | {row['prepare_img_per_s']:,.0f} | {row['megabytes']:.1f} "
              f"| {row['raw']['img_per_s']:,.0f} | {row['decoded']['img_per_s']:,.0f} "
              f"| {row['vs_litdata']['decoded']:.2f} | {'yes' if row['every_index_once'] and row['labels_match'] else 'NO'} "
              f"| {resume_text} | {rank_text} |")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="ImageFolder root (default: Imagenette train, unpacked)")
    parser.add_argument("--limit", type=int, default=None, help="use this many images (random, seed 0)")
    parser.add_argument("--workers", type=int, default=2, help="loader and optimize worker processes")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="300 images, 1 worker (smoke test)")
    parser.add_argument("--json", default=None, help="also write the report to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.limit, args.workers, args.batch_size = args.limit or 300, 1, 32
    with tempfile.TemporaryDirectory(prefix="shard_engines_") as temp:
        folder = Path(temp)
        if args.data:
            root = Path(args.data)
        elif IMAGENETTE_TAR.exists():
            root = unpack_imagenette_train(IMAGENETTE_TAR, folder / "images")
        else:
            parser.error(f"no --data given and {IMAGENETTE_TAR} is missing")
        items = list_samples(root, args.limit)
        print(f"{len(items)} images from {root}, {args.workers} workers, batch {args.batch_size}, "
              f"torch {torch.__version__}, {os.cpu_count()} CPUs, no GPU used", flush=True)
        rows = [run_engine(name, items, folder, args) for name in ENGINES]
    add_ratios(rows)
    print_table(rows)
    report = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": platform.platform(),
              "cpus": os.cpu_count(), "torch": torch.__version__, "data": str(args.data or IMAGENETTE_TAR),
              "images": len(items), "args": vars(args), "rows": rows,
              "versions": {name: getattr(__import__(e["module"]), "__version__", "?")
                           for name, e in ENGINES.items() if installed(e["module"])}}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
