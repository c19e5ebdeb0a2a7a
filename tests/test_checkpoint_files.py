"""A file that is not a usable checkpoint is named for what it is, at every entry point, without a traceback.

Each kind of wrong file a user hands over (notes, random bytes, an empty or cut-off file, an image, a plain
pickle, a pickle holding objects, an exported backbone given to ``--ckpt_path``, a bare state_dict) gets a
message saying what the file is and what to do instead: from ``read_checkpoint``, ``check_resume_checkpoint``,
``load_backbone`` and the recipes' command lines.
"""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from ssl_siamese import SimCLR, export_backbone, load_backbone
from ssl_siamese.export.checkpoints import CheckpointError, SafeCheckpointIO, check_resume_checkpoint, read_checkpoint
from ssl_siamese.recipes import embed, finetune, linear_probe

REPO = Path(__file__).resolve().parents[1]


class Payload:
    """An object pickled into a checkpoint; unpickling it would run ``print``."""

    def __reduce__(self):
        return (print, ("this must never run",))


def write_notes(path: Path) -> Path:
    path.write_text("Training notes\nlr 0.06, batch 512: kNN 0.81 after 200 epochs\n")
    return path


def write_random(path: Path) -> Path:
    data = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    assert data[:1] != b"\x80" and data[:2] != b"PK"  # seeded: not a pickle or zip header by chance
    path.write_bytes(data)
    return path


def write_truncated(path: Path) -> Path:
    SafeCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(4000)}, "epoch": 3}, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def write_png(path: Path) -> Path:
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(path)
    return path


def write_pickle(path: Path) -> Path:
    with open(path, "wb") as file:
        pickle.dump({"w": [1.0, 2.0]}, file)
    return path


def write_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a.txt", "not a tensor")
    return path


def write_export(path: Path) -> Path:
    return export_backbone(SimCLR(backbone="tiny_cnn", view_size=28), path, data="fashion_mnist")


# (file maker, what the message must say)
KINDS = {
    "notes.txt": (write_notes, r"is a text file.*Training notes"),
    "random.bin": (write_random, r"matches no file format"),
    "empty.ckpt": (lambda p: p.write_bytes(b"") or p, r"is empty \(0 bytes\)"),
    "cut.ckpt": (write_truncated, r"truncated"),
    "picture.png": (write_png, r"is a PNG image"),
    "array.npy": (lambda p: np.save(p, np.zeros(3)) or p, r"is a NumPy array"),
    "plain.pkl": (write_pickle, r"pickle\.dump, not torch\.save"),
    "other.zip": (write_zip, r"zip archive.*a\.txt"),
}


@pytest.mark.parametrize("name", KINDS)
def test_read_checkpoint_says_what_the_file_is(tmp_path, name):
    make, message = KINDS[name]
    path = make(tmp_path / name)
    with pytest.raises(CheckpointError, match=message) as caught:
        read_checkpoint(path)
    assert "pickled objects" not in str(caught.value)  # the old message, false for all of these
    with pytest.raises(ValueError, match=message):  # load_backbone reads through read_checkpoint
        load_backbone(path)


def test_pickled_objects_are_named_and_never_run(tmp_path, capfd):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "extra": Payload()}, path)
    with pytest.raises(CheckpointError, match=r"pickled Python objects \(builtins\.print\).*weights-only"):
        read_checkpoint(path)
    with pytest.raises(ValueError, match=r"builtins\.print"):
        load_backbone(path)
    assert "must never run" not in capfd.readouterr().out


def test_pickled_class_of_user_code_is_named(tmp_path):
    path = tmp_path / "counter.pt"
    torch.save({"state_dict": {}, "numbers": np.arange(3)}, path)  # numpy arrays pickle as numpy objects
    with pytest.raises(CheckpointError, match=r"numpy\..*weights-only.*re-save"):
        read_checkpoint(path)


def test_exported_backbone_given_to_resume_says_how_to_use_it(tmp_path):
    path = write_export(tmp_path / "backbone.pt")
    model = SimCLR(backbone="tiny_cnn", view_size=28)
    with pytest.raises(CheckpointError, match=r"exported backbone.*not a training checkpoint") as caught:
        check_resume_checkpoint(model, path)
    message = str(caught.value)
    assert "--backbone" in message and "load_backbone" in message and "--pretrained" in message
    assert "missing" not in message and "another model" not in message  # the old, misleading message


def test_bare_state_dict_given_to_resume_is_named(tmp_path):
    model = SimCLR(backbone="tiny_cnn", view_size=28)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    with pytest.raises(CheckpointError, match=r"bare state_dict .*tensors.*no training state"):
        check_resume_checkpoint(model, tmp_path / "weights.pt")


def test_text_file_given_to_resume_is_named(tmp_path):
    path = write_notes(tmp_path / "notes.txt")
    with pytest.raises(CheckpointError, match="is a text file"):
        check_resume_checkpoint(SimCLR(backbone="tiny_cnn", view_size=28), path)


@pytest.mark.parametrize("recipe, option", [(embed, "--backbone"), (finetune, "--backbone"),
                                            (linear_probe, "--backbone"), (linear_probe, "--ckpt")])
@pytest.mark.parametrize("name", ["notes.txt", "random.bin", "cut.ckpt"])
def test_downstream_recipes_exit_with_the_message(tmp_path, recipe, option, name, capsys):
    make, message = KINDS[name]
    path = make(tmp_path / name)
    images = tmp_path / "images"
    images.mkdir()
    write_png(images / "a.png")
    extra = {embed: ["--data", str(images), "--out", str(tmp_path / "e.npz")],
             finetune: ["--data.dataset", "synthetic", "--out", str(tmp_path / "ft"), "--log_to", "none"],
             linear_probe: ["--data.dataset", "synthetic", "--out", str(tmp_path / "lp"), "--log_to", "none"]}
    with pytest.raises(SystemExit) as caught:
        recipe.main([option, str(path), *extra[recipe]])
    assert f"ssl_siamese.recipes.{recipe.__name__.rsplit('.', 1)[1]}: error:" in str(caught.value.code)
    assert re.search(message, str(caught.value.code)), caught.value.code


def run_recipe(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=240)


def test_pretraining_recipe_ckpt_path_on_wrong_files_exits_cleanly(tmp_path):
    """The real command line, as a user runs it: one clean line, exit status 1, no traceback (a text file); the
    same ``main`` in this process gives an exported backbone its own message (a second process would only pay
    Lightning's start again)."""
    from ssl_siamese.cli.lightning import main

    notes, export = write_notes(tmp_path / "notes.txt"), write_export(tmp_path / "backbone.pt")
    common = ["--model.backbone", "tiny_cnn", "--data.dataset", "synthetic", "--data.image_size", "28",
              "--trainer.accelerator", "cpu", "--trainer.max_steps", "1", "--log_to", "none",
              "--out", str(tmp_path / "out")]
    done = run_recipe(["ssl_siamese.recipes.simclr", *common, "--ckpt_path", str(notes)], tmp_path)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "is a text file" in done.stderr and "ssl_siamese.recipes.simclr: error:" in done.stderr
    with pytest.raises(SystemExit) as caught:
        main(SimCLR, "simclr", [*common, "--ckpt_path", str(export)])
    assert str(caught.value.code).startswith("ssl_siamese.recipes.simclr: error: "), caught.value.code
    assert "exported backbone, not a training checkpoint" in str(caught.value.code)


def test_siamese_recipe_pretrained_on_wrong_files_exits_with_the_message(tmp_path):
    from ssl_siamese.recipes import siamese

    for path, message in [(write_notes(tmp_path / "notes.txt"), "is a text file"),
                          (write_truncated(tmp_path / "cut.pt"), "is truncated")]:
        with pytest.raises(SystemExit, match=message) as caught:
            siamese.main(["--pretrained", str(path), "--data.dataset", "synthetic", "--epochs", "0",
                          "--episodes", "5", "--out", str(tmp_path / "out"), "--log_to", "none"])
        assert str(caught.value.code).startswith("ssl_siamese.recipes.siamese: error: ")
