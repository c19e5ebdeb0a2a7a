"""Streaming prepared shard folders (issue 13): the DataModule, the loader's resume state, ranks, the recipe.

The shard folders here are written with ``ssl_siamese.data.prepare`` from real Imagenette photos (224 px
JPEGs from ../shared/data) re-sized to varying shapes, so the streamed path meets images of many sizes.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

from ssl_siamese.views.augment import ViewAugmentation
from ssl_siamese.data import SSLDataModule
from ssl_siamese.data.info import DataNotFoundError
from ssl_siamese.data.mixing import distinct_classes_per_batch, uniform_distinct_classes
from ssl_siamese.data.prepare import main as prepare_main
from ssl_siamese.data.prepare import read_shards
from ssl_siamese.data.streamed import ShardFolder, StreamingTrainLoader, shard_images

from helpers import find_data_file, free_port

REPO = Path(__file__).resolve().parents[1]
TAR = find_data_file("imagenette-224/imagenette-224.tar")
needs_imagenette = pytest.mark.skipif(TAR is None, reason="Imagenette (../shared/data/imagenette-224) not found")

SHAPES = [(224, 224), (180, 240), (240, 160), (200, 200), (150, 260)]


def photo_folder(root: Path, per_class: int, classes: int = 3, split_dirs: bool = True,
                 shapes: list[tuple[int, int]] = SHAPES) -> Path:
    """``root`` with train/ and val/ class folders of real photos at varying sizes, as JPEG files."""
    assert TAR is not None
    wanted: dict[str, int] = {}
    with tarfile.open(TAR) as tar:
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 3:
                continue
            split, wnid = parts[0], parts[1]
            key = f"{split}/{wnid}"
            if len({k.split('/')[1] for k in wanted} | {wnid}) > classes:
                continue
            count = wanted.get(key, 0)
            if count >= (per_class if split == "train" else max(2, per_class // 3)):
                continue
            wanted[key] = count + 1
            image = Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")
            height, width = shapes[count % len(shapes)]
            target = root / (key if split_dirs else wnid) / f"{split}_{count:03d}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            image.resize((width, height)).save(target, quality=90)
    return root


def prepare(src: Path, out: Path) -> Path:
    """``python -m ssl_siamese.data.prepare``'s ``main`` in this process (``test_prepare`` runs the real command),
    its worker forked: a spawned one, or a fresh interpreter, would import torch again (seconds each)."""
    assert prepare_main([str(src), str(out), "--num_workers", "1", "--chunk_bytes", "256KB",
                         "--start_method", "fork"]) == 0
    return out


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    if TAR is None:
        pytest.skip("Imagenette not found")
    return prepare(photo_folder(tmp_path_factory.mktemp("photos"), per_class=24),
                   tmp_path_factory.mktemp("shards") / "out")


@needs_imagenette
def test_stream_datamodule_serves_padded_batches_with_sizes_and_eval_loaders(shards):
    dm = SSLDataModule("stream", data_dir=str(shards), batch_size=8, num_workers=0, image_size=64)
    dm.setup("fit")
    meta = json.loads((shards / "dataset.json").read_text())
    assert dm.num_classes == len(meta["classes"]) == 3
    images, labels, sizes = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape[:2] == (8, 3) and sizes.shape == (8, 2)
    assert (sizes[:, 0] <= images.shape[2]).all() and (sizes[:, 1] <= images.shape[3]).all()
    assert len({tuple(s) for s in sizes.tolist()}) > 1, "images of several sizes in one batch"
    bank, query = dm.val_dataloader()
    bank_images, bank_labels = next(iter(bank))
    assert bank_images.shape[1:] == (3, 64, 64) and bank_labels.dtype == torch.int64
    assert len(query.dataset) == meta["splits"]["val"]
    views = ViewAugmentation(size=64)(images, sizes=sizes)
    assert views.shape == (8, 3, 64, 64) and torch.isfinite(views).all()


@needs_imagenette
def test_streamed_labels_match_the_files_and_each_image_is_read_once_per_epoch(shards):
    dataset = shard_images(str(shards / "train"), mode="train")
    seen = [int(dataset[i][1]) for i in range(len(dataset))]
    assert sorted(set(seen)) == [0, 1, 2]
    loader = StreamingTrainLoader(ShardFolder(shards), batch_size=5, num_workers=2, seed=0, drop_last=False)
    labels = torch.cat([batch[1] for batch in loader])
    assert len(labels) == len(dataset) and sorted(labels.tolist()) == sorted(seen)


@needs_imagenette
def test_streamed_batches_hold_as_many_classes_as_a_uniform_shuffle(shards):
    """Issue 23: prepare wrote the sorted (class-grouped) listing and litdata's shuffle only permutes chunks
    and windows inside them, so a streamed batch held one class or two. Through the recipes' loader, over
    four epochs, batches now hold as many classes as a uniform shuffle's (exact expectation, 4 standard errors)."""
    dm = SSLDataModule("stream", data_dir=str(shards), batch_size=8, num_workers=2, image_size=32)
    dm.setup("fit")
    loader = dm.train_dataloader()
    distinct = [n for _ in range(4) for n in distinct_classes_per_batch(loader)]
    counts = Counter(int(sample["label"]) for sample in read_shards(shards, "train"))
    mean, sd = uniform_distinct_classes(list(counts.values()), 8)
    observed = sum(distinct) / len(distinct)
    assert observed > mean - 4 * sd / len(distinct) ** 0.5, f"{observed:.2f} classes per batch, uniform {mean:.2f}"


@needs_imagenette
def test_a_folder_prepared_in_sorted_order_is_refused_with_the_command_to_redo_it(shards, tmp_path):
    """A folder written before issue 23 (dataset.json version 1, no "order") would stream one-class batches:
    training stops and gives the prepare command that rewrites it."""
    old = tmp_path / "old"
    shutil.copytree(shards, old)
    meta = json.loads((old / "dataset.json").read_text())
    meta = {**{key: value for key, value in meta.items() if not key.startswith("order")}, "version": 1}
    (old / "dataset.json").write_text(json.dumps(meta))
    command = f"python -m ssl_siamese.data.prepare {meta['source']} {old}"
    with pytest.raises(ValueError, match=rf"(?s)sorted order.*one or two classes.*{re.escape(command)}"):
        SSLDataModule("stream", data_dir=str(old), batch_size=4, num_workers=0).prepare_data()


def _epoch(loader) -> list[list[int]]:
    return [batch[2].tolist() + batch[1].tolist() for batch in loader]  # sizes and labels identify batches


@needs_imagenette
@pytest.mark.parametrize("workers", [0, 2])
def test_resumed_loader_gives_the_batches_the_uninterrupted_one_would(shards, workers):
    full = _epoch(StreamingTrainLoader(ShardFolder(shards), batch_size=6, num_workers=workers, seed=3))
    trained = {"n": 0}
    first = StreamingTrainLoader(ShardFolder(shards), batch_size=6, num_workers=workers, seed=3,
                                 batches_done=lambda: trained["n"])
    iterator, before = iter(first), []
    for _ in range(4):
        before.append(next(iterator))
    next(iterator)  # fetched ahead (as Lightning does) but not trained
    trained["n"] = 4
    state = first.state_dict()
    resumed = StreamingTrainLoader(ShardFolder(shards), batch_size=6, num_workers=workers, seed=3)
    resumed.load_state_dict(state)
    after = _epoch(resumed)
    got = [b[2].tolist() + b[1].tolist() for b in before] + after
    assert got == full


@needs_imagenette
def test_missing_empty_and_unprepared_folders_are_clear_errors(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"does not exist.*ssl_siamese.data.prepare"):
        SSLDataModule("stream", data_dir=str(tmp_path / "nowhere")).prepare_data()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFoundError, match=r"empty.*ssl_siamese.data.prepare"):
        SSLDataModule("stream", data_dir=str(tmp_path / "empty")).prepare_data()
    photo_folder(tmp_path / "photos", per_class=2, classes=1)
    with pytest.raises(DataNotFoundError, match=r"no dataset.json"):
        SSLDataModule("stream", data_dir=str(tmp_path / "photos")).prepare_data()


@needs_imagenette
def test_a_prepared_folder_passed_as_folder_is_streamed(shards, caplog):
    dm = SSLDataModule("folder", data_dir=str(shards), batch_size=4, num_workers=0)
    assert dm.streamed and dm.image_size == 224
    assert "streaming it as --data.dataset stream" in caplog.text


def test_stream_options_that_need_memory_are_refused(tmp_path):
    with pytest.raises(ValueError, match="train_subset.*prepare"):
        SSLDataModule("stream", data_dir=str(tmp_path), train_subset=10)
    with pytest.raises(ValueError, match="decode"):
        SSLDataModule("stream", data_dir=str(tmp_path), decode="gpu")


def stream_recipe(out: Path, shards: Path, *extra: str, kill_at: int | None = None) -> subprocess.Popen:
    """``python -m ssl_siamese.recipes.simclr`` on the shard folder, the README's step checkpoints on."""
    args = [sys.executable, "-m", "ssl_siamese.recipes.simclr", "--model.backbone", "tiny_cnn",
            "--model.hidden_dim", "32", "--model.projection_dim", "16",
            "--data.dataset", "stream", "--data.data_dir", str(shards), "--data.image_size", "32",
            "--data.batch_size", "16", "--data.num_workers", "2",
            "--trainer.max_epochs", "2", "--trainer.accelerator", "cpu", "--trainer.deterministic", "true",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.log_every_n_steps", "1", "--log_to", "csv", "--knn_at_start", "false",
            "--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.every_n_train_steps", "1",
            "--trainer.callbacks.save_last", "true", "--out", str(out), *extra]
    if kill_at is not None:
        args += ["--trainer.callbacks+=test_resume_cli.KillAtStep", "--trainer.callbacks.step", str(kill_at)]
    env = {**__import__("os").environ, "PYTHONPATH": f"{REPO / 'tests'}:{REPO}", "OMP_NUM_THREADS": "1",
           "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@needs_imagenette
@pytest.mark.slow
def test_sigkilled_stream_recipe_resumes_to_the_uninterrupted_weights(shards, tmp_path):
    from test_resume_cli import assert_same_weights, checkpoint, finish

    steps_per_epoch = json.loads((shards / "dataset.json").read_text())["splits"]["train"] // 16
    full = stream_recipe(tmp_path / "full", shards)
    resume: list[str] = []
    for kill_at in (2, steps_per_epoch + 1):  # mid-epoch 0, then just after epoch 0's validation
        finish(stream_recipe(tmp_path / "killed", shards, *resume, kill_at=kill_at), killed=True)
        assert checkpoint(tmp_path / "killed")["global_step"] == kill_at
        resume = ["--ckpt_path", str(tmp_path / "killed" / "checkpoints" / "last.ckpt")]
    output = finish(stream_recipe(tmp_path / "killed", shards, *resume))
    assert "streaming" in output and "training images from the shards" in output
    finish(full)
    resumed, reference = checkpoint(tmp_path / "killed"), checkpoint(tmp_path / "full")
    assert resumed["global_step"] == reference["global_step"] == 2 * steps_per_epoch
    assert_same_weights(resumed["state_dict"], reference["state_dict"])


def _fingerprints(batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> list[str]:
    """One string per image of a padded batch: its label, size and pixel checksum (unique in these folders)."""
    images, labels, sizes = batch
    return [f"{int(label)}:{h}x{w}:{int(image[:, :h, :w].long().sum())}:{int(image[:, :h, :w].long()[0, ::7, ::5].sum())}"
            for image, label, (h, w) in zip(images, labels, sizes.tolist())]


def _rank_worker(rank: int, port: int, shards: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        loader = StreamingTrainLoader(ShardFolder(shards), batch_size=4, num_workers=1, seed=5, drop_last=False)
        seen = [fp for batch in loader for fp in _fingerprints(batch)]
        (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps({"seen": seen, "len": len(loader)}))
    finally:
        dist.destroy_process_group()


@needs_imagenette
def test_two_gloo_ranks_read_disjoint_parts_that_cover_the_epoch_once(shards, tmp_path):
    """Two ranks, each with a loader worker of its own. The ranks are forked from this process, not spawned (a
    fresh interpreter imports torch again, seconds each), nor taken from ``helpers.run_gloo_ranks``' shared
    group, whose daemonic processes may not start the loader's worker."""
    import torch.multiprocessing as mp

    mp.start_processes(_rank_worker, args=(free_port(), str(shards), str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    everything = [fp for batch in StreamingTrainLoader(ShardFolder(shards), batch_size=4, num_workers=0, seed=5,
                                                       drop_last=False) for fp in _fingerprints(batch)]
    assert len(set(everything)) == len(everything), "fingerprints identify the images"
    assert ranks[0]["seen"] and ranks[1]["seen"]
    assert not set(ranks[0]["seen"]) & set(ranks[1]["seen"]), "no image on both ranks"
    assert sorted(ranks[0]["seen"] + ranks[1]["seen"]) == sorted(everything), "together: the epoch, once"
    assert abs(len(ranks[0]["seen"]) - len(ranks[1]["seen"])) <= 4 * 2, "about even"


@needs_imagenette
def test_views_from_the_stream_match_views_from_memory_on_the_same_images(tmp_path):
    """Same square photos, same random parameters: the streamed path (JPEG bytes kept by prepare, decoded by
    torchvision in the workers) and the in-memory path (decoded by PIL into one tensor) give the same views,
    up to the two JPEG decoders' rounding; so the crop/colour statistics are the same."""
    src = photo_folder(tmp_path / "photos", per_class=8, classes=2, shapes=[(96, 96)])
    out = prepare(src, tmp_path / "shards")
    streamed = SSLDataModule("stream", data_dir=str(out), batch_size=16, num_workers=0, image_size=32)
    memory = SSLDataModule("folder", data_dir=str(src), batch_size=16, num_workers=0, image_size=96,
                           cache_dir=str(tmp_path / "cache"))
    streamed.setup("fit"), memory.setup("fit")
    images, labels, sizes = next(iter(streamed.train_dataloader()))
    assert (sizes == 96).all()
    twins = torch.stack([memory.train_data.images[int(torch.argmin(
        (memory.train_data.images.float() - image.float()).abs().mean((1, 2, 3))))] for image in images])
    assert (twins.float() - images.float()).abs().mean() < 2.0, "the same photos, decoded twice"
    aug = ViewAugmentation(size=32, blur_prob=0.5, solarize_prob=0.2)
    params = aug.sample_params(len(images), generator=torch.Generator().manual_seed(0))
    from_stream = aug.apply_params(images, params, sizes=sizes)
    from_memory = aug.apply_params(twins, params)
    assert (from_stream - from_memory).abs().mean() < 0.05  # normalised units; decoders differ by ~1/255
    for stat in (lambda x: x.mean((0, 2, 3)), lambda x: x.std((0, 2, 3))):
        assert torch.allclose(stat(from_stream), stat(from_memory), atol=0.02)


@needs_imagenette
def test_decoding_on_the_device_gives_the_workers_batches(shards):
    """decode="device" passes JPEG bytes through the loader and decodes after it (nvJPEG on CUDA; on this CPU
    the same hook decodes with torchvision), giving the same padded batch as decoding in the workers."""
    on_device = SSLDataModule("stream", data_dir=str(shards), batch_size=6, num_workers=0, image_size=32,
                              decode="device")
    in_workers = SSLDataModule("stream", data_dir=str(shards), batch_size=6, num_workers=0, image_size=32)
    encoded, labels = next(iter(on_device.train_dataloader()))
    assert isinstance(encoded, list) and encoded[0].dtype == torch.uint8 and encoded[0].dim() == 1
    images, labels_after, sizes = on_device.on_before_batch_transfer((encoded, labels), 0)
    expected = next(iter(in_workers.train_dataloader()))
    assert torch.equal(labels_after, expected[1]) and torch.equal(sizes, expected[2])
    assert torch.equal(images, expected[0])
