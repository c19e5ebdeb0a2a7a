"""Memory is bounded (issue 13): peak resident memory of streaming vs in-memory training data, one table + JSON.

Four cases, each in its own freshly forked process (forked after the imports, so every case starts from the
same imported-but-unused interpreter), with the same batch size and DataLoader workers:

  stream whole     SSLDataModule("stream") over shards of all of Imagenette's train split: the train loader
                   (decode in the workers) once through the epoch, two SimCLR views of the first
                   --view_batches batches on the CPU (each batch of the same shape makes the same transient
                   memory; views of every batch take ~20 min per case on 2 shared cores; --view_batches 0 = all)
  stream quarter   the same over shards of a quarter of those files (every 4th file of each class)
  memory whole     SSLDataModule("folder") over the same files (decoded into one uint8 tensor, cache_dir in
                   the work folder, cold: decoded on this run), its train loader + the same views
  memory quarter   the same for the quarter

No model is trained: the loader and the views are what hold images. Memory is sampled every 50 ms (psutil)
over the case's whole process tree, the training process plus its DataLoader workers: the headline is the
summed PSS (proportional set size: a page shared by n processes counts 1/n in each, so the sum is the tree's
real footprint); summed RSS (which counts the pages forked workers share with their parent once per
process, and grows as the workers touch inherited pages) and the training process's own RSS are reported
too. The shards are written by ``python -m ssl_siamese.data.prepare`` in a subprocess (litdata switches its
process to "spawn").

    python benchmarks/stream_memory.py --work_dir /tmp/stream_memory --json stream_memory.json
    MALLOC_MMAP_THRESHOLD_=131072 python benchmarks/stream_memory.py --work_dir /tmp/stream_memory   # see below
    python benchmarks/stream_memory.py --quick --json /tmp/stream_memory.json   # 200 images (tests)
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import psutil
import torch

from ssl_siamese.views.presets import augmentation_preset
from ssl_siamese.data.module import SSLDataModule

ROOT = Path(__file__).resolve().parents[1]
IMAGENETTE_TAR = ROOT.parent / "shared" / "data" / "imagenette-224" / "imagenette-224.tar"
SAMPLE_S = 0.05


def unpack_train(tar_path: Path, into: Path, limit: int | None) -> Path:
    """Imagenette's train/<class>/*.JPEG (the first ``limit`` files with --quick) as ``into``/<class>/."""
    if into.is_dir() and any(into.iterdir()):
        return into
    with tarfile.open(tar_path) as tar:
        members = [m for m in tar if m.isfile() and m.name.startswith("train/")]
        for member in members[:limit]:
            member.name = member.name[len("train/"):]
            tar.extract(member, into, filter="data")
    return into


def quarter_of(src: Path, into: Path) -> Path:
    """Every 4th file of each class folder of ``src``, hard-linked into ``into`` (same layout)."""
    if into.is_dir() and any(into.iterdir()):
        return into
    for folder in sorted(p for p in src.iterdir() if p.is_dir()):
        (into / folder.name).mkdir(parents=True, exist_ok=True)
        for path in sorted(folder.iterdir())[::4]:
            os.link(path, into / folder.name / path.name)
    return into


def prepare_all(pairs: list[tuple[Path, Path]], workers: int) -> None:
    """Shards of each (source, out) pair, all ``prepare`` subprocesses at once; all of a folder goes to train."""
    runs = [subprocess.Popen([sys.executable, "-m", "ssl_siamese.data.prepare", str(src), str(out),
                              "--val_fraction", "0", "--num_workers", str(workers), "--start_method", "fork"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for src, out in pairs if not (out / "dataset.json").is_file()]
    for run in runs:
        _, err = run.communicate()
        if run.returncode:
            raise RuntimeError(f"prepare failed: {err[-2000:]}")


def run_case(kind: str, data_dir: str, args: argparse.Namespace, cache_dir: str, done: multiprocessing.Queue) -> None:
    """One case in the forked child: the train loader once through, two views of each batch; sends counts."""
    torch.set_num_threads(args.threads)
    if kind == "stream":
        dm = SSLDataModule("stream", data_dir=data_dir, image_size=224, num_workers=args.workers,
                           batch_size=args.batch_size, pin_memory=False)
    else:
        dm = SSLDataModule("folder", data_dir=data_dir, image_size=224, num_workers=args.workers,
                           batch_size=args.batch_size, pin_memory=False, cache_dir=cache_dir, val_fraction=0.0)
    dm.prepare_data()
    dm.setup("fit")
    aug = augmentation_preset("simclr", 224, dm.mean, dm.std)
    images_seen, start = 0, time.perf_counter()
    for index, batch in enumerate(dm.train_dataloader()):
        images, sizes = batch[0], (batch[2] if len(batch) == 3 else None)
        if not args.view_batches or index < args.view_batches:
            with torch.no_grad():
                aug(images, sizes=sizes), aug(images, sizes=sizes)
        images_seen += images.shape[0]
    done.put({"images": images_seen, "seconds": time.perf_counter() - start})


def tree_memory(process: psutil.Process) -> dict[str, int]:
    """Bytes of ``process`` plus all its descendants: summed PSS (shared pages split between the processes
    that share them, so forked workers' common pages count once) and summed RSS, and ``process``'s own RSS."""
    try:
        tree = [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {"pss": 0, "rss": 0, "own": 0}
    pss = rss = own = 0
    for member in tree:
        try:
            info = member.memory_full_info()
        except psutil.NoSuchProcess:
            continue
        pss, rss = pss + info.pss, rss + info.rss
        own = info.rss if member is process else own
    return {"pss": pss, "rss": rss, "own": own}


def measure(kind: str, scale: str, data_dir: Path, images: int, args: argparse.Namespace) -> dict:
    """Peak tree RSS and own RSS of one case in a forked child, sampled every SAMPLE_S seconds."""
    context = multiprocessing.get_context("fork")
    done = context.Queue()
    cache_dir = str(Path(args.work_dir) / f"cache-{scale}-{time.time_ns()}")  # cold: decoded on this run
    child = context.Process(target=run_case, args=(kind, str(data_dir), args, cache_dir, done))
    start = time.perf_counter()
    child.start()
    process = psutil.Process(child.pid)
    peak, samples = {"pss": 0, "rss": 0, "own": 0}, 0
    while child.is_alive():
        peak = {key: max(value, peak[key]) for key, value in tree_memory(process).items()}
        samples += 1
        time.sleep(SAMPLE_S)
    child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"case {kind} {scale} failed (exit code {child.exitcode})")
    counts = done.get(timeout=10)
    return {"path": kind, "data": scale, "files": images, "images_seen": counts["images"],
            "loop_seconds": round(counts["seconds"], 1), "wall_seconds": round(time.perf_counter() - start, 1),
            "peak_pss_tree_mb": round(peak["pss"] / 2**20), "peak_rss_tree_mb": round(peak["rss"] / 2**20),
            "peak_rss_main_mb": round(peak["own"] / 2**20), "samples": samples}


def table(rows: list[dict], ratios: dict[str, float]) -> str:
    lines = ["| path | data | files | images seen | peak PSS, process + workers (MiB) | whole / quarter (PSS) "
             "| peak RSS summed over the tree (MiB) | peak RSS, main process (MiB) | loop s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        ratio = f"{ratios[r['path']]:.2f}" if r["data"] == "whole" else ""
        lines.append(f"| {r['path']} | {r['data']} | {r['files']:,} | {r['images_seen']:,} | {r['peak_pss_tree_mb']:,} "
                     f"| {ratio} | {r['peak_rss_tree_mb']:,} | {r['peak_rss_main_mb']:,} | {r['loop_seconds']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--src", default=None, help="a class-folder of images (default: Imagenette's train split)")
    parser.add_argument("--work_dir", default="/tmp/stream_memory", help="sources, shards and caches go here")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (and prepare's)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of the views (default: the cores the workers leave, at least 1)")
    parser.add_argument("--view_batches", type=int, default=8, help="make views of this many batches (0: all)")
    parser.add_argument("--quick", action="store_true", help="200 images, batch 16, views of 1 batch (tests)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    args.threads = args.threads or max(1, (os.cpu_count() or 1) - args.workers)
    if args.quick:
        args.batch_size, args.view_batches = min(args.batch_size, 16), 1
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    whole = Path(args.src) if args.src else unpack_train(IMAGENETTE_TAR, work / "whole", 200 if args.quick else None)
    quarter = quarter_of(whole, work / "quarter")
    prepare_all([(whole, work / "shards-whole"), (quarter, work / "shards-quarter")], args.workers)
    counts = {scale: sum(1 for p in folder.rglob("*") if p.is_file()) for scale, folder in
              (("whole", whole), ("quarter", quarter))}
    rows = []
    for kind, folders in (("stream", {"whole": work / "shards-whole", "quarter": work / "shards-quarter"}),
                          ("memory", {"whole": whole, "quarter": quarter})):
        for scale, folder in folders.items():
            rows.append(measure(kind, scale, folder, counts[scale], args))
            print(f"{kind} {scale}: peak PSS {rows[-1]['peak_pss_tree_mb']} MiB (tree)", flush=True)
    peak = {(r["path"], r["data"]): r["peak_pss_tree_mb"] for r in rows}
    ratios = {kind: peak[kind, "whole"] / peak[kind, "quarter"] for kind in ("stream", "memory")}
    result = {"rows": rows, "whole_over_quarter": ratios, "batch_size": args.batch_size, "workers": args.workers,
              "threads": args.threads, "quick": args.quick, "view_batches": args.view_batches,
              "model": "none (train loader + two SimCLR views)",
              "date": datetime.date.today().isoformat(), "cpus": os.cpu_count(),
              "load_average": os.getloadavg(), "MALLOC_MMAP_THRESHOLD_": os.environ.get("MALLOC_MMAP_THRESHOLD_"), "python": platform.python_version(), "torch": torch.__version__}
    print(table(rows, ratios))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
