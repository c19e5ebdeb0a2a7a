"""OneShotClassifier on a real folder with a truncated JPEG and the ``._name`` AppleDouble file macOS leaves:
``on_error="skip"`` leaves them out and says why, and ``list_image_files`` never lists the ``._`` file."""

from __future__ import annotations

import math
import struct
import tarfile
from pathlib import Path

import pytest
import torch
from helpers import find_data_file, needs_data_file

from ssl_siamese import OneShotClassifier, SimCLR, export_backbone, load_backbone
from ssl_siamese.data.images import ImageReadError, list_image_files
from ssl_siamese.search.oneshot import UNREADABLE

CIFAR_JPG = "cifar10-jpg/cifar10-jpg.tar.gz"
CLASSES, PER_CLASS = ("cat", "ship"), 4


def apple_double(path: Path) -> None:
    """The resource-fork file macOS writes as ``._name`` on non-Apple volumes: the AppleDouble header."""
    path.write_bytes(struct.pack(">II16sH", 0x00051607, 0x00020000, b"Mac OS X        ", 0) + bytes(64))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """references/<class>.jpg and held_out/<class>/*.jpg from CIFAR-10's test JPEGs, with broken files among them."""
    root = tmp_path_factory.mktemp("oneshot")
    with tarfile.open(find_data_file(CIFAR_JPG)) as tar:
        members = [m for c in CLASSES for m in sorted((m for m in tar.getmembers() if m.isfile()
                                                        and m.name.startswith(f"test/{c}/")), key=lambda m: m.name)
                   [:PER_CLASS]]
        tar.extractall(root / "tar", members=members, filter="data")
    for c in CLASSES:
        files = sorted((root / "tar" / "test" / c).iterdir())
        (root / "references").mkdir(exist_ok=True)
        files[0].rename(root / "references" / f"{c}.jpg")
        (root / "held_out" / c).mkdir(parents=True)
        for file in files[1:]:
            file.rename(root / "held_out" / c / file.name)
        apple_double(root / "references" / f"._{c}.jpg")
        apple_double(root / "held_out" / c / f"._{files[1].name}")
    cut = root / "held_out" / "cat" / "cut.jpg"  # a truncated download
    cut.write_bytes((root / "references" / "cat.jpg").read_bytes()[:200])
    return root


@needs_data_file(CIFAR_JPG)
def test_unreadable_files_are_skipped_and_reported_and_the_listing_ignores_apple_double(folder, tmp_path):
    torch.manual_seed(0)
    backbone, _, metadata = load_backbone(export_backbone(SimCLR(backbone="tiny_cnn", view_size=32), tmp_path / "b.pt"))
    globbed = sorted((folder / "references").glob("*.jpg"))  # what the README used to do: picks ._cat.jpg up
    assert [p.name for p in globbed] == ["._cat.jpg", "._ship.jpg", "cat.jpg", "ship.jpg"]
    references, _ = list_image_files(folder / "references")
    assert [p.name for p in references] == ["cat.jpg", "ship.jpg"]
    held_out, _ = list_image_files(folder / "held_out")
    assert not any(p.name.startswith("._") for p in held_out) and folder / "held_out/cat/cut.jpg" in held_out

    classifier = OneShotClassifier(backbone, metadata, device="cpu")
    with pytest.raises(ImageReadError, match=r"\._cat\.jpg"):
        classifier.register("cat", globbed[0])
    with pytest.warns(UserWarning, match="could not be read"), \
            pytest.raises(ValueError, match=r"None of the images of 'cat' could be read: Cannot read .*\._cat\.jpg"):
        classifier.register("cat", [globbed[0]], on_error="skip")
    with pytest.warns(UserWarning, match="Skipped 1 of 2 files"):
        assert classifier.register("cat", [globbed[0], references[0]], on_error="skip") == 1
    assert classifier.skipped[0][0] == str(globbed[0])
    classifier.register("ship", references[1])
    assert classifier.classes == ["cat", "ship"]

    good = [p for p in held_out if p.name != "cut.jpg"]
    mixed = [*good[:2], folder / "held_out/cat/cut.jpg", folder / "held_out/cat/._missing.jpg", *good[2:]]
    with pytest.raises(ImageReadError, match="cut.jpg"):
        classifier.classify(mixed)
    with pytest.warns(UserWarning, match="Skipped 2 of"):
        answers = classifier.classify(mixed, on_error="skip")
    assert [path for path, _ in classifier.skipped] == [str(mixed[2]), str(mixed[3])]
    assert "cut.jpg" in classifier.skipped[0][1] and "No image file" in classifier.skipped[1][1]
    assert len(answers) == len(mixed) and answers[2][0] == answers[3][0] == UNREADABLE and math.isnan(answers[2][1])
    assert answers[:2] + answers[4:] == classifier.classify(good)  # the readable ones answer as on their own

    names = [p.parent.name for p in mixed]
    with pytest.warns(UserWarning):
        threshold = classifier.calibrate_threshold(mixed, names, false_reject_rate=0.2, on_error="skip")
    assert threshold == classifier.calibrate_threshold(good, [p.parent.name for p in good], false_reject_rate=0.2)
    with pytest.raises(ValueError, match="on_error must be 'raise' or 'skip'"):
        classifier.classify(good, on_error="ignore")

