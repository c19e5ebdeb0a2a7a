"""Input pipeline at 224 px (issue 13): two SimCLR views per image, ours vs lightly's, images/s, one table + JSON.

Same files, same DataLoader workers and batch size, in one run:

  ours      SSLDataModule("stream") train loader over shards of the files (JPEG decoded in the workers,
            padded uint8 batches with sizes), then ViewAugmentation's simclr preset twice per batch on
            --device (the main process's torch intra-op threads on the CPU; the GPU with --device cuda)
  lightly   lightly's SimCLRTransform(input_size=224) (two PIL views per image) in the DataLoader workers
            over a torchvision ImageFolder with PIL loading, as lightly's ImageNet recipe does; the views
            are moved to --device
  decode    JPEG decoding alone, one process, on the first --decode_images files: torchvision.io.decode_jpeg
            of the file's bytes vs PIL Image.open(...).convert("RGB") (both include reading the file)
  ceiling   (--device cuda, or --quick) the model alone: ResNet-50 forward+backward+SGD on two random
            224 px views per image already on the device, bf16 autocast, channels_last (--quick on the
            CPU: ResNet-18, batch 2, one step, only so that this path runs in the tests)

Pipelines are timed over --batches batches after --warmup untimed ones (which include the workers' start);
images/s counts images (each gives two views). The views are made under torch.no_grad (no model).

    python benchmarks/input_pipeline.py --src /tmp/imagenette/train --json input_pipeline.json      # CPU
    python benchmarks/input_pipeline.py --device cuda --src .data/train --workers 8 --batch_size 256 --json $OUT/ip.json
    python benchmarks/input_pipeline.py --quick --json /tmp/input_pipeline.json   # ~100 images (tests)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torchvision
from lightly.transforms import SimCLRTransform
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder
from torchvision.io import ImageReadMode, decode_jpeg, read_file

from ssl_siamese.views.presets import augmentation_preset
from ssl_siamese.data.module import SSLDataModule
from stream_memory import IMAGENETTE_TAR, prepare_all, unpack_train


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forever(loader: DataLoader) -> Iterator:
    while True:
        yield from loader


def images_per_s(step: Callable[[], int], warmup: int, steps: int, device: torch.device) -> float:
    """Images per second of ``step()`` (returns its batch's image count) over ``steps`` calls after ``warmup``."""
    for _ in range(warmup):
        step()
    sync(device)
    start, images = time.perf_counter(), 0
    for _ in range(steps):
        images += step()
    sync(device)
    return images / (time.perf_counter() - start)


def ours(shards: Path, args: argparse.Namespace) -> float:
    """The stream DataModule's train loader, then two views of each batch on the device."""
    dm = SSLDataModule("stream", data_dir=str(shards), image_size=224, num_workers=args.workers,
                       batch_size=args.batch_size, pin_memory=args.dev.type == "cuda")
    dm.setup("fit")
    aug = augmentation_preset("simclr", 224, dm.mean, dm.std).to(args.dev)
    batches = forever(dm.train_dataloader())

    def step() -> int:
        images, _, sizes = next(batches)
        images, sizes = images.to(args.dev, non_blocking=True), sizes.to(args.dev, non_blocking=True)
        with torch.no_grad():
            aug(images, sizes=sizes), aug(images, sizes=sizes)
        return images.shape[0]
    try:
        return images_per_s(step, args.warmup, args.batches, args.dev)
    finally:
        batches.close()  # stops the workers before the next pipeline starts


def lightly(src: Path, args: argparse.Namespace) -> float:
    """lightly's SimCLRTransform in DataLoader workers over an ImageFolder (PIL loading)."""
    dataset = ImageFolder(str(src), transform=SimCLRTransform(input_size=224))
    batches = forever(DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                 num_workers=args.workers, pin_memory=args.dev.type == "cuda"))

    def step() -> int:
        (view0, view1), _ = next(batches)
        view0.to(args.dev, non_blocking=True), view1.to(args.dev, non_blocking=True)
        return view0.shape[0]
    try:
        return images_per_s(step, args.warmup, args.batches, args.dev)
    finally:
        batches.close()


def decode_speeds(files: list[Path]) -> dict[str, float]:
    """Images/s of decoding ``files`` in this process: torchvision.io.decode_jpeg vs PIL open + convert RGB."""
    speeds = {}
    for name, decode in (("torchvision", lambda p: decode_jpeg(read_file(str(p)), mode=ImageReadMode.RGB)),
                         ("PIL", lambda p: Image.open(p).convert("RGB"))):
        decode(files[0])
        start = time.perf_counter()
        for path in files:
            decode(path)
        speeds[name] = len(files) / (time.perf_counter() - start)
    return speeds


def model_ceiling(args: argparse.Namespace) -> tuple[float, str]:
    """(images/s, what) of the model alone: forward+backward+SGD of two random views per image on the device."""
    name, batch, steps = ("resnet18", 2, 1) if args.quick else ("resnet50", args.batch_size, args.ceiling_steps)
    model = getattr(torchvision.models, name)().to(args.dev, memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    views = torch.randn(2 * batch, 3, 224, 224, device=args.dev).contiguous(memory_format=torch.channels_last)

    def step() -> int:
        with torch.autocast(args.dev.type, dtype=torch.bfloat16):
            loss = model(views).float().square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return batch
    speed = images_per_s(step, 1 if args.quick else 3, steps, args.dev)
    return speed, f"{name} fwd+bwd, batch {batch} images x 2 views, bf16 autocast, channels_last, {args.dev.type}"


def table(result: dict) -> str:
    rows = result["rows"]
    lightly_speed = next(r["images_per_s"] for r in rows if r["pipeline"] == "lightly")
    lines = ["| pipeline | what | images/s | x lightly |", "| --- | --- | --- | --- |"]
    for r in rows:
        ratio = f"{r['images_per_s'] / lightly_speed:.2f}" if r["pipeline"] in ("ours", "lightly", "ceiling") else ""
        lines.append(f"| {r['pipeline']} | {r['what']} | {r['images_per_s']:,.1f} | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--src", default=None, help="class folders of JPEGs (default: Imagenette's train split)")
    parser.add_argument("--work_dir", default="/tmp/input_pipeline", help="source and shards go here")
    parser.add_argument("--device", default="cpu", help="where our views (and the ceiling) run: cpu or cuda")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=30, help="timed batches per pipeline")
    parser.add_argument("--warmup", type=int, default=3, help="untimed batches first (include the workers' start)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads of this process (our "
                        "views on the CPU); default: the cores the workers leave, at least 1")
    parser.add_argument("--decode_images", type=int, default=1000)
    parser.add_argument("--ceiling_steps", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="~100 images, batch 8, a few batches (tests)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    if args.quick:
        args.batch_size, args.batches, args.warmup, args.decode_images = 8, 3, 1, 32
    args.dev = torch.device(args.device)
    args.threads = args.threads or max(1, (os.cpu_count() or 1) - args.workers)
    torch.set_num_threads(args.threads)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    src = Path(args.src) if args.src else unpack_train(IMAGENETTE_TAR, work / "train", 96 if args.quick else None)
    prepare_all([(src, work / "shards")], args.workers)
    files = sorted(p for p in src.rglob("*") if p.is_file())
    random.Random(0).shuffle(files)
    rows = [{"pipeline": "ours", "images_per_s": ours(work / "shards", args),
             "what": f"stream loader (decode in {args.workers} workers) + 2 simclr views on {args.device}"},
            {"pipeline": "lightly", "images_per_s": lightly(src, args),
             "what": f"ImageFolder (PIL) + SimCLRTransform(input_size=224) in {args.workers} workers"}]
    decoded = decode_speeds(files[:args.decode_images])
    rows += [{"pipeline": f"decode {name}", "images_per_s": speed, "what": what}
             for (name, speed), what in zip(decoded.items(), ("torchvision.io.decode_jpeg(read_file(path))",
                                                              "PIL Image.open(path).convert('RGB')"))]
    note = "skipped: GPU only (run with --device cuda)"
    if args.dev.type == "cuda" or args.quick:
        speed, note = model_ceiling(args)
        rows.append({"pipeline": "ceiling", "images_per_s": speed, "what": note})
    result = {"rows": rows, "ceiling": note, "ours_over_lightly": rows[0]["images_per_s"] / rows[1]["images_per_s"],
              "torchvision_over_pil_decode": decoded["torchvision"] / decoded["PIL"],
              "device": args.device, "workers": args.workers, "batch_size": args.batch_size, "threads": args.threads,
              "batches": args.batches, "warmup": args.warmup, "images": len(files), "quick": args.quick,
              "date": datetime.date.today().isoformat(), "cpus": os.cpu_count(), "load_average": os.getloadavg(),
              "gpu": torch.cuda.get_device_name(args.dev) if args.dev.type == "cuda" else None,
              "python": platform.python_version(), "torch": torch.__version__}
    print(f"{len(files):,} images, batch {args.batch_size}, {args.workers} workers, {args.threads} torch threads, "
          f"device {args.device}; ceiling: {note}")
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
