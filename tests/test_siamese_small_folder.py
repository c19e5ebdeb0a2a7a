"""The supervised Siamese recipe on a small labelled folder, driven through ``main([...])`` as a user would.

The folder holds real Fashion-MNIST images written as PNG files: 7 class sub-folders in ``train/`` with 24
images each, 10 each in ``test/``, and one empty sub-folder (which is no class). Evaluation must size
itself to this data, classes can be chosen by name, and a wrong selection must fail before training with
a message that lists the classes.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from ssl_siamese.data import load_split
from ssl_siamese.evaluation.fewshot import fewshot_episodes, max_queries
from ssl_siamese.recipes.siamese import main, parse_classes

from helpers import fashion_mnist_dir, needs_fashion_mnist

DATA = fashion_mnist_dir()
NAMES = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt"]  # sorted differently on purpose
FAST = ["--epochs", "1", "--batches_per_epoch", "2", "--k", "4", "--episodes", "20", "--log_to", "none"]

needs_data = needs_fashion_mnist


def write_class_folders(root: Path, split: str, per_class: int, offset: int) -> None:
    """``per_class`` real Fashion-MNIST images of each of the first 7 classes as PNGs in ``root/<name>/``."""
    data = load_split("fashion_mnist", split, DATA, download=False)
    for label, name in enumerate(NAMES):
        folder = root / name
        folder.mkdir(parents=True)
        index = (data.labels == label).nonzero().flatten()[offset:offset + per_class]
        for n, i in enumerate(index.tolist()):
            Image.fromarray(data.images[i, 0].numpy(), mode="L").save(folder / f"{n:03d}.png")


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clothes")
    write_class_folders(root / "train", "train", per_class=24, offset=0)
    write_class_folders(root / "test", "test", per_class=10, offset=0)
    (root / "train" / "unsorted").mkdir()  # an empty sub-folder: no images, so no class
    return root


def run(folder: Path, tmp_path: Path, *args: str) -> dict:
    return main(["--data.dataset", "folder", "--data.data_dir", str(folder), "--out", str(tmp_path), *FAST, *args])


def test_parse_classes_takes_indices_ranges_and_names():
    assert parse_classes("0-2,5") == [0, 1, 2, 5]
    assert parse_classes("sneaker, bag") == ["sneaker", "bag"]
    assert parse_classes("T-shirt/top,7-8") == ["T-shirt/top", 7, 8]


def test_max_queries_is_what_the_episodes_allow():
    labels = torch.tensor([0] * 5 + [1] * 8 + [2] * 3 + [-1] * 9)
    assert max_queries(labels, n_way=3) == 2 and max_queries(labels, n_way=2) == 4
    assert max_queries(labels, n_way=2, k_shot=3) == 2 and max_queries(labels, n_way=4) == 0
    features = torch.randn(len(labels), 4)
    fewshot_episodes(features, labels, n_way=3, n_query=2, episodes=3)  # the largest count works
    with pytest.raises(ValueError, match="at most 2 queries"):
        fewshot_episodes(features, labels, n_way=3, n_query=3, episodes=3)


@needs_data
def test_small_folder_evaluation_is_sized_to_the_data(small_folder, tmp_path, capsys):
    result = run(small_folder, tmp_path, "--train_classes", "0-4", "--eval_classes", "5-6")
    out = capsys.readouterr().out
    # 10 test images per class: 1 support + at most 9 queries, chosen automatically and said so
    assert result["before"]["n_query"] == result["after"]["n_query"] == 9
    assert "9 queries per class" in out and "--n_query" in out
    # the index -> name mapping, in the folder's (sorted) order, with the images per class
    for index, name in enumerate(sorted(NAMES)):
        assert re.search(rf"^\s*{index}\s+{name}\b.*24 train.*10 eval", out, re.M), out
    assert result["train_classes"] == sorted(NAMES)[:5] and result["eval_classes"] == sorted(NAMES)[5:]
    # the safetensors folder beside the .pt, with the unseen-class figures in its header and model card
    from ssl_siamese.export import load_backbone
    from ssl_siamese.export.pretrained_folder import read_pretrained

    folder = tmp_path / "exported_models" / "backbone"
    assert result["backbone_folder"] == str(folder) and (folder / "model.safetensors").is_file()
    _, metadata = read_pretrained(folder)
    assert metadata["metrics"]["unseen_fewshot_1shot"] == pytest.approx(result["after"]["fewshot_1shot"])
    assert "unseen_fewshot_1shot" in (folder / "README.md").read_text()
    assert load_backbone(folder).metadata["train_classes"] == sorted(NAMES)[:5]


@needs_data
def test_classes_by_name_and_n_query_option(small_folder, tmp_path, capsys):
    result = run(small_folder, tmp_path, "--train_classes", "coat,dress,pullover,Trouser",
                 "--eval_classes", "sandal,shirt,tshirt", "--n_query", "3", "--epochs", "0")
    assert result["eval_classes"] == ["sandal", "shirt", "tshirt"]
    assert result["train_classes"] == ["coat", "dress", "pullover", "trouser"]
    assert result["before"]["n_query"] == 3 and result["before"]["n_way"] == 3
    assert "3 queries per class" in capsys.readouterr().out
    with pytest.raises(SystemExit, match=r"--n_query 12 .* at most 9"):
        run(small_folder, tmp_path, "--train_classes", "0-4", "--eval_classes", "5-6", "--n_query", "12")


@needs_data
@pytest.mark.parametrize(("train", "evaluate", "message"), [
    ("0-4", "6-7", r"eval_classes: index 7 is out of range.*7 classes, 0-6"),
    ("0-4", "4-6", r"train_classes and eval_classes share .*shirt"),
    ("0-4", "6", r"eval_classes needs at least 2 classes"),
    ("0-4", "bag,6", r"eval_classes: no class named 'bag'"),
    ("0", "5-6", r"train_classes needs at least 2 classes"),
])
def test_a_wrong_selection_fails_before_training_and_lists_the_classes(small_folder, tmp_path, train, evaluate,
                                                                       message):
    with pytest.raises(SystemExit, match=message) as error:
        run(small_folder, tmp_path, "--train_classes", train, "--eval_classes", evaluate)
    for index, name in enumerate(sorted(NAMES)):
        assert f"{index} {name}" in str(error.value)
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "results.json").exists()


@needs_data
def test_a_class_missing_from_the_eval_split_is_named(small_folder, tmp_path):
    folder = tmp_path / "data"
    write_class_folders(folder / "train", "train", per_class=6, offset=0)
    write_class_folders(folder / "test", "test", per_class=4, offset=0)
    for image in (folder / "test" / "trouser").iterdir():
        image.unlink()
    with pytest.raises(SystemExit, match=r"eval class 5 trouser has no image in the test split"):
        main(["--data.dataset", "folder", "--data.data_dir", str(folder), "--out", str(tmp_path / "out"), *FAST,
              "--train_classes", "0-4", "--eval_classes", "5-6"])


@needs_data
def test_a_folder_without_test_split_evaluates_on_its_own_eval_classes(small_folder, tmp_path, capsys):
    result = main(["--data.dataset", "folder", "--data.data_dir", str(small_folder / "train"),
                   "--out", str(tmp_path), *FAST, "--train_classes", "0-4", "--eval_classes", "5-6"])
    assert "no test/ or val/ split" in capsys.readouterr().out
    assert result["after"]["n_query"] == 15 and result["eval_images"] == 48


@pytest.mark.parametrize(("typo", "suggestion"), [("--ckpt_pth", "--ckpt_path"), ("--eval_clases", "--eval_classes"),
                                                  ("--nquery", "--n_query")])
def test_a_misspelt_option_gets_the_closest_valid_one(typo, suggestion, capsys):
    with pytest.raises(SystemExit) as error:
        main([typo, "1"])
    assert error.value.code == 2
    assert f"unknown option {typo}; did you mean {suggestion}?" in capsys.readouterr().err
