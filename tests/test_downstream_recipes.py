"""The downstream recipes (linear_probe, finetune, embed) as a user runs them: which data they evaluate on,
the options they take, the files they accept and the model they save.

The data is real: a labelled image folder (train/ and test/, one subfolder per class) written from
Fashion-MNIST, pretrained on with the SimCLR recipe, then probed without naming the data again.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import adwaita_theme, fashion_mnist_dir, needs_fashion_mnist

from ssl_siamese import SimCLR, SSLDataModule, export_backbone, load_backbone
from ssl_siamese.cli import main as pretrain
from ssl_siamese.cli.arguments import closest_option, unknown_option_message
from ssl_siamese.data import load_split, read_idx
from ssl_siamese.data.prepare import main as prepare
from ssl_siamese.recipes import embed, explore, finetune, linear_probe

CLASSES = {0: "t-shirt", 1: "trouser", 7: "sneaker"}  # Fashion-MNIST label -> folder name


@pytest.fixture(autouse=True)
def offline_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def write_labelled_folder(root: Path, train: int = 24, test: int = 12) -> Path:
    """``root/{train,test}/<class>/<n>.png`` from the first Fashion-MNIST images of three classes."""
    from PIL import Image

    source = fashion_mnist_dir()
    images = read_idx(next(source.glob("t10k-images-idx3-ubyte*")), 3)
    labels = read_idx(next(source.glob("t10k-labels-idx1-ubyte*")), 1)
    for label, name in CLASSES.items():
        picks = np.flatnonzero(labels == label)[: train + test]
        for i, index in enumerate(picks):
            split = "train" if i < train else "test"
            (root / split / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[index]).save(root / split / name / f"{index}.png")
    return root


@pytest.fixture(scope="module")
def pretrained_on_folder(tmp_path_factory):
    """A SimCLR run of the recipe on a labelled folder: its Lightning checkpoint, export and data folder."""
    root = tmp_path_factory.mktemp("pretrain")
    folder = write_labelled_folder(root / "clothes")
    pretrain(SimCLR, "simclr", [
        "--model.backbone", "tiny_cnn", "--data.dataset", "folder", "--data.data_dir", str(folder),
        "--data.image_size", "28", "--data.batch_size", "16", "--data.cache_dir", str(root / "cache"),
        "--trainer.accelerator", "cpu", "--trainer.max_steps", "3", "--trainer.enable_progress_bar", "false",
        "--knn_at_start", "false", "--pictures_every_n_epochs", "0", "--log_to", "none", "--out", str(root / "out")])
    return root / "out" / "checkpoints" / "last.ckpt", root / "out" / "exported_models" / "backbone.pt", folder


# ----------------------------------------------------------------------------- item 11: the data evaluated on

@needs_fashion_mnist
def test_checkpoint_finetune_runs_on_the_data_it_was_trained_on(pretrained_on_folder, tmp_path, capsys):
    """The README's `linear_probe --ckpt out/simclr/checkpoints/last.ckpt --finetune`, no data named."""
    checkpoint, _, folder = pretrained_on_folder
    result = linear_probe.main(["--ckpt", str(checkpoint), "--finetune", "--epochs", "1", "--batch_size", "16",
                                "--out", str(tmp_path), "--log_to", "none"])
    assert result["dataset"] == "folder" and Path(result["data_dir"]) == folder
    assert result["num_train"] == 3 * 24 and result["num_test"] == 3 * 12  # that folder, not Fashion-MNIST
    log = capsys.readouterr().out
    assert re.search(r"fine-tuning on folder in .*clothes: the data the backbone was trained on, recorded", log)


@needs_fashion_mnist
def test_export_probe_runs_on_the_data_it_was_trained_on(pretrained_on_folder, tmp_path, capsys):
    _, export, folder = pretrained_on_folder
    result = linear_probe.main(["--backbone", str(export), "--epochs", "5", "--batch_size", "32",
                                "--out", str(tmp_path), "--log_to", "none"])
    assert result["mode"] == "linear" and result["dataset"] == "folder" and Path(result["data_dir"]) == folder
    assert result["num_test"] == 3 * 12 and len(result["confusion"]) == 3
    assert "probing on folder in" in capsys.readouterr().out


@needs_fashion_mnist
def test_explicit_dataset_wins_over_the_recorded_one(pretrained_on_folder, tmp_path, capsys):
    _, export, _ = pretrained_on_folder
    result = linear_probe.main(["--backbone", str(export), "--data.dataset", "fashion_mnist", "--data.data_dir",
                                str(fashion_mnist_dir()), "--subset", "300", "--epochs", "5",
                                "--out", str(tmp_path), "--log_to", "none"])
    assert result["dataset"] == "fashion_mnist" and result["num_test"] == 300
    assert "given with --data.dataset" in capsys.readouterr().out


def test_backbone_without_recorded_data_asks_for_a_dataset(tmp_path):
    export = export_backbone(SimCLR(backbone="tiny_cnn", view_size=28), tmp_path / "b.pt")  # no data=...
    for recipe in (linear_probe, finetune):
        with pytest.raises(SystemExit, match=r"records no dataset .* pass --data.dataset NAME"):
            recipe.main(["--backbone", str(export), "--out", str(tmp_path / "o"), "--log_to", "none"])
    with pytest.raises(SystemExit, match=r"--backbone random needs --data.dataset"):
        finetune.main(["--backbone", "random", "--arch", "tiny_cnn", "--log_to", "none"])


# ----------------------------------------------------------------------------- item 15: options

@pytest.mark.parametrize("recipe, typo, meant", [
    (linear_probe, "--ckpt_pth", "--ckpt"), (finetune, "--out_dir", "--out"), (embed, "--out_dir", "--out"),
    (linear_probe, "--data.datset", "--data.dataset"), (finetune, "--batch-size", "--batch_size"),
    (embed, "--bakbone", "--backbone"),
])
def test_misspelt_option_gets_the_closest_valid_one(recipe, typo, meant, capsys):
    with pytest.raises(SystemExit) as caught:
        recipe.main([typo, "x"])  # the required --backbone is missing too: the typo is what gets named
    assert caught.value.code == 2
    error = capsys.readouterr().err
    assert f"unknown option {typo}; did you mean {meant}" in error


def test_option_helper_on_a_plain_parser():
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--backbone", "--ckpt")
    parser.add_argument("--out")
    assert unknown_option_message(parser, ["--ckpt", "a", "--out=b", "--back", "c"]) is None  # abbreviations too
    assert unknown_option_message(parser, ["--ckpt_pth", "a"]) == \
        "unknown option --ckpt_pth; did you mean --ckpt (same as --backbone)?"
    assert unknown_option_message(parser, ["--", "--zzz"]) is None  # values after "--"
    assert unknown_option_message(parser, ["--zzzzzz"]).startswith("unknown option --zzzzzz; valid options: ")
    assert closest_option("--out_dir", ["--out", "--seed"]) == "--out"


def test_backbone_and_ckpt_are_the_same_option_everywhere(tmp_path):
    for recipe in (linear_probe, finetune, embed):
        extra = ["--data", "x"] if recipe is embed else []
        for option in ("--backbone", "--ckpt"):
            args = recipe.parse_args([option, "b.pt", *extra])
            assert (getattr(args, "ckpt", None) or args.backbone) == "b.pt"


# ----------------------------------------------------------------------------- item 15: finetune saves its model

@needs_fashion_mnist
def test_finetune_saves_a_model_that_loads_back(tmp_path, capsys):
    torch.manual_seed(0)
    export = export_backbone(SimCLR(backbone="tiny_cnn", view_size=28), tmp_path / "b.pt", data="fashion_mnist",
                             data_dir=str(fashion_mnist_dir()))
    result = finetune.main(["--backbone", str(export), "--data.train_subset", "512", "--data.test_subset", "256",
                            "--epochs", "2", "--batch_size", "64", "--out", str(tmp_path / "ft"), "--log_to", "none"])
    saved = Path(result["model_path"])
    assert saved == tmp_path / "ft" / "exported_models" / "finetuned.pt"
    assert f"Fine-tuned model (backbone + classifier head): {saved}" in capsys.readouterr().out
    payload = torch.load(saved, weights_only=True)  # weights-only, as every file the library writes
    assert set(payload) == {"state_dict", "metadata", "head"} and payload["metadata"]["data"] == "fashion_mnist"

    model, transform, classes, metadata = finetune.load_classifier(saved)
    assert len(classes) == 10 and metadata["top1"] == result["top1"]
    test = finetune.labelled_subset(load_split("fashion_mnist", "test", fashion_mnist_dir(), False), 256, 1)
    with torch.no_grad():
        predicted = model(transform(test.images)).argmax(1)
    accuracy = (predicted == test.labels).float().mean().item()
    assert accuracy == pytest.approx(result["top1"], abs=1e-6)  # the same test images the recipe scored
    backbone, _, _ = load_backbone(saved)  # and a backbone for the other recipes
    assert backbone(transform(test.images[:2])).shape == (2, metadata["feature_dim"])

    again = linear_probe.run_linear_probe(saved, subset=300, epochs=5, out=tmp_path / "lp", log_to="none",
                                          progress=False)
    assert again["dataset"] == "fashion_mnist"  # the fine-tuning data, recorded in the saved model


def test_load_classifier_refuses_a_backbone_without_head(tmp_path):
    export = export_backbone(SimCLR(backbone="tiny_cnn", view_size=28), tmp_path / "b.pt")
    with pytest.raises(ValueError, match="without a classifier head"):
        finetune.load_classifier(export)


# ----------------------------------------------------------------------------- item 15: what embed accepts

def adwaita_icons(count: int) -> list[Path]:
    """Real RGBA PNG icons and one SVG from Debian's adwaita-icon-theme (installed when missing and run as root)."""
    theme = adwaita_theme()
    pngs = sorted(theme.glob("48x48/*/*.png"))[:count]
    svgs = sorted(theme.glob("scalable/*/*.svg"))[:1]
    if len(pngs) < count or not svgs:
        pytest.skip(f"Adwaita PNG and SVG icons not found under {theme}/48x48 and {theme}/scalable "
                    "(Debian package adwaita-icon-theme)")
    return pngs + svgs


@pytest.fixture()
def icon_folder(tmp_path) -> Path:
    """``icons/{a,b}/`` with three real PNG icons each, an SVG icon in ``b`` and a broken PNG in ``a``."""
    files = adwaita_icons(6)
    for i, source in enumerate(files[:6]):
        target = tmp_path / "icons" / ("a" if i < 3 else "b") / f"{i}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
    (tmp_path / "icons" / "b" / "drawing.svg").write_bytes(files[6].read_bytes())
    (tmp_path / "icons" / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    return tmp_path / "icons"


@pytest.fixture()
def icon_backbone(tmp_path) -> Path:
    torch.manual_seed(0)
    return export_backbone(SimCLR(backbone="tiny_cnn", view_size=32), tmp_path / "backbone.pt")


def embed_main(backbone: Path, *data: Path | str, out: Path) -> dict:
    return embed.main(["--backbone", str(backbone), "--data", *map(str, data), "--out", str(out)])


def test_embed_counts_an_svg_as_skipped_like_training(icon_folder, icon_backbone, tmp_path, capsys, caplog):
    from ssl_siamese.data import load_folder

    summary = embed_main(icon_backbone, icon_folder, out=tmp_path / "e.npz")
    assert summary["num_images"] == 6
    assert summary["skipped_paths"] == ["a/broken.png", "b/drawing.svg"]
    assert "skipped 2 files that are not readable images" in capsys.readouterr().err
    training = load_folder(icon_folder, image_size=32, cache_dir=tmp_path / "cache")  # what training reads
    assert len(training) == summary["num_images"]
    assert re.search(r"skipped 2 files", caplog.text)  # training's own count of the same folder


def test_embed_takes_one_image_file(icon_folder, icon_backbone, tmp_path):
    summary = embed_main(icon_backbone, icon_folder / "a" / "0.png", out=tmp_path / "one.npz")
    assert summary["num_images"] == 1 and summary["skipped"] == 0
    with np.load(tmp_path / "one.npz") as saved:
        assert saved["paths"].tolist() == ["0.png"] and saved["embeddings"].shape == (1, 128)
    folder = embed_main(icon_backbone, icon_folder, out=tmp_path / "all.npz")
    with np.load(tmp_path / "all.npz") as everything:  # the same image, the same embedding
        row = everything["paths"].tolist().index("a/0.png")
        np.testing.assert_allclose(np.load(tmp_path / "one.npz")["embeddings"][0], everything["embeddings"][row],
                                   rtol=1e-5, atol=1e-6)
    assert folder["classes"] == ["a", "b"]


def test_embed_takes_a_list_and_a_glob(icon_folder, icon_backbone, tmp_path):
    listed = embed_main(icon_backbone, icon_folder / "a" / "0.png", icon_folder / "b" / "3.png",
                        icon_folder / "b" / "drawing.svg", out=tmp_path / "list.npz")
    assert listed["num_images"] == 2 and listed["skipped_paths"] == ["b/drawing.svg"]
    with np.load(tmp_path / "list.npz") as saved:  # relative to the files' common folder, whose subfolders label
        assert saved["paths"].tolist() == ["a/0.png", "b/3.png"] and saved["classes"].tolist() == ["a", "b"]
    globbed = embed_main(icon_backbone, f"{icon_folder}/*/[0-4].png", out=tmp_path / "glob.npz")
    assert globbed["num_images"] == 5
    with pytest.raises(SystemExit, match=r"The pattern .*\*\.jpg matches no file"):
        embed_main(icon_backbone, f"{icon_folder}/*.jpg", out=tmp_path / "none.npz")


def test_embed_says_exactly_what_is_missing(icon_folder, icon_backbone, tmp_path):
    with pytest.raises(SystemExit, match=r"one\.png does not exist \(no file or folder of that name in .*icons\)"):
        embed_main(icon_backbone, icon_folder / "one.png", out=tmp_path / "e.npz")
    with pytest.raises(SystemExit, match=r"does not exist \(its folder .*nowhere does not exist either\)"):
        embed_main(icon_backbone, tmp_path / "nowhere" / "one.png", out=tmp_path / "e.npz")
    with pytest.raises(SystemExit, match=r"No image files .* \(only 1 other files, e\.g\. drawing\.svg\)"):
        embed_main(icon_backbone, icon_folder / "b" / "drawing.svg", out=tmp_path / "e.npz")


def test_embed_of_a_folder_of_broken_images_says_why_the_first_ones_failed(icon_backbone, tmp_path):
    """Issue 23 item 8: "None of the 3 image files could be read" named neither the files nor the reasons."""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    (broken / "empty.jpg").write_bytes(b"")
    (broken / "notes.webp").write_text("a text file with an image's name")
    with pytest.raises(SystemExit) as caught:
        embed_main(icon_backbone, broken, out=tmp_path / "e.npz")
    message = str(caught.value)
    assert "None of the 3 image files" in message
    for name in ("cut.png", "empty.jpg", "notes.webp"):
        assert re.search(rf"Cannot read \S*{re.escape(name)} as an image: \w+", message), message


# ----------------------------------------------------------------------------- issue 23 item 8: what evaluation reads

@needs_fashion_mnist
def test_embed_and_explore_take_every_backbone_form_that_load_backbone_takes(pretrained_on_folder, tmp_path):
    """The exported folder was refused by embed and explore ("No exported backbone at ..."); linear_probe took it."""
    checkpoint, export, folder = pretrained_on_folder
    forms = {"pt": export, "folder": export.with_suffix(""),
             "safetensors": export.with_suffix("") / "model.safetensors", "ckpt": checkpoint}
    images = folder / "test" / "sneaker"
    embedded = {}
    for name, backbone in forms.items():
        assert embed_main(backbone, images, out=tmp_path / f"{name}.npz")["num_images"] == 12
        embedded[name] = np.load(tmp_path / f"{name}.npz")["embeddings"]
        np.testing.assert_allclose(embedded[name], embedded["pt"], rtol=1e-5, atol=1e-5)
    page = explore.main(["--backbone", str(forms["folder"]), "--data", str(images), "--out", str(tmp_path / "p.html")])
    assert page["points"] == 12 and (tmp_path / "p.html").is_file()


@pytest.mark.parametrize("recipe", [embed, explore, linear_probe, finetune])
def test_every_recipe_says_the_same_about_a_missing_backbone(recipe, tmp_path):
    data = ["--data", str(tmp_path)] if recipe in (embed, explore) else []
    with pytest.raises(SystemExit, match=r"No exported backbone or checkpoint at .*nowhere\. --backbone takes"):
        recipe.main(["--backbone", str(tmp_path / "nowhere"), *data, "--out", str(tmp_path / "o")])


@pytest.fixture(scope="module")
def held_out_runs(tmp_path_factory):
    """SimCLR pretrained by the recipe on a labelled folder without test/ (holding out 20% per class, data seed 3:
    not the defaults, which the export must record) and on shards prepared from that folder (prepare holds out
    about 10% by path hash): {dataset: (export, data)}."""
    root = tmp_path_factory.mktemp("held_out")
    folder = write_labelled_folder(root / "clothes", train=30, test=0) / "train"  # clothes/train/<class>/*.png
    shards = root / "shards"
    assert prepare([str(folder), str(shards), "--num_workers", "1", "--start_method", "fork"]) == 0
    runs = {}
    held_out = ["--data.seed", "3", "--data.val_fraction", "0.2"]
    for dataset, data, options in (("folder", folder, held_out), ("stream", shards, [])):
        pretrain(SimCLR, "simclr", [*options,
            "--model.backbone", "tiny_cnn", "--data.dataset", dataset, "--data.data_dir", str(data),
            "--data.image_size", "28", "--data.batch_size", "16", "--data.num_workers", "0",
            "--trainer.accelerator", "cpu", "--trainer.max_steps", "2", "--trainer.enable_progress_bar", "false",
            "--knn_at_start", "false", "--pictures_every_n_epochs", "0", "--log_to", "none",
            "--out", str(root / dataset)])
        runs[dataset] = root / dataset / "exported_models" / "backbone", data
    return runs


@needs_fashion_mnist
def test_probe_of_a_folder_without_test_split_tests_on_what_pretraining_held_out(held_out_runs, tmp_path, capsys):
    """linear_probe and finetune stopped with "No test split"; now they hold out what pretraining held out."""
    from ssl_siamese.data.evaluation import evaluation_splits

    export, folder = held_out_runs["folder"]
    result = linear_probe.main(["--backbone", str(export), "--epochs", "5", "--out", str(tmp_path / "lp"),
                                "--log_to", "none"])
    assert result["dataset"] == "folder" and Path(result["data_dir"]) == folder
    assert (result["num_train"], result["num_test"]) == (3 * 24, 3 * 6)  # 20% of 30 per class held out, recorded
    checkpoint = export.parent.parent / "checkpoints" / "last.ckpt"  # the checkpoint records the same rule
    from_checkpoint = linear_probe.main(["--backbone", str(checkpoint), "--epochs", "1", "--out", str(tmp_path / "c"),
                                         "--log_to", "none"])
    assert (from_checkpoint["num_train"], from_checkpoint["num_test"]) == (3 * 24, 3 * 6)
    assert "held out" in result["test_split"] and result["test_split"] in capsys.readouterr().out
    pretraining = SSLDataModule("folder", data_dir=str(folder), image_size=28, batch_size=16, seed=3, val_fraction=0.2)
    pretraining.setup("fit")  # its kNN bank and queries: what it trained on and what it held out
    splits = evaluation_splits("folder", folder, image_size=28, seed=3, val_fraction=0.2)
    assert torch.equal(splits.test.images, pretraining.query_data.images)
    assert torch.equal(splits.train.images, pretraining.bank_data.images)
    tuned = finetune.main(["--backbone", str(export), "--data.val_fraction", "0.2", "--data.seed", "1",
                           "--epochs", "1", "--batch_size", "16", "--out", str(tmp_path / "ft"), "--log_to", "none"])
    assert (tuned["num_train"], tuned["num_test"]) == (3 * 24, 3 * 6) and "seed 1" in tuned["test_split"]
    with pytest.raises(SystemExit, match=r"--data.val_fraction must be in \[0, 1\), not 1.5"):
        linear_probe.main(["--backbone", str(export), "--data.val_fraction", "1.5", "--log_to", "none"])


@needs_fashion_mnist
def test_backbone_pretrained_on_shards_is_probed_on_their_val_split(held_out_runs, tmp_path, capsys):
    """linear_probe said "'stream' has no labels" and --data.dataset folder on the shards "No image files"."""
    export, shards = held_out_runs["stream"]
    count = json.loads((shards / "dataset.json").read_text())["splits"]
    result = linear_probe.main(["--backbone", str(export), "--epochs", "5", "--out", str(tmp_path / "lp"),
                                "--log_to", "none"])
    assert result["dataset"] == "stream" and len(result["confusion"]) == 3
    assert (result["num_train"], result["num_test"]) == (count["train"], count["val"])
    assert "val split" in result["test_split"] and result["test_split"] in capsys.readouterr().out
    tuned = finetune.main(["--backbone", str(export), "--data.dataset", "folder", "--data.data_dir", str(shards),
                           "--epochs", "1", "--batch_size", "16", "--out", str(tmp_path / "ft"), "--log_to", "none"])
    assert tuned["dataset"] == "stream" and tuned["num_test"] == count["val"]
