"""Data loading: real Fashion-MNIST and CIFAR-10 JPEGs (found by conftest.py), image folders, cache, datamodule."""

import csv
import gzip
import json
import logging
import os
import shutil
import tarfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_siamese import data, images
from ssl_siamese.data import idx, torchvision_sets
from ssl_siamese.data import DataNotFoundError, ImageTensors, SSLDataModule, load_split

from helpers import fashion_mnist_dir, find_data_file, needs_data_file, needs_fashion_mnist

FASHION = fashion_mnist_dir()
CIFAR_JPG = "cifar10-jpg/cifar10-jpg.tar.gz"
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

needs_fashion = needs_fashion_mnist


def copy_fashion_mnist(target: Path) -> list[Path]:
    """Copy the four IDX files (as found: gzipped or not) into ``target``; the copies."""
    target.mkdir(parents=True, exist_ok=True)
    stems = [stem for pair in idx._IDX_FILES.values() for stem in pair]
    return [Path(shutil.copy(idx._find_idx(FASHION, stem), target)) for stem in stems]


@pytest.fixture(autouse=True)
def no_system_fashion_mnist(monkeypatch, tmp_path_factory):
    """Tests see only the data they set up: no Debian package folder, no environment variable."""
    monkeypatch.setattr(idx, "FASHION_MNIST_SYSTEM_DIR", tmp_path_factory.getbasetemp() / "no-system-dir")
    monkeypatch.delenv(data.FASHION_MNIST_ENV, raising=False)


def save_png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


def random_rgb(seed: int, h: int = 20, w: int = 30) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# --------------------------------------------------------------------------- Fashion-MNIST

@needs_fashion
def test_fashion_mnist_loads_from_shared_data_and_torchvision_layout(tmp_path):
    copy_fashion_mnist(tmp_path / "FashionMNIST" / "raw")
    for data_dir in (FASHION, tmp_path):
        train = load_split("fashion_mnist", "train", data_dir, download=False)
        test = load_split("fashion_mnist", "test", data_dir, download=False)
        assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
        assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
        assert train.labels.unique().tolist() == list(range(10)) and len(train.classes) == 10
        assert torch.bincount(test.labels).tolist() == [1000] * 10
        assert 0.25 < train.images.float().mean().item() / 255 < 0.32  # mean of Fashion-MNIST: 0.286


@needs_fashion
def test_fashion_mnist_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv(data.FASHION_MNIST_ENV, str(FASHION))
    assert len(load_split("fashion_mnist", "test", tmp_path / "empty", download=False)) == 10000


@needs_fashion
def test_truncated_idx_file_is_a_clear_error(tmp_path):
    copied = copy_fashion_mnist(tmp_path)
    images = next(path for path in copied if path.name.startswith("t10k-images"))
    raw = images.read_bytes()
    raw = gzip.decompress(raw) if images.suffix == ".gz" else raw
    gz = tmp_path / "t10k-images-idx3-ubyte.gz"
    images.unlink()
    gz.write_bytes(gzip.compress(raw)[:5000])  # truncated download
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz"):
        load_split("fashion_mnist", "test", tmp_path, download=False)

    gz.unlink()  # an un-gzipped file with a valid header but too few pixels
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(raw[:-100])
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.*truncated"):
        load_split("fashion_mnist", "test", tmp_path, download=False)

    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x01" + raw[4:])  # a labels magic number
    with pytest.raises(ValueError, match="magic"):
        load_split("fashion_mnist", "test", tmp_path, download=False)


def test_missing_fashion_mnist_names_every_place_looked(tmp_path):
    with pytest.raises(DataNotFoundError) as error:
        load_split("fashion_mnist", "train", tmp_path, download=False)
    message = str(error.value)
    for path in data.fashion_mnist_search_paths(tmp_path):
        assert str(path) in message
    assert "apt-get install dataset-fashion-mnist" in message and str(idx.FASHION_MNIST_SYSTEM_DIR) in message


@needs_fashion
def test_tests_find_fashion_mnist_where_the_library_looks(tmp_path, monkeypatch):
    import helpers

    monkeypatch.setattr(helpers, "REPO", tmp_path / "repo")
    monkeypatch.setattr(helpers, "SHARED_DATA", tmp_path / "shared")
    assert helpers.find_fashion_mnist() is None
    reason = helpers.fashion_mnist_skip_reason()
    for path in data.fashion_mnist_search_paths(tmp_path / "repo" / "data") + [tmp_path / "shared" / "fashion-mnist"]:
        assert str(path) in reason
    copy_fashion_mnist(tmp_path / "repo" / "data" / "fashion-mnist")  # where scripts/setup.sh puts it
    assert helpers.find_fashion_mnist() == tmp_path / "repo" / "data" / "fashion-mnist"
    assert len(load_split("fashion_mnist", "test", tmp_path / "repo" / "data", download=False)) == 10000


def test_missing_cifar10_without_download_fails_fast_and_says_how_to_fix(tmp_path):
    start = time.perf_counter()
    with pytest.raises(DataNotFoundError) as error:
        load_split("cifar10", "train", tmp_path, download=False)
    assert time.perf_counter() - start < 5
    message = str(error.value)
    assert str(tmp_path.resolve()) in message and "cifar-10-batches-py" in message
    assert "--data.dataset folder" in message


def test_offline_download_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setattr(torchvision_sets, "can_connect", lambda url, timeout=3.0: False)
    with pytest.raises(DataNotFoundError, match="unreachable"):
        load_split("cifar100", "test", tmp_path, download=True)


def test_connectivity_check_leaves_the_global_socket_timeout_alone():
    import socket

    before = socket.getdefaulttimeout()
    torchvision_sets.can_connect("http://127.0.0.1:9/", timeout=0.5)
    assert socket.getdefaulttimeout() == before


# --------------------------------------------------------------------------- folders

@pytest.fixture(scope="module")
def cifar_folder(tmp_path_factory) -> Path:
    """30 CIFAR-10 test JPEGs per class from the archive, as ``train/<class>`` (20) and ``test/<class>`` (10)."""
    archive_path = find_data_file(CIFAR_JPG)
    if archive_path is None:
        pytest.skip(needs_data_file(CIFAR_JPG).kwargs["reason"])
    root = tmp_path_factory.mktemp("cifar_jpg")
    taken: dict[str, int] = defaultdict(int)
    with tarfile.open(archive_path, "r|gz") as archive:
        for member in archive:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) != 3 or parts[0] != "test" or taken[parts[1]] >= 30:
                if len(taken) == 10 and min(taken.values()) >= 30:
                    break
                continue
            split = "train" if taken[parts[1]] < 20 else "test"
            target = root / split / parts[1] / parts[2]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.extractfile(member).read())
            taken[parts[1]] += 1
    assert sorted(taken) == CIFAR_CLASSES
    return root


def test_labelled_image_folder_from_cifar_jpegs(cifar_folder, tmp_path):
    split = load_split("folder", "train", cifar_folder, image_size=32, cache_dir=tmp_path)
    assert split.images.shape == (200, 3, 32, 32) and split.images.dtype == torch.uint8
    assert split.classes == CIFAR_CLASSES
    assert torch.bincount(split.labels).tolist() == [20] * 10
    first = sorted((cifar_folder / "train" / "airplane").iterdir())[0]
    expected = np.array(Image.open(first).convert("RGB")).transpose(2, 0, 1).copy()
    assert torch.equal(split.images[0], torch.from_numpy(expected))  # 32 px: no resampling
    assert split.images[split.labels == CIFAR_CLASSES.index("truck")].shape[0] == 20

    test = load_split("folder", "test", cifar_folder, image_size=24, cache_dir=tmp_path)
    assert test.images.shape == (100, 3, 24, 24) and test.classes == CIFAR_CLASSES


def test_folder_datamodule_uses_train_and_test_subfolders(cifar_folder, tmp_path):
    dm = SSLDataModule("folder", data_dir=str(cifar_folder), batch_size=50, image_size=32, cache_dir=str(tmp_path))
    assert dm.num_classes == 10 and dm.image_size == 32 and dm.mean == data.IMAGENET_MEAN
    dm.prepare_data()
    dm.setup("fit")
    bank, queries = dm.val_dataloader()
    assert len(bank.dataset) == 200 and len(queries.dataset) == 100
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (50, 3, 32, 32) and images.dtype == torch.uint8 and labels.dtype == torch.int64


def test_flat_folder_is_unlabelled(tmp_path):
    for i in range(5):
        save_png(tmp_path / "photos" / f"{i}.png", random_rgb(i))
    split = load_split("folder", "train", tmp_path / "photos", image_size=16)
    assert split.images.shape == (5, 3, 16, 16) and split.classes == []
    assert (split.labels == -1).all()
    dm = SSLDataModule("folder", data_dir=str(tmp_path / "photos"), batch_size=2, image_size=16)
    assert dm.num_classes is None
    dm.setup("fit")
    assert dm.num_classes is None and dm.val_dataloader() == []


def test_nested_folders_are_scanned_recursively(tmp_path):
    save_png(tmp_path / "a" / "b" / "c" / "deep.png", random_rgb(0))
    save_png(tmp_path / "a" / "top.PNG", random_rgb(1))
    save_png(tmp_path / "d" / "e" / "f.png", random_rgb(2))
    split = load_split("folder", "train", tmp_path, image_size=8, cache_dir=tmp_path / ".cache")
    assert len(split) == 3 and split.classes == ["a", "d"] and split.labels.tolist() == [0, 0, 1]

    save_png(tmp_path / "loose.png", random_rgb(3))  # an image at the top: no class layout any more
    split = load_split("folder", "train", tmp_path, image_size=8, cache_dir=tmp_path / ".cache")
    assert len(split) == 4 and split.classes == [] and (split.labels == -1).all()


def test_image_modes_decode_to_rgb_squares(tmp_path):
    rgb = random_rgb(0, 24, 40)
    save_png(tmp_path / "gray.png", rgb[..., 0])
    save_png(tmp_path / "rgba.png", np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)]))
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "palette.gif")
    Image.fromarray(np.full((40, 24), 32896, np.uint16)).save(tmp_path / "sixteen.png")  # 128 * 257
    Image.fromarray(rgb).save(tmp_path / "photo.JPG")
    assert Image.open(tmp_path / "sixteen.png").mode.startswith("I")
    split = load_split("folder", "train", tmp_path, image_size=16)
    assert split.images.shape == (5, 3, 16, 16) and split.images.dtype == torch.uint8
    names = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
    sixteen = split.images[names.index("sixteen.png")]
    assert (sixteen == 128).all(), "16-bit values are scaled to 8 bits, not clipped"


def test_unreadable_files_are_skipped_and_counted(tmp_path, caplog):
    save_png(tmp_path / "good.png", random_rgb(0))
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    (tmp_path / "notes.txt").write_text("hello")
    with caplog.at_level(logging.WARNING, logger="ssl_siamese"):
        split = load_split("folder", "train", tmp_path, image_size=8)
    assert len(split) == 1
    assert "skipped 2 files" in caplog.text
    assert "broken.jpg" in caplog.text and "notes.txt" in caplog.text


def test_empty_missing_and_unreadable_folders_are_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        load_split("folder", "train", tmp_path / "empty")
    with pytest.raises(DataNotFoundError, match="does-not-exist"):
        load_split("folder", "train", tmp_path / "does-not-exist")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"garbage")
    (tmp_path / "bad" / "y.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match="None of the 2 image files") as error:  # and why, file by file
        load_split("folder", "train", tmp_path / "bad")
    assert "x.png as an image: cannot identify image file" in str(error.value) and "y.jpg" in str(error.value)


def test_second_load_comes_from_the_cache_outside_the_data_folder(tmp_path, monkeypatch, caplog,
                                                                 private_image_cache):
    for i in range(4):
        save_png(tmp_path / "imgs" / f"{i}.png", random_rgb(i))
    with caplog.at_level(logging.INFO):
        first = load_split("folder", "train", tmp_path / "imgs", image_size=12)
    cached = list(private_image_cache.glob("folder-imgs-*-12px-*.pt"))
    assert len(cached) == 1, "cached under $SSL_SIAMESE_CACHE"
    assert sorted(p.name for p in (tmp_path / "imgs").iterdir()) == [f"{i}.png" for i in range(4)], \
        "nothing is written into the user's data folder"
    assert f"into the cache {cached[0]}" in caplog.text, "the log says where the cache is"

    def fail(path, size, background):
        raise images.ImageReadError("decoded again despite the cache")

    monkeypatch.setattr(images, "read_image", fail)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        second = load_split("folder", "train", tmp_path / "imgs", image_size=12)
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert f"read from the decoded-image cache {cached[0]}" in caplog.text

    save_png(tmp_path / "imgs" / "new.png", random_rgb(9))  # a changed folder is decoded again
    with pytest.raises(ValueError, match="could be read"):
        load_split("folder", "train", tmp_path / "imgs", image_size=12)
    assert not list(private_image_cache.glob("*.tmp")), "atomic write leaves no temp file"


def test_cache_directory_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "mine"))
    assert data.default_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv(data.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.default_cache_dir() == tmp_path / "xdg" / "ssl_siamese"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.default_cache_dir() == tmp_path / "home" / ".cache" / "ssl_siamese"


def test_a_changed_folder_replaces_its_stale_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "cache"))
    save_png(tmp_path / "imgs" / "0.png", random_rgb(0))
    load_split("folder", "train", tmp_path / "imgs", image_size=12)
    load_split("folder", "train", tmp_path / "imgs", image_size=16)
    save_png(tmp_path / "imgs" / "1.png", random_rgb(1))
    assert len(load_split("folder", "train", tmp_path / "imgs", image_size=12)) == 2
    sizes = sorted(p.name.split("px-")[0].rsplit("-", 1)[1] for p in (tmp_path / "cache").glob("*.pt"))
    assert sizes == ["12", "16"], "one cache file per folder and size"


def test_skipped_files_are_reported_on_every_run(tmp_path, caplog):
    save_png(tmp_path / "icons" / "good.png", random_rgb(0))
    (tmp_path / "icons" / "logo.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    (tmp_path / "icons" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    for run in ("decoded", "read from the decoded-image cache"):
        caplog.clear()
        with caplog.at_level(logging.INFO):
            assert len(load_split("folder", "train", tmp_path / "icons", image_size=8)) == 1
        assert run in caplog.text
        assert "skipped 2 files" in caplog.text and "broken.png, logo.svg" in caplog.text, run


# --------------------------------------------------------------------------- synthetic and the datamodule

def test_synthetic_is_deterministic():
    a, b = load_split("synthetic", "train"), load_split("synthetic", "train")
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.images.shape == (2048, 3, 32, 32) and a.images.dtype == torch.uint8
    assert torch.bincount(a.labels).tolist() == [205] * 8 + [204] * 2
    test = load_split("synthetic", "test")
    assert test.images.shape == (512, 3, 32, 32) and not torch.equal(test.images[:10], a.images[:10])


def test_datamodule_batches_and_validation_loaders():
    dm = SSLDataModule("synthetic", batch_size=64, knn_bank_subset=300, val_subset=100, train_subset=1000)
    assert (dm.image_size, dm.channels, dm.num_classes) == (32, 3, 10)
    assert dm.mean == (0.5,) * 3 and dm.hparams["dataset"] == "synthetic"
    dm.prepare_data()
    dm.setup("fit")
    train = dm.train_dataloader()
    assert len(train) == 1000 // 64
    images, labels = next(iter(train))
    assert images.shape == (64, 3, 32, 32) and images.dtype == torch.uint8 and labels.dtype == torch.int64
    loaders = dm.val_dataloader()
    assert len(loaders) == 2
    assert len(loaders[0].dataset) == 300 and len(loaders[1].dataset) == 100
    bank_images, _ = next(iter(loaders[0]))
    again = SSLDataModule("synthetic", batch_size=64, knn_bank_subset=300, val_subset=100, train_subset=1000)
    again.setup("fit")
    assert torch.equal(next(iter(again.val_dataloader()[0]))[0], bank_images), "subsets are seeded"


@needs_fashion
def test_fashion_mnist_datamodule_subsets():
    dm = SSLDataModule("fashion_mnist", data_dir=str(FASHION), batch_size=128, train_subset=2000,
                       knn_bank_subset=1000, val_subset=500, download=False)
    assert (dm.image_size, dm.channels, dm.num_classes) == (28, 1, 10)
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (128, 1, 28, 28) and images.dtype == torch.uint8 and labels.max() <= 9
    assert [len(loader.dataset) for loader in dm.val_dataloader()] == [1000, 500]


def test_batch_larger_than_the_dataset_is_a_clear_error():
    dm = SSLDataModule("synthetic", batch_size=512, train_subset=100)
    with pytest.raises(ValueError, match=r"512.*100.*--data.batch_size"):
        dm.setup("fit")
    dm = SSLDataModule("synthetic", batch_size=512, train_subset=100, drop_last=False)
    dm.setup("fit")
    assert len(dm.train_dataloader()) == 1


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ValueError, match="cifar10, cifar100, stl10, fashion_mnist, synthetic, folder"):
        load_split("imagenet21k", "train")
    with pytest.raises(ValueError, match="Valid names"):
        SSLDataModule("mnist")


def test_image_tensors_subset():
    split = ImageTensors(torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.arange(4), ["a", "b", "c", "d"])
    part = split.subset(torch.tensor([1, 3]))
    assert len(part) == 2 and part.labels.tolist() == [1, 3] and part.classes == split.classes


def test_folder_with_a_test_split_but_no_train_split_is_a_clear_error(tmp_path):
    """Otherwise test/ would be read as one more training class and its images would leak into training."""
    save_png(tmp_path / "test" / "cat" / "0.png", random_rgb(0))
    save_png(tmp_path / "dog" / "1.png", random_rgb(1))
    with pytest.raises(DataNotFoundError, match="no train/ folder"):
        load_split("folder", "train", tmp_path, image_size=8)


def test_environment_variable_wins_over_the_system_copy(tmp_path, monkeypatch):
    monkeypatch.setenv(data.FASHION_MNIST_ENV, str(tmp_path / "mine"))
    paths = data.fashion_mnist_search_paths(tmp_path / "nothing")
    assert paths.index((tmp_path / "mine").resolve()) < paths.index(idx.FASHION_MNIST_SYSTEM_DIR)


def test_resumable_loader_shards_ranks_disjointly_and_reorders_each_epoch():
    from ssl_siamese.data.loader import ResumableBatchLoader

    images, labels = torch.arange(10).view(10, 1), torch.arange(10)
    shards = [ResumableBatchLoader(images, labels, batch_size=2, seed=3, rank=r, world_size=2) for r in range(2)]
    seen = [torch.cat([b[1] for b in shard]) for shard in shards]
    assert len(shards[0]) == 2 and sorted(torch.cat(seen).tolist()) == sorted(set(torch.cat(seen).tolist()))
    shards[0].set_epoch(1)
    assert torch.cat([b[1] for b in shards[0]]).tolist() != seen[0].tolist()
    resumed = ResumableBatchLoader(images, labels, batch_size=2, seed=3, rank=0, world_size=2)
    resumed.load_state_dict({"epoch": 0, "batches_done": 1, "seed": 3})
    assert torch.cat([b[1] for b in resumed]).tolist() == seen[0][2:].tolist()
    with pytest.raises(ValueError, match="--data.seed 9"):
        resumed.load_state_dict({"epoch": 0, "batches_done": 1, "seed": 9})


def test_classes_filter_keeps_only_those_labels_in_every_split():
    dm = SSLDataModule("synthetic", batch_size=16, classes=[0, 1, 2])
    dm.setup("fit")
    for split in (dm.train_data, dm.bank_data, dm.query_data):
        assert len(split) > 0 and set(split.labels.unique().tolist()) == {0, 1, 2}
    with pytest.raises(ValueError, match="No image has a label in --data.classes"):
        SSLDataModule("synthetic", batch_size=16, classes=[42]).setup("fit")


# --------------------------------------------------------------------------- held-out validation, image size, --help

def test_hold_out_split_is_seeded_per_class_and_leaves_every_class_in_training():
    labels = torch.tensor([0] * 50 + [1] * 20 + [2] * 2 + [-1] * 5)
    held = data.hold_out_split(labels, 0.1, seed=4)
    assert torch.equal(held, data.hold_out_split(labels, 0.1, seed=4)), "deterministic by seed"
    assert not torch.equal(held, data.hold_out_split(labels, 0.1, seed=5))
    assert torch.bincount(labels[held], minlength=3).tolist() == [5, 2, 0]  # round(0.1 * n); 2 -> 0
    assert torch.bincount(labels[data.hold_out_split(labels, 0.6, seed=0)], minlength=3).tolist() == [30, 12, 1]
    assert (labels[data.hold_out_split(labels, 0.99, seed=0)] >= 0).all(), "unlabelled images stay"
    capped = data.hold_out_split(labels, 0.5, seed=0, max_total=7)  # fraction 7/72: 4.9 -> 5, 1.9 -> 2, 0.2 -> 0
    assert torch.bincount(labels[capped], minlength=3).tolist() == [5, 2, 0]
    assert len(data.hold_out_split(torch.arange(30) % 10, 0.5, seed=0, max_total=14)) == 10  # 1.4 each: floor
    assert len(data.hold_out_split(labels, 0.0, seed=0)) == 0


def write_class_folders(root: Path, split: ImageTensors, per_class: int) -> Path:
    """``per_class`` images of each class of ``split`` as PNGs in ``root/<class name>/``."""
    for label, name in enumerate(split.classes):
        for i, index in enumerate(torch.nonzero(split.labels == label).flatten()[:per_class].tolist()):
            save_png(root / name.replace("/", "-") / f"{i}.png", split.images[index, 0].numpy())
    return root


def test_labelled_folder_without_test_split_holds_out_a_validation_split(tmp_path, caplog):
    for name in ("cat", "dog"):
        for i in range(30):
            save_png(tmp_path / "pets" / name / f"{i}.png", random_rgb(i + (100 if name == "dog" else 0), 8, 8))
    dm = SSLDataModule("folder", data_dir=str(tmp_path / "pets"), batch_size=8, image_size=16)
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
        dm.setup("validate")
    assert caplog.text.count("holding out") == 1, "said once"
    assert f"no test/ or val/ folder in {tmp_path / 'pets'}: holding out 6 of 60 training images" in caplog.text
    assert "seed 0" in caplog.text
    bank, queries = dm.val_dataloader()
    assert len(queries.dataset) == 6 and len(bank.dataset) == 54 and len(dm.train_data) == 54
    assert torch.bincount(dm.query_data.labels).tolist() == [3, 3]
    train_rows = {tuple(image.flatten().tolist()) for image in dm.train_data.images}
    assert not any(tuple(image.flatten().tolist()) in train_rows for image in dm.query_data.images), \
        "held-out images are not trained on"
    again = SSLDataModule("folder", data_dir=str(tmp_path / "pets"), batch_size=8, image_size=16)
    again.setup("fit")
    assert torch.equal(again.query_data.images, dm.query_data.images), "the same split every run"

    caplog.clear()
    off = SSLDataModule("folder", data_dir=str(tmp_path / "pets"), batch_size=8, image_size=16, val_fraction=0)
    with caplog.at_level(logging.WARNING):
        off.setup("fit")
    assert off.val_dataloader() == [] and len(off.train_data) == 60
    assert "there will be NO validation" in caplog.text and "--data.val_fraction is 0" in caplog.text
    with pytest.raises(ValueError, match="val_fraction must be in"):
        SSLDataModule("folder", val_fraction=1.0)


@needs_fashion
def test_recipe_on_a_labelled_folder_without_test_split_measures_knn(tmp_path, monkeypatch, caplog):
    """A user's class folders (real Fashion-MNIST PNGs), no test/ or val/: kNN, probe and pictures appear."""
    from ssl_siamese import SimCLR
    from ssl_siamese.cli import main

    monkeypatch.setenv("WANDB_MODE", "offline")
    folder = write_class_folders(tmp_path / "clothes", load_split("fashion_mnist", "test", FASHION), per_class=30)
    with caplog.at_level(logging.WARNING, logger="ssl_siamese"):
        summary = main(SimCLR, "simclr", [
            "--data.dataset", "folder", "--data.data_dir", str(folder), "--data.image_size", "28",
            "--data.batch_size", "64", "--model.backbone", "tiny_cnn", "--trainer.max_epochs", "1",
            "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false", "--log_to", "csv",
            "--out", str(tmp_path / "out")])
    assert f"no test/ or val/ folder in {folder}: holding out 30 of 300 training images (val_fraction 0.1" \
        in caplog.text
    assert [epoch for epoch, *_ in summary["knn_history"]] == [-1, 0], "kNN at start and after the epoch"
    assert all(0.0 <= entry.top1 <= 1.0 for entry in summary["knn_history"])
    metrics = "".join(path.read_text() for path in (tmp_path / "out").rglob("metrics.csv"))
    assert "probe/val_top1" in metrics and "knn/top1" in metrics
    assert list((tmp_path / "out" / "pictures").glob("*.png")), "embedding pictures drawn"
    # small folders: 4 steps an epoch log the loss more than once (log_every_n_steps 10 is lowered), kNN's k=200
    # is capped at the 27 bank images per class, and the card names the held-out share and the folder
    with next((tmp_path / "out").rglob("metrics.csv")).open() as rows:
        assert sum(bool(row.get("train/loss")) for row in csv.DictReader(rows)) >= 4
    exported = tmp_path / "out" / "exported_models" / "backbone"
    assert json.loads((exported / "config.json").read_text())["ssl_siamese"]["knn_evaluation"]["k"] == 27
    card = (exported / "README.md").read_text()
    assert f"| Data | folder {folder} |" in card and "(test split)" not in card
    assert f"Queries (kNN and probe): 0.1 of each class of {folder} held out (seed 0), not trained on" in card


def test_too_small_image_size_is_refused_with_the_minimum_and_why(tmp_path):
    from ssl_siamese import SimCLR
    from ssl_siamese.cli import main

    with pytest.raises(ValueError, match=r"image_size 7 is too small: the smallest is 16\. Random resized crops"):
        SSLDataModule("synthetic", image_size=7)
    with pytest.raises(SystemExit, match=r"--data.image_size 7 is too small.*use at least 16"):
        main(SimCLR, "simclr", ["--data.dataset", "synthetic", "--data.image_size", "7", "--log_to", "none",
                                "--out", str(tmp_path)])
    assert SSLDataModule("synthetic", image_size=16).image_size == 16


def test_every_data_option_is_described_in_help():
    """jsonargparse takes --help texts from the Args: section of SSLDataModule.__init__'s docstring."""
    import inspect

    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(SSLDataModule, "data")
    described = {action.dest: action.help for action in parser._actions if action.dest.startswith("data.")}
    for name in inspect.signature(SSLDataModule.__init__).parameters:
        if name != "self":
            assert described.get(f"data.{name}") and "(type:" not in described[f"data.{name}"].split(",")[0], name


def test_unusual_image_sizes_are_warned_about(tmp_path, monkeypatch, caplog):
    with caplog.at_level(logging.WARNING, logger="ssl_siamese"):
        SSLDataModule("fashion_mnist", image_size=224)
    assert "more than twice fashion_mnist's 28 px images" in caplog.text and "64x the compute" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ssl_siamese"):
        SSLDataModule("cifar10", image_size=64)
    assert caplog.text == "", "2x is a usual choice"

    save_png(tmp_path / "imgs" / "0.png", random_rgb(0))
    monkeypatch.setattr(os, "sysconf", lambda name: {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 256}[name])  # 1 MiB
    with caplog.at_level(logging.WARNING, logger="ssl_siamese"):
        load_split("folder", "train", tmp_path / "imgs", image_size=512)  # 0.75 MiB
    assert "more than half of this machine's" in caplog.text
