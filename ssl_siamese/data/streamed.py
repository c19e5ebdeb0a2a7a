"""Prepared shard folders streamed with litdata: data bounded by disk (or a bucket), not by memory.

A folder written by ``python -m ssl_siamese.data.prepare`` holds encoded JPEG/PNG samples in litdata chunks
(``train/``, ``val/``, ``dataset.json``). Training reads it with litdata's ``StreamingDataset`` (chunks
spread over ranks and workers, local paths or ``s3://`` / ``gs://``; shuffled per epoch: chunks permuted, the items
of each chunk permuted, which mixes classes because ``prepare`` writes them in a seeded random order): the images are
decoded in the DataLoader workers (libjpeg-turbo through ``torchvision.io``) and padded into one uint8
batch with their sizes, and the random views are made on the device, as for the in-memory path
(:class:`ssl_siamese.views.augment.ViewAugmentation` crops each image inside its own size). With
``decode="device"`` the workers pass the JPEG bytes through and the GPU decodes them (nvJPEG).
Evaluation images are resized (shorter side) and centre-cropped in the workers.

The training loader is resumable mid-epoch: it keeps litdata's loader state after each batch it hands out,
and a checkpoint stores the state after the last batch TRAINED (Lightning fetches one batch ahead), so a
resumed run sees exactly the batches the uninterrupted run would have seen.

Example:
    >>> shards = ShardFolder("imagenette-shards/")            # doctest: +SKIP
    >>> shards.classes[:2], shards.num_images("train")
    (['n01440764', 'n02102040'], 9469)
    >>> loader = StreamingTrainLoader(shards, batch_size=256, num_workers=8, seed=0)
    >>> images, labels, sizes = next(iter(loader))   # (256, 3, H_max, W_max) uint8, (256,), (256, 2)
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from litdata import StreamingDataLoader, StreamingDataset
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader, Subset
from torchvision.io import ImageReadMode, decode_image, decode_jpeg

from ssl_siamese.data.info import DataNotFoundError, ImageTensors
from ssl_siamese.data.prepare.output import FORMAT, ORDER, reprepare_command
from ssl_siamese.data.storage import EvaluationSplits, Storage
from ssl_siamese.data.images import resize_center_crop
from ssl_siamese.data.padded import pad_images

REMOTE_PREFIXES = ("s3://", "gs://", "gcs://", "azure://", "hf://")
DECODE_MODES = ("workers", "device")


def is_remote(path: str | Path) -> bool:
    """Whether ``path`` is an object-storage URL (s3://, gs://, ...) rather than a local folder."""
    return str(path).startswith(REMOTE_PREFIXES)


def s3_endpoint() -> str | None:
    """The S3-compatible endpoint set for this process (``AWS_ENDPOINT_URL``, else ``S3_ENDPOINT_URL``), if any."""
    return os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("S3_ENDPOINT_URL")


def _read_remote_json(url: str) -> dict[str, Any]:
    """``dataset.json`` of a bucket prefix, read with the client litdata itself uses for that scheme."""
    if url.startswith("s3://"):
        import boto3  # installed with litdata

        bucket, _, key = url[len("s3://"):].partition("/")
        body = boto3.client("s3", endpoint_url=s3_endpoint()).get_object(Bucket=bucket, Key=key)["Body"].read()
        return json.loads(body)
    try:
        import fsspec
    except ImportError as missing:
        raise ImportError(f"Reading {url} needs fsspec with the bucket's backend (pip install gcsfs / adlfs); "
                          "s3:// works with what litdata installs.") from missing
    with fsspec.open(url, "r") as file:
        return json.load(file)


def looks_prepared(data_dir: str | Path) -> bool:
    """Whether ``data_dir`` is a shard folder written by ``ssl_siamese.data.prepare`` (local check only)."""
    if is_remote(data_dir):
        return True
    path = Path(data_dir).expanduser() / "dataset.json"
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("format") == FORMAT
    except (OSError, ValueError):
        return False


@dataclass
class ShardFolder:
    """A prepared shard folder: its root (local path or bucket URL) and ``dataset.json``.

    Raises :class:`DataNotFoundError` naming the folder when it is missing, empty or not a prepared folder,
    and ValueError with the command that rewrites it when it was prepared in sorted order (before issue 23).
    """

    root: str
    meta: dict[str, Any]

    def __init__(self, root: str | Path) -> None:
        self.root = str(root).rstrip("/") if is_remote(root) else str(Path(root).expanduser().resolve())
        how = (f"prepare one with `python -m ssl_siamese.data.prepare IMAGE_FOLDER {self.root}`, or train on the "
               f"image folder itself with --data.dataset folder (decoded into memory)")
        if is_remote(self.root):
            try:
                self.meta = _read_remote_json(f"{self.root}/dataset.json")
            except Exception as error:  # noqa: BLE001 - any client error means "not readable there"
                raise DataNotFoundError(f"Cannot read {self.root}/dataset.json ({error}); is the URL right, "
                                        f"and are the credentials set? Otherwise {how}.") from error
        else:
            path = Path(self.root)
            if not path.is_dir():
                raise DataNotFoundError(f"Shard folder {path} does not exist; {how}.")
            meta_file = path / "dataset.json"
            if not meta_file.is_file():
                found = "it is empty" if not any(path.iterdir()) else "it holds no dataset.json"
                if any(path.glob(".incomplete-*")) or (path / ".prepare.json").is_file():
                    found = "its preparation did not finish (rerun the same prepare command to complete it)"
                raise DataNotFoundError(f"{path} is not a prepared shard folder: {found}; {how}.")
            self.meta = json.loads(meta_file.read_text())
        if self.meta.get("format") != FORMAT:
            raise DataNotFoundError(f"{self.root}/dataset.json is not an ssl_siamese shard description "
                                    f"(format {self.meta.get('format')!r}); {how}.")
        if self.meta.get("order") != ORDER:
            local = "LOCAL_FOLDER" if is_remote(self.root) else self.root
            upload = f", then upload LOCAL_FOLDER to {self.root}" if is_remote(self.root) else ""
            raise ValueError(
                f"{self.root} was prepared by an older ssl_siamese (dataset.json version "
                f"{self.meta.get('version')}), which wrote the images in sorted order, class by class: streamed "
                f"batches would hold one or two classes instead of a shuffle, and a contrastive method takes its "
                f"negatives from the batch. Prepare it again (the same command rewrites it in a seeded random "
                f"order): `{reprepare_command(self.meta, local)}`{upload}.")

    @property
    def classes(self) -> list[str]:
        return list(self.meta.get("classes") or [])

    def has_split(self, split: str) -> bool:
        return int(self.meta.get("splits", {}).get(split, 0)) > 0

    def num_images(self, split: str) -> int:
        return int(self.meta.get("splits", {}).get(split, 0))

    def split_dir(self, split: str) -> str:
        if not self.has_split(split):
            raise DataNotFoundError(f"{self.root} has no {split!r} split (it has: "
                                    f"{', '.join(s for s, n in self.meta.get('splits', {}).items() if n)}).")
        return f"{self.root}/{split}"


def encoded_tensor(data: Any) -> Tensor:
    """An encoded image as litdata returns it (bytes, memoryview, numpy or tensor) -> 1-D uint8 tensor."""
    if isinstance(data, Tensor):
        return data.flatten().to(torch.uint8)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def resize_centre_crop(image: Tensor, size: int) -> Tensor:
    """The evaluation transform on one uint8 ``(3, h, w)`` image: shorter side to ``size`` (bilinear,
    antialiased), then the centre ``size x size``: :func:`ssl_siamese.data.images.resize_center_crop`, the one
    geometry that folders, ``embed`` and ``load_backbone``'s transform use too."""
    return resize_center_crop(image, size)


class ShardImages(StreamingDataset):
    """Samples of one split, decoded in the worker: ``(image, label)`` where image is uint8 ``(3, h, w)``
    (``mode="train"``), uint8 ``(3, size, size)`` (``mode="eval"``) or the encoded bytes as a 1-D uint8 tensor
    (``mode="encoded"``, for decoding on the GPU). Defined at module level so that workers started with
    "spawn" or "forkserver" can unpickle it.

    Example:
        >>> image, label = ShardImages("shards/train", mode="eval", size=64)[0]  # doctest: +SKIP
    """

    def __init__(self, input_dir: str, mode: str = "train", size: int = 224, **kwargs: Any) -> None:
        super().__init__(input_dir, **kwargs)
        self.mode, self.size = mode, size

    def __getitem__(self, index: Any) -> tuple[Tensor, int]:
        sample = super().__getitem__(index)
        encoded = encoded_tensor(sample["image"])
        if self.mode == "encoded":
            return encoded, int(sample["label"])
        image = decode_image(encoded, mode=ImageReadMode.RGB)
        if self.mode == "eval":
            image = resize_centre_crop(image, self.size)
        return image, int(sample["label"])


def shard_images(input_dir: str, mode: str = "train", size: int = 224, **kwargs: Any) -> ShardImages:
    """A litdata ``StreamingDataset`` of one split that decodes as ``mode`` says (see :class:`ShardImages`).

    For ``s3://`` splits the endpoint that ``dataset.json`` was read from (``AWS_ENDPOINT_URL`` or
    ``S3_ENDPOINT_URL``) is passed to litdata as ``storage_options={"endpoint_url": ...}``, so the chunks come
    from the same server (boto3 alone would ignore ``S3_ENDPOINT_URL``)."""
    endpoint = s3_endpoint()
    if input_dir.startswith("s3://") and endpoint and "storage_options" not in kwargs:
        kwargs["storage_options"] = {"endpoint_url": endpoint}
    return ShardImages(input_dir, mode=mode, size=size, **kwargs)


def bound_worker_heap(worker_id: int | None = None) -> None:
    """Keep glibc from growing a process's heap with every decoded image (a DataLoader ``worker_init_fn``).

    glibc raises its mmap threshold after a large block is freed, so later ~150 KB decoded images come from
    a heap that does not shrink: a worker's memory grew from about 165 to 580 MiB over one Imagenette epoch.
    A fixed 128 KiB threshold keeps it bounded. Set in the workers alone, the whole train split still took
    1.18x the memory of a quarter of it; set in the training process too (before it forks the workers, which
    inherit it), 1.01x, as with ``MALLOC_MMAP_THRESHOLD_=131072`` in the environment (benchmarks/
    stream_memory.py, BENCHMARKS.md). So the streaming train loader sets it in its own process as well: a
    process-wide allocator setting that only makes blocks above 128 KiB come from ``mmap``. No-op where the C
    library has no ``mallopt``.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def collate_padded(batch: list[tuple[Tensor, int]]) -> tuple[Tensor, Tensor, Tensor]:
    """Training collate: ``(padded uint8 images, int64 labels, int64 (h, w) sizes)``."""
    images, sizes = pad_images([image for image, _ in batch])
    return images, torch.tensor([label for _, label in batch], dtype=torch.int64), sizes


def collate_encoded(batch: list[tuple[Tensor, int]]) -> tuple[list[Tensor], Tensor]:
    """Collate for ``decode="device"``: the encoded bytes stay a list (decoded on the GPU after loading)."""
    return [encoded for encoded, _ in batch], torch.tensor([label for _, label in batch], dtype=torch.int64)


def decode_on_device(encoded: list[Tensor], device: torch.device) -> tuple[Tensor, Tensor]:
    """Decode a batch of JPEG bytes on ``device`` (nvJPEG on CUDA, batched) and pad it: ``(images, sizes)``.
    PNG samples (``--lossless`` folders) and CPU devices decode with ``decode_image`` instead."""
    if device.type == "cuda" and all(bool(e[:2].eq(torch.tensor([0xFF, 0xD8], dtype=torch.uint8)).all())
                                     for e in encoded):
        images = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
    else:
        images = [decode_image(e, mode=ImageReadMode.RGB).to(device) for e in encoded]
    return pad_images(list(images))


class StreamingTrainLoader:
    """The training loader of a shard folder: litdata's ``StreamingDataLoader``, resumable at the batch trained.

    Lightning saves ``state_dict()`` in checkpoints; ``batches_done`` (a callable, the trainer's count of
    batches finished this epoch) picks the loader state saved right after that batch was handed out, since
    the batches fetched ahead were not trained yet.
    """

    def __init__(self, shards: ShardFolder, batch_size: int, num_workers: int, seed: int, drop_last: bool = True,
                 decode: str = "workers", pin_memory: bool = False, max_cache_size: str = "50GB",
                 batches_done: Callable[[], int] | None = None) -> None:
        if decode not in DECODE_MODES:
            raise ValueError(f"decode must be one of {DECODE_MODES}, not {decode!r}.")
        extra = {"max_cache_size": max_cache_size} if is_remote(shards.root) else {}
        # item_shuffle_window=0: a full permutation inside each chunk. litdata's default shuffles 256-item blocks
        # (for its batch_decode, unused here), so an image's batch-mates came from the same 255 images in every
        # epoch: 240 distinct ones over 10 epochs of Imagenette at 64 per batch, 590 with 0 (a uniform shuffle:
        # 609); chunks are read whole, so the order inside one costs nothing (BENCHMARKS.md, issue 23)
        self.dataset = shard_images(shards.split_dir("train"), mode="encoded" if decode == "device" else "train",
                                    shuffle=True, seed=seed, drop_last=drop_last, item_shuffle_window=0, **extra)
        bound_worker_heap()  # in this process too: the forked workers start from its heap and settings
        self.loader = StreamingDataLoader(
            self.dataset, batch_size=batch_size, num_workers=num_workers, drop_last=drop_last,
            collate_fn=collate_encoded if decode == "device" else collate_padded, pin_memory=pin_memory,
            persistent_workers=False, worker_init_fn=bound_worker_heap,
            # its own generator: starting the workers draws their base seed from it, not from the global RNG
            # that makes the views (else a resumed run's views would differ from the uninterrupted run's)
            generator=torch.Generator())
        self.batches_done = batches_done
        self._states: deque[tuple[int, dict[str, Any]]] = deque(maxlen=8)
        self._resuming = False

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        if not self._resuming:
            # litdata clears its "restored" flag only when an epoch is read to its end, but Lightning stops
            # after len(loader) batches without asking for the end; left set, the next epoch would continue the
            # restored one (and yield nothing). Only the first pass after load_state_dict resumes.
            self.loader.restore = False
        self._resuming = False
        self._states.clear()
        count = 0
        for batch in self.loader:
            count += 1
            self._states.append((count, self.loader.state_dict()))
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """litdata's state after the last batch trained (``batches_done``), else after the last handed out."""
        if not self._states:  # nothing handed out yet: nothing to skip on resume
            return {}
        done = self.batches_done() if self.batches_done is not None else self._states[-1][0]
        for count, state in reversed(self._states):
            if count <= done:
                return {"litdata": state}
        return {"litdata": self._states[0][1]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("litdata"):
            self.loader.load_state_dict(state["litdata"])
            self._resuming = True


def eval_loader(shards: ShardFolder, split: str, size: int, indices: list[int] | None, batch_size: int,
                num_workers: int, pin_memory: bool = False) -> DataLoader:
    """A map-style loader of ``split`` (optionally only ``indices``), resized and centre-cropped in workers,
    unshuffled; under DDP Lightning gives it a DistributedSampler like the in-memory evaluation loaders."""
    dataset = shard_images(shards.split_dir(split), mode="eval", size=size)
    if indices is not None:
        dataset = Subset(dataset, indices)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      pin_memory=pin_memory, persistent_workers=num_workers > 0)


def read_split(shards: ShardFolder, split: str, size: int, batch_size: int = 256, num_workers: int = 0) -> ImageTensors:
    """A whole split held in memory for evaluation (a linear probe, fine-tuning): uint8 ``(N, 3, size, size)``,
    resized and centre-cropped as the kNN monitor's images are, in the order of the shards, with their labels
    (-1 where unlabelled) and the folder's classes.

    Example:
        >>> test = read_split(ShardFolder("shards/"), "val", size=64)  # doctest: +SKIP
        >>> test.images.shape, test.classes[:2]
        (torch.Size([469, 3, 64, 64]), ['n01440764', 'n02102040'])
    """
    batches = list(eval_loader(shards, split, size, None, batch_size, num_workers))  # split_dir: never empty
    images, labels = zip(*batches)
    return ImageTensors(torch.cat(images), torch.cat(labels).to(torch.int64), shards.classes)


def seeded_indices(n: int, size: int | None, seed: int) -> list[int]:
    """``size`` of ``range(n)`` drawn with ``seed``, sorted (all of them when ``size`` is None or at least ``n``)."""
    if size is None or size >= n:
        return list(range(n))
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=generator)[:size].sort().values.tolist()


class StreamedStorage(Storage):
    """A prepared shard folder (``data_dir``, local or a bucket URL) streamed with litdata; nothing held in memory.

    Training batches are ``(uint8 images padded to the batch's largest, labels, (h, w) sizes)`` decoded in
    ``num_workers`` processes (:class:`StreamingTrainLoader`), or JPEG bytes decoded on the GPU by
    :meth:`before_transfer` with ``decode="device"``. The kNN bank is the train split (``knn_bank_subset`` of it)
    and the queries the val split (``val_subset``), resized and centre-cropped to ``image_size``.

    Example:
        >>> storage = StreamedStorage({"dataset": "stream", "data_dir": "shards/", "batch_size": 256})  # doctest: +SKIP
        >>> storage.setup(); storage.num_train
        9469
    """

    streamed = True

    def __init__(self, options: Mapping[str, Any]) -> None:
        super().__init__(options)
        self._shards: ShardFolder | None = None
        self.bank_indices: list[int] | None = None
        self.query_indices: list[int] | None = None

    @property
    def shards(self) -> ShardFolder:
        """The shard folder and its ``dataset.json`` (read on first use; a clear error when it is not one)."""
        if self._shards is None:
            self._shards = ShardFolder(self.options["data_dir"])
        return self._shards

    @property
    def num_classes(self) -> int | None:
        return len(self.shards.classes) or None

    @property
    def num_train(self) -> int:
        return self.shards.num_images("train")

    def prepare(self) -> None:
        self.shards  # noqa: B018 - a clear error now when the folder is missing or not prepared

    def setup(self) -> None:
        """Sizes and evaluation indices from ``dataset.json``; nothing is read into memory."""
        if self.ready:
            return
        shards, seed = self.shards, self.option("seed", 0)
        if self.num_train == 0:
            raise DataNotFoundError(f"{shards.root} has no training images (dataset.json says splits "
                                    f"{shards.meta.get('splits')}); prepare it again from a folder with images.")
        self.bank_indices = self.query_indices = None
        if shards.classes and shards.has_split("val"):
            self.bank_indices = seeded_indices(self.num_train, self.options.get("knn_bank_subset"), seed + 1)
            self.query_indices = seeded_indices(shards.num_images("val"), self.options.get("val_subset"), seed + 2)
        self.ready = True
        where = ("on the GPU (nvJPEG)" if self.option("decode", "workers") == "device"
                 else f"in {self.options.get('num_workers')} DataLoader workers")
        evaluation = (f"kNN/probe: {len(self.bank_indices)} bank images vs {len(self.query_indices)} val images"
                      if self.bank_indices is not None else "no labelled val split: no kNN/probe")
        rank_zero_info(f"ssl_siamese: streaming {self.num_train} training images from the shards in {shards.root} "
                       f"(decoded {where}, views made on the device at {self.image_size} px); {evaluation}")

    def train_loader(self, rank: int = 0, world_size: int = 1,
                     batches_done: Callable[[], int] | None = None) -> StreamingTrainLoader:
        """litdata spreads the chunks over the ranks and workers itself (``rank`` and ``world_size`` unused)."""
        decode = self.option("decode", "workers")
        return StreamingTrainLoader(self.shards, self.option("batch_size", 512), self.options.get("num_workers"),
                                    self.option("seed", 0), self.option("drop_last", True), decode,
                                    self.pin_memory and decode != "device", batches_done=batches_done)

    def eval_loaders(self) -> list[DataLoader]:
        if self.bank_indices is None or self.query_indices is None:
            return []
        return [eval_loader(self.shards, split, self.image_size, indices, self.option("batch_size", 512),
                            self.options.get("num_workers"), self.pin_memory)
                for split, indices in (("train", self.bank_indices), ("val", self.query_indices))]

    def evaluation_splits(self, note: str = "") -> EvaluationSplits:
        """The train and val splits read into memory, resized and centre-cropped as the kNN monitor's images are."""
        shards = self.shards
        if not shards.classes:
            raise ValueError(f"The shards in {shards.root} hold no labels (prepared from a folder without one "
                             "sub-folder per class), so there is nothing to evaluate with; prepare a labelled folder.")
        workers = self.option("num_workers", 0)
        train, test = (read_split(shards, split, self.image_size, num_workers=workers) for split in ("train", "val"))
        how = {"hash": f"{shards.meta.get('val_fraction', '')} of the images by path hash",
               "folders": "its val/ or test/ folder"}.get(shards.meta.get("split_rule"), "by prepare")
        return EvaluationSplits(train, test, "stream", f"the val split of the shards in {shards.root}{note} "
                                f"({len(test)} images, held out by prepare: {how}), which pretraining validated on "
                                "and did not train on")

    def before_transfer(self, batch: Any, device: torch.device) -> Any:
        """With ``decode="device"``: the training batch's JPEG bytes decoded on ``device`` (nvJPEG) and padded."""
        if self.option("decode", "workers") == "device" and isinstance(batch[0], list):
            images, sizes = decode_on_device(batch[0], device)
            return images, batch[1], sizes
        return batch
