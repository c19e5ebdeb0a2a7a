"""``python -m ssl_siamese.data.prepare``: an image folder -> litdata shards (issue 13, notes/shards_format.md).

One tiny source is built from real Imagenette JPEGs plus the awkward files (alpha, 16-bit, palette,
grayscale, large, truncated, not an image) and prepared once per module; the other tests compare against it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_image

from helpers import REPO, find_data_file, needs_data_file
from ssl_siamese.data import prepare as prep
from ssl_siamese.data.prepare import listing as prep_listing
from ssl_siamese.data.images import list_image_files, read_image

TAR = "imagenette-224/imagenette-224.tar"
CLASSES = 4
PER_CLASS = 10
KW = dict(val_fraction=0.25, num_workers=2, chunk_bytes="200KB", verbose=False, start_method="fork")

pytestmark = needs_data_file(TAR)


def _unpack_photos(into: Path) -> None:
    """The first ``PER_CLASS`` JPEGs of the first ``CLASSES`` classes of the tar, under ``into/<class>/``."""
    counts: dict[str, int] = {}
    with tarfile.open(find_data_file(TAR)) as tar:
        for member in tar:
            parts = member.name.split("/")
            if not (member.isfile() and member.name.endswith(".JPEG") and len(parts) == 3):
                continue
            name = parts[1]
            if counts.get(name, 0) < PER_CLASS and (name in counts or len(counts) < CLASSES):
                counts[name] = counts.get(name, 0) + 1
                (into / name).mkdir(parents=True, exist_ok=True)
                (into / name / parts[2]).write_bytes(tar.extractfile(member).read())
            if len(counts) == CLASSES and all(c == PER_CLASS for c in counts.values()):
                return


def _smooth(height: int, width: int, channels: int) -> np.ndarray:
    """A uint8 picture of gradients (photo-like: JPEG keeps it close), ``(height, width, channels)``."""
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    planes = [np.sin(3 * x + 2 * c) * np.cos(4 * y - c) for c in range(channels)]
    return ((np.stack(planes, -1) + 1) * 127.5).round().astype(np.uint8)


def _build_source(root: Path) -> Path:
    _unpack_photos(root)
    odd = root / sorted(p.name for p in root.iterdir())[0]
    rgba = _smooth(40, 50, 4)
    rgba[:, :25, 3] = 0  # left half fully transparent: white after prepare
    Image.fromarray(rgba, "RGBA").save(odd / "alpha.png")
    Image.fromarray(_smooth(30, 40, 1)[..., 0].astype(np.uint16) * 257).save(odd / "deep16.png")
    Image.fromarray(_smooth(30, 40, 3)).quantize(64).save(odd / "palette.gif")
    Image.fromarray(_smooth(60, 80, 1)[..., 0], "L").save(odd / "gray.jpg", quality=90)
    Image.fromarray(_smooth(400, 600, 3)).save(odd / "large.jpg", quality=90)
    Image.fromarray(_smooth(64, 64, 3)).save(odd / "tiles.webp")
    whole = (odd / "large.jpg").read_bytes()
    (odd / "truncated.jpg").write_bytes(whole[: len(whole) // 3])
    (odd / "garbage.png").write_bytes(b"this is not a png" * 10)
    (odd / "notes.txt").write_text("not an image")
    (odd / "logo.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    return root


def _samples(out: Path) -> dict[str, list[tuple[int, int, bytes]]]:
    """(index, label, image bytes) of every sample of every split, in stored order."""
    return {split: [(s["index"], s["label"], bytes(s["image"])) for s in prep.read_shards(out, split)]
            for split in prep.SPLITS if (out / split).is_dir()}


def _decode(data: bytes) -> torch.Tensor:
    return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return _build_source(tmp_path_factory.mktemp("src"))


@pytest.fixture(scope="module")
def prepared(source, tmp_path_factory) -> tuple[Path, prep.PrepareReport]:
    out = tmp_path_factory.mktemp("out") / "shards"
    with pytest.warns(UserWarning, match=r"4 files were skipped.*skipped\.txt"):
        report = prep.prepare(source, out, **KW)
    return out, report


def test_labels_indices_sizes_and_original_bytes(source, prepared):
    out, report = prepared
    files, _ = list_image_files(source)
    classes = sorted(p.name for p in source.iterdir())
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["format"] == "ssl_siamese.shards" and meta["version"] == 2 and meta["engine"] == "litdata"
    assert meta["order"] == "shuffled" and meta["order_seed"] == 0
    assert meta["classes"] == classes and meta["split_rule"] == "hash" and meta["encoding"] == "jpeg"
    samples = _samples(out)
    assert set(samples) == {"train", "val"} and all(samples.values())
    assert meta["splits"] == report.splits == {split: len(s) for split, s in samples.items()}
    written = [sample for split in samples.values() for sample in split]
    unreadable = {"truncated.jpg", "garbage.png"}
    readable = [i for i, path in enumerate(files) if path.name not in unreadable]
    assert sorted(index for index, _, _ in written) == readable  # each readable file once, across splits
    jobs = prep.plan(source, KW["val_fraction"])[0]
    for split, stored in samples.items():  # every split in its seeded random order, not the sorted listing
        order = [job.index for job in prep_listing.storage_order(jobs[split], seed=0) if job.index in readable]
        assert [index for index, _, _ in stored] == order != sorted(order)
    for index, label, data in written:
        path = files[index]
        assert label == classes.index(path.parent.name)
        image = _decode(data)
        assert min(image.shape[1:]) <= 256
        if path.suffix == ".JPEG" or path.name == "gray.jpg":  # RGB/grayscale JPEG within the cap: kept as is
            assert data == path.read_bytes()
        elif path.name == "large.jpg":  # 600x400 -> 384x256
            assert tuple(image.shape[1:]) == (256, 384)
        else:  # re-encoded from read_image's pixels (alpha on white, 16-bit scaled, palette): JPEG-close
            reference = read_image(path).float()
            assert image.shape == reference.shape
            assert (image.float() - reference).abs().mean() < 12, path.name
    alpha = _decode(next(d for i, _, d in written if files[i].name == "alpha.png"))
    assert alpha[:, :, :20].float().mean() > 245  # transparent half composited onto white


def test_skipped_files_counted_and_listed(prepared):
    out, report = prepared
    lines = (out / "skipped.txt").read_text().splitlines()
    reasons = dict(line.split("\t") for line in lines)
    assert report.skipped == len(lines) == json.loads((out / "dataset.json").read_text())["skipped"] == 4
    assert {Path(p).name for p in reasons} == {"truncated.jpg", "garbage.png", "notes.txt", "logo.svg"}
    assert all(reason.strip() for reason in reasons.values())
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no work folders left behind


def test_two_runs_identical_rerun_is_a_no_op_and_a_sorted_folder_is_rewritten(source, prepared, tmp_path, capsys):
    out, _ = prepared
    with pytest.warns(UserWarning, match="skipped"):
        again = prep.prepare(source, tmp_path / "again", **KW)
    assert _samples(tmp_path / "again") == _samples(out)
    chunks = sorted(p.relative_to(out) for p in out.glob("*/*.bin"))
    assert chunks == sorted(p.relative_to(tmp_path / "again") for p in (tmp_path / "again").glob("*/*.bin"))
    assert all((out / c).read_bytes() == (tmp_path / "again" / c).read_bytes() for c in chunks)  # byte-identical
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "again").rglob("*")}
    report = prep.prepare(source, tmp_path / "again", **{**KW, "verbose": True})
    assert report.already_complete and report.splits == again.splits
    assert "is complete" in capsys.readouterr().out
    assert before == {p: p.stat().st_mtime_ns for p in (tmp_path / "again").rglob("*")}
    meta = json.loads((tmp_path / "again" / "dataset.json").read_text())  # as versions before issue 23 wrote it
    old = {**{key: value for key, value in meta.items() if not key.startswith("order")}, "version": 1}
    (tmp_path / "again" / "dataset.json").write_text(json.dumps(old))
    with pytest.warns(UserWarning, match="skipped"):
        rewritten = prep.prepare(source, tmp_path / "again", **{**KW, "verbose": True})
    assert not rewritten.already_complete and "written in sorted order" in capsys.readouterr().out
    assert _samples(tmp_path / "again") == _samples(out)


def _command(source: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "ssl_siamese.data.prepare", str(source), str(out), "--val_fraction", "0.25",
            "--num_workers", "2", "--chunk_bytes", "200KB", "--start_method", "fork"]


def test_killed_run_resumes_to_the_same_shards(source, prepared, tmp_path):
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(_command(source, out), cwd=REPO, env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None and not list(out.glob(".incomplete-*/chunk-*")):
        time.sleep(0.05)
    assert process.poll() is None, "prepare finished before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)  # the whole group: main process and litdata's workers
    process.wait()
    assert not (out / "dataset.json").exists()
    rerun = subprocess.run(_command(source, out), cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "prepare: wrote" in rerun.stdout and "Progress" in rerun.stderr  # summary line and litdata's bar
    assert _samples(out) == _samples(prepared[0])


def test_folders_rule_and_class_list(tmp_path):
    for split, names in (("train", ["a", "b"]), ("val", ["b", "c"]), ("test", ["a"])):
        for name in names:
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(tmp_path / split / name / "x.png")
    jobs, classes, skipped, rule = prep.plan(tmp_path, 0.5)
    assert rule == "folders" and classes == ["a", "b", "c"]
    assert [(j.relative, j.label) for j in jobs["train"]] == [("train/a/x.png", 0), ("train/b/x.png", 1)]
    assert [(j.relative, j.label) for j in jobs["val"]] == [("val/b/x.png", 1), ("val/c/x.png", 2)]
    assert [path for path, _ in skipped] == ["test/a/x.png"]  # val/ is the held-out folder when both exist


def test_hash_split_is_a_function_of_the_path(tmp_path):
    for i in range(200):
        Image.new("RGB", (4, 4)).save(tmp_path / f"{i:03d}.png")
    jobs, classes, _, rule = prep.plan(tmp_path, 0.2)
    val = {j.relative for j in jobs["val"]}
    assert rule == "hash" and classes == [] and all(j.label == -1 for js in jobs.values() for j in js)
    assert val == {f"{i:03d}.png" for i in range(200) if prep_listing._hash_fraction(f"{i:03d}.png") < 0.2}
    assert 20 < len(val) < 60
    order = prep_listing.storage_order(jobs["train"], seed=0)  # unlabelled folders are written shuffled too
    assert sorted(order, key=lambda job: job.index) == jobs["train"] != order
    assert order == prep_listing.storage_order(jobs["train"], seed=0) != prep_listing.storage_order(jobs["train"], 1)


def test_clear_errors(tmp_path, prepared):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "missing")):
        prep.prepare(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match=r"empty.*no image files.*readme\.txt"):
        prep.prepare(tmp_path / "empty", tmp_path / "out")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("x")
    source = Path(json.loads((prepared[0] / "dataset.json").read_text())["source"])
    with pytest.raises(FileExistsError, match=r"not empty.*thesis\.tex.*--overwrite"):
        prep.prepare(source, foreign)
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(OSError, match="OUT_DIR"):
        prep.prepare(source, tmp_path / "a_file" / "out")
    cli = subprocess.run([sys.executable, "-m", "ssl_siamese.data.prepare", str(tmp_path / "missing"),
                          str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True)
    assert cli.returncode == 2 and "missing does not exist" in cli.stderr


def test_held_out_folder_without_train_is_an_error(tmp_path):
    (tmp_path / "val" / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "val" / "a" / "x.png")
    with pytest.raises(ValueError, match=r"val/ folder but no train/ folder"):
        prep.plan(tmp_path, 0.1)
