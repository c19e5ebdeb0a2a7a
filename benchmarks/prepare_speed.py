"""Speed of ``python -m ssl_siamese.data.prepare`` (issue 13): images/s, MB/s written, MB on disk, one table + JSON.

Two sources: (a) Imagenette train+val unpacked from ../shared/data (13,394 JPEGs, short side 224: kept as
their original bytes under the default cap of 256) and (b) a synthetic folder of 500x375 JPEGs generated
here (re-encoded: decode, resize to short side 256, JPEG 90). Generating and unpacking are not timed; the
time is the whole ``prepare`` call (listing, litdata's worker start, encoding, writing).

    python benchmarks/prepare_speed.py --num_workers 2 --synthetic_count 100000 --json prepare_speed.json
    python benchmarks/prepare_speed.py --quick --json /tmp/prepare_speed.json   # a few hundred images (tests)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tarfile
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from ssl_siamese.data.prepare import prepare

ROOT = Path(__file__).resolve().parents[1]
IMAGENETTE_TAR = ROOT.parent / "shared" / "data" / "imagenette-224" / "imagenette-224.tar"
SYNTHETIC_SIZE = (500, 375)  # width, height


def unpack_imagenette(tar_path: Path, into: Path, limit: int | None) -> Path:
    """Extract the tar's train/ and val/ JPEGs (the first ``limit`` of each with --quick) into ``into``."""
    counts = {"train": 0, "val": 0}
    with tarfile.open(tar_path) as tar:
        for member in tar:
            split = member.name.split("/")[0]
            if member.isfile() and split in counts and (limit is None or counts[split] < limit):
                counts[split] += 1
                tar.extract(member, into, filter="data")
    return into


def _write_synthetic(args: tuple[Path, int, int]) -> None:
    folder, start, stop = args
    rng = np.random.default_rng(start)
    for i in range(start, stop):  # a random 16x12 picture, upscaled: smooth, photo-like, unique per file
        small = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
        path = folder / f"class{i % 10}" / f"{i:07d}.jpg"
        small.resize(SYNTHETIC_SIZE, Image.Resampling.BICUBIC).save(path, quality=90)


def make_synthetic(into: Path, count: int, processes: int) -> Path:
    """``count`` 500x375 JPEGs in 10 class folders, written by ``processes`` processes."""
    for c in range(10):
        (into / f"class{c}").mkdir(parents=True, exist_ok=True)
    step = max(1, -(-count // (processes * 8)))
    with ProcessPoolExecutor(processes) as pool:
        list(pool.map(_write_synthetic, [(into, s, min(s + step, count)) for s in range(0, count, step)]))
    return into


def _bytes_under(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def measure(name: str, src: Path, out: Path, num_workers: int, start_method: str | None) -> dict:
    files = sum(1 for p in src.rglob("*") if p.is_file())
    report = prepare(src, out, num_workers=num_workers, start_method=start_method)
    return {"source": name, "files": files, "written": report.images, "splits": report.splits,
            "skipped": report.skipped, "seconds": round(report.seconds, 2),
            "images_per_s": round(report.images_per_s, 1), "mb_in": round(_bytes_under(src) / 1e6, 1),
            "mb_on_disk": round(report.bytes_on_disk / 1e6, 1),
            "mb_per_s_out": round(report.bytes_on_disk / 1e6 / report.seconds, 2)}


def table(rows: list[dict]) -> str:
    lines = ["| source | files | written (train / val) | skipped | seconds | images/s | MB in | MB on disk | MB/s out |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        split = " / ".join(f"{r['splits'].get(s, 0):,}" for s in ("train", "val"))
        lines.append(f"| {r['source']} | {r['files']:,} | {r['written']:,} ({split}) | {r['skipped']} | "
                     f"{r['seconds']:.1f} | {r['images_per_s']:.1f} | {r['mb_in']:.1f} | {r['mb_on_disk']:.1f} | "
                     f"{r['mb_per_s_out']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--synthetic_count", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="a few hundred images of each source")
    parser.add_argument("--skip_imagenette", action="store_true")
    parser.add_argument("--skip_synthetic", action="store_true")
    parser.add_argument("--start_method", choices=["spawn", "fork"], default=None,
                        help="litdata's worker start (default: its own, spawn)")
    parser.add_argument("--work_dir", default=None, help="where sources and shards go (default: a temp dir)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    count = 100 if args.quick else args.synthetic_count
    rows = []
    with tempfile.TemporaryDirectory(dir=args.work_dir, prefix="prepare_speed_") as tmp:
        work = Path(tmp)
        if not args.skip_imagenette and IMAGENETTE_TAR.is_file():
            src = unpack_imagenette(IMAGENETTE_TAR, work / "imagenette", 50 if args.quick else None)
            rows.append(measure("Imagenette train+val (original JPEG bytes kept)", src, work / "imagenette_out",
                                args.num_workers, args.start_method))
        elif not args.skip_imagenette:
            print(f"Imagenette not found at {IMAGENETTE_TAR}; skipping it")
        if not args.skip_synthetic:
            t0 = time.perf_counter()
            src = make_synthetic(work / "synthetic", count, os.cpu_count() or 1)
            print(f"generated {count:,} synthetic JPEGs in {time.perf_counter() - t0:.1f} s (not timed)")
            rows.append(measure("synthetic 500x375 JPEG (re-encoded to 256 px)", src, work / "synthetic_out",
                                args.num_workers, args.start_method))
    result = {"rows": rows, "num_workers": args.num_workers, "quick": args.quick,
              "date": datetime.date.today().isoformat(), "cpus": os.cpu_count(), "python": platform.python_version()}
    print(table(rows))
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
