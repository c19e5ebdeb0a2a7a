"""Training throughput of our pipeline against the model-only ceiling, lightly's and kornia's, in ONE process.

Rows (images per second; every image gives two views):
  ceiling   the same model step on random tensors already on the device (same precision / compile settings)
  ours      SimCLR, MoCo, SimSiam through the pytorch_lightning Trainer with SSLDataModule and the
            on-device ViewAugmentation (no logger, no kNN), timed over fixed steps after warm-up
  lightly   lightly's SimCLRTransform (PIL, torchvision) in a DataLoader with --workers, same SimCLR step
  kornia    stock kornia.augmentation on a device-resident uint8 dataset, same SimCLR step
  aug-only  ours vs kornia: the two views of each preset (simclr, moco_v2, simsiam, byol's asymmetric pair)
            on a device-resident batch, no model
"x ceiling" is against the same method's ceiling (SimCLR's for the rest), "x lightly" against lightly's row.
The JSON also keeps ThroughputMonitor's train/img_per_s of each Trainer run (when it logged one).

    python benchmarks/throughput.py --channels_last --json $OUT/throughput.json    # GPU, 32x32, ResNet-18
    python benchmarks/throughput.py --resolution 224 --data_dir PATH/jpeg-folder --batch_size 256 --compile
    python benchmarks/throughput.py --quick           # CPU smoke test (CI): tiny ConvNet, batch 32, a few steps

Data: synthetic uint8 noise (nothing is downloaded) unless --data_dir names a folder of images; then ours
reads ssl_siamese's cached pre-resized uint8 copy and lightly's pipeline decodes the files in its workers.
32x32 uses ResNet-18 with the CIFAR stem, 96x96 ResNet-18 and 224x224 ResNet-50 with the standard stem.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import platform
import time
from datetime import date
from pathlib import Path

import pytorch_lightning as pl
import torch
from lightly.transforms import SimCLRTransform
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ssl_siamese import SSLDataModule
from ssl_siamese.views.presets import augmentation_preset
from ssl_siamese.callbacks import ThroughputMonitor
from ssl_siamese.data import DATASETS, IMAGE_EXTENSIONS, ImageTensors, load_split
from ssl_siamese.methods import MoCo, SimCLR, SimSiam
from ssl_siamese.views.presets import method_augmentations

try:
    import kornia.augmentation as K
except ImportError:
    K = None

METHODS = {"simclr": SimCLR, "moco": MoCo, "simsiam": SimSiam}
AUG_PRESETS = ("simclr", "moco_v2", "simsiam", "byol")  # byol: its two views differ (blur, solarize)
BACKBONES = {32: ("resnet18", True), 96: ("resnet18", False), 224: ("resnet50", False)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step, args) -> float:
    """Images per second of ``step()`` over ``args.steps`` calls after ``args.warmup`` untimed ones."""
    for _ in range(args.warmup):
        step()
    sync(args.dev)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(args.dev)
    return args.batch_size * args.steps / (time.perf_counter() - start)


def build(method: str, args):
    backbone, cifar_stem = args.backbone, BACKBONES[args.resolution][1]
    model = METHODS[method](backbone=backbone, cifar_stem=cifar_stem, view_size=args.resolution,
                            batch_size=args.batch_size, channels_last=args.channels_last)
    if args.compile:  # what --model.compile true does when fitting starts
        model.compile_encoders()
    return model


def model_step(method: str, args):
    """A manual training step of ``method``'s model, as Lightning runs it: ``step(view0, view1)``."""
    model = build(method, args).to(args.dev).train()
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.06, momentum=0.9, weight_decay=5e-4)

    def step(view0, view1):
        view0, view1 = (v.contiguous(memory_format=memory_format) for v in (view0, view1))
        with torch.autocast(args.dev.type, dtype=torch.bfloat16, enabled=args.precision == "bf16-mixed"):
            loss, _ = model.shared_step(view0, view1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def ceiling(method: str, args) -> float:
    step = model_step(method, args)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    views = [torch.randn(args.batch_size, 3, args.resolution, args.resolution, device=args.dev)
             .contiguous(memory_format=memory_format) for _ in range(2)]
    return timed(lambda: step(*views), args)


class StepTimer(pl.Callback):
    """Wall time of the training steps after ``warmup`` (device synchronised at both ends)."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.last, self.seconds = warmup, warmup + steps, None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step in (self.warmup, self.last):
            sync(pl_module.device)
            if trainer.global_step == self.warmup:
                self.start = time.perf_counter()
            else:
                self.seconds = time.perf_counter() - self.start


class TensorDataModule(SSLDataModule):
    """The real SSLDataModule and loader, serving the benchmark's uint8 tensors instead of a named dataset."""

    def _load(self, split: str, required: bool = True) -> ImageTensors:
        return self.tensors


def ours(method: str, args, data: ImageTensors) -> tuple[float, float | None]:
    """(img/s timed over fixed steps, ThroughputMonitor's train/img_per_s) of Trainer.fit."""
    datamodule = TensorDataModule("synthetic", batch_size=args.batch_size, image_size=args.resolution)
    datamodule.tensors = ImageTensors(data.images, torch.full((len(data),), -1), [])
    timer = StepTimer(args.warmup, args.steps)
    cuda = args.dev.type == "cuda"
    trainer = pl.Trainer(accelerator="gpu" if cuda else "cpu", devices=[args.dev.index or 0] if cuda else 1,
                         precision=args.precision, max_steps=args.warmup + args.steps, logger=False,
                         callbacks=[timer, ThroughputMonitor()], enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         num_sanity_val_steps=0)
    trainer.fit(build(method, args), datamodule=datamodule)
    monitor = trainer.callback_metrics.get("train/img_per_s")
    return args.batch_size * args.steps / timer.seconds, None if monitor is None else float(monitor)


class PILDataset(Dataset):
    """lightly's setting: one PIL image (decoded from a file, or in memory) and its views per item."""

    def __init__(self, items: list, transform) -> None:
        self.items, self.transform = items, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        item = self.items[index]
        image = Image.open(item).convert("RGB") if isinstance(item, Path) else item
        return self.transform(image), 0


def simclr_views(args):
    """Our SimCLR preset at the benchmark's resolution (CIFAR-10 normalisation, as the models default to)."""
    return augmentation_preset("simclr", args.resolution, DATASETS["cifar10"].mean, DATASETS["cifar10"].std)


def lightly_pipeline(args, items: list) -> float:
    aug = simclr_views(args)
    transform = SimCLRTransform(input_size=args.resolution, cj_strength=0.5, gaussian_blur=aug.blur_prob,
                                normalize={"mean": aug.mean.flatten().tolist(), "std": aug.std.flatten().tolist()})
    loader = DataLoader(PILDataset(items, transform), batch_size=args.batch_size, shuffle=True, drop_last=True,
                        num_workers=args.workers, persistent_workers=args.workers > 0,
                        pin_memory=args.dev.type == "cuda")
    stream, step = (batch for _ in itertools.count() for batch in loader), model_step("simclr", args)

    def run():
        (view0, view1), _ = next(stream)
        step(view0.to(args.dev, non_blocking=True), view1.to(args.dev, non_blocking=True))
    return timed(run, args)


def kornia_augmentation(args, aug):
    size = (args.resolution, args.resolution)
    ops = [K.RandomResizedCrop(size, scale=aug.crop_scale, ratio=aug.crop_ratio),
           K.RandomHorizontalFlip(p=aug.hflip_prob),
           K.ColorJitter(aug.brightness, aug.contrast, aug.saturation, aug.hue, p=aug.jitter_prob),
           K.RandomGrayscale(p=aug.grayscale_prob)]
    if aug.blur_prob > 0:
        ops.append(K.RandomGaussianBlur((aug.blur_kernel,) * 2, aug.blur_sigma, p=aug.blur_prob))
    if aug.solarize_prob > 0:  # threshold 0.5, no brightness addition: ours
        ops.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=aug.solarize_prob))
    return torch.nn.Sequential(*ops, K.Normalize(aug.mean.flatten(), aug.std.flatten())).to(args.dev)


def with_views(args, images: torch.Tensor, kind: str, train: bool, preset: str = "simclr") -> float:
    """``kind`` (ours|kornia) augmentation of device-resident uint8 batches, with the SimCLR step or alone."""
    first, second = method_augmentations(preset, args.resolution, DATASETS["cifar10"].mean, DATASETS["cifar10"].std)
    pair = [aug.to(args.dev) for aug in (first, second or first)]
    augment0, augment1 = pair if kind == "ours" else [kornia_augmentation(args, aug) for aug in pair]
    convert = (lambda x: x) if kind == "ours" else (lambda x: x.float() / 255)
    on_device, step = images.to(args.dev), model_step("simclr", args) if train else None

    def run():
        x = convert(on_device[torch.randint(len(on_device), (args.batch_size,), device=args.dev)])
        view0, view1 = augment0(x), augment1(x)
        if step is not None:
            step(view0, view1)
    return timed(run, args)


def load_data(args) -> tuple[ImageTensors, list, str]:
    """(uint8 tensors for ours and kornia, items for lightly's dataset, a description)."""
    if args.data_dir:
        data = load_split("folder", "train", args.data_dir, download=False, image_size=args.resolution)
        root = Path(args.data_dir) / "train" if (Path(args.data_dir) / "train").is_dir() else Path(args.data_dir)
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS
                       and not any(part.startswith(".") for part in p.relative_to(root).parts))
        return data, files, f"{len(files)} files under {root} (ours: cached pre-resized uint8 copy)"
    bytes_per_image = 3 * args.resolution ** 2
    n = max(2 * args.batch_size, min(args.batch_size * (args.warmup + args.steps), (1 << 30) // bytes_per_image))
    images = torch.randint(0, 256, (n, 3, args.resolution, args.resolution), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    pils = [Image.fromarray(image.permute(1, 2, 0).numpy()) for image in images]
    return ImageTensors(images, torch.zeros(n, dtype=torch.int64), []), pils, f"{n} synthetic uint8 images"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch_size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=50, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps per row")
    parser.add_argument("--precision", choices=("32", "bf16-mixed"), help="default: bf16-mixed on CUDA, 32 on CPU")
    parser.add_argument("--channels_last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the backbone (every row)")
    parser.add_argument("--resolution", type=int, choices=sorted(BACKBONES), default=32)
    parser.add_argument("--backbone", default=None, help="default: by resolution (see above)")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1), help="lightly's loader")
    parser.add_argument("--data_dir", default=None, help="a folder of images (default: synthetic)")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--quick", action="store_true", help="CPU smoke test: tiny_cnn, batch 32, a few steps")
    args = parser.parse_args()
    if args.quick:
        args.device, args.batch_size, args.steps, args.warmup, args.workers = "cpu", 32, 3, 2, 1
        args.backbone, args.compile, args.resolution = "tiny_cnn", False, 32
        torch.set_num_threads(1)  # a smoke test; OpenMP threads on a shared 2-core runner thrash
    args.dev = torch.device(args.device)
    args.precision = args.precision or ("bf16-mixed" if args.dev.type == "cuda" else "32")
    args.backbone = args.backbone or BACKBONES[args.resolution][0]
    return args


def measure(args, data: ImageTensors, items: list) -> list[dict]:
    """Every row, img/s plus the ratios to the (same method's) ceiling and to lightly's pipeline."""
    missing = None if K is not None else "kornia not installed"
    rows = [{"pipeline": "ceiling", "method": m, "img_per_s": ceiling(m, args), "note": "random tensors on device"}
            for m in args.methods]
    for method in args.methods:
        speed, monitor = ours(method, args, data)
        rows.append({"pipeline": "ours", "method": method, "img_per_s": speed, "monitor_img_per_s": monitor,
                     "note": "Trainer + SSLDataModule + ViewAugmentation"})
    rows.append({"pipeline": "lightly", "method": "simclr", "img_per_s": lightly_pipeline(args, items),
                 "note": f"SimCLRTransform, {args.workers} workers"})
    rows.append({"pipeline": "kornia", "method": "simclr", "note": missing or "stock kornia.augmentation",
                 "img_per_s": None if missing else with_views(args, data.images, "kornia", train=True)})
    for preset in AUG_PRESETS:  # the two views of each preset, ours and kornia's same ops
        rows.append({"pipeline": "aug-only ours", "method": preset, "note": "ViewAugmentation, two views",
                     "img_per_s": with_views(args, data.images, "ours", train=False, preset=preset)})
        rows.append({"pipeline": "aug-only kornia", "method": preset, "note": missing or "two views",
                     "img_per_s": None if missing else with_views(args, data.images, "kornia", False, preset)})
    ceilings = {r["method"]: r["img_per_s"] for r in rows if r["pipeline"] == "ceiling"}
    lightly = next(r["img_per_s"] for r in rows if r["pipeline"] == "lightly")
    for row in rows:
        speed, ceiling_speed = row["img_per_s"], ceilings.get(row["method"], ceilings.get("simclr"))
        row["vs_ceiling"] = speed / ceiling_speed if speed and ceiling_speed else None
        row["vs_lightly"] = speed / lightly if speed else None
    return rows


def main() -> None:
    args = parse_args()
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    torch.backends.cudnn.benchmark = True
    torch.set_float32_matmul_precision("high")
    data, items, described = load_data(args)
    rows = measure(args, data, items)
    speedups = {ours_row["method"]: ours_row["img_per_s"] / kornia_row["img_per_s"]
                for ours_row, kornia_row in zip(rows[-2 * len(AUG_PRESETS)::2], rows[-2 * len(AUG_PRESETS) + 1::2])
                if kornia_row["img_per_s"]}
    speedup = speedups.get("simclr")

    device = torch.cuda.get_device_name(args.dev) if args.dev.type == "cuda" else \
        f"{platform.processor() or platform.machine()} CPU ({os.cpu_count()} cores)"
    print(f"\n{date.today()}  device: {device}  torch {torch.__version__}  {args.backbone} "
          f"{args.resolution}x{args.resolution}, batch {args.batch_size}, precision {args.precision}"
          f"{', channels_last' * args.channels_last}{', compile' * args.compile}  data: {described}")
    print("| pipeline | method | img/s | x ceiling | x lightly | note |\n| --- | --- | --- | --- | --- | --- |")
    fmt = lambda value, spec: "-" if value is None else format(value, spec)  # noqa: E731
    for r in rows:
        print(f"| {r['pipeline']} | {r['method']} | {fmt(r['img_per_s'], ',.0f')} | {fmt(r['vs_ceiling'], '.2f')} | "
              f"{fmt(r['vs_lightly'], '.2f')} | {r['note']} |")
    print("augmentation alone, ours / stock kornia: "
          + (", ".join(f"{name} {value:.1f}x" for name, value in speedups.items()) or "-"))
    if args.json:
        result = {"date": str(date.today()), "device": device, "torch": torch.__version__, "data": described,
                  "args": {k: v for k, v in vars(args).items() if k != "dev"}, "rows": rows,
                  "aug_speedup_vs_kornia": speedup, "aug_speedup_vs_kornia_by_preset": speedups}
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
