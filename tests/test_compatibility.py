"""What an older main wrote still loads, and what it documented still imports: the safety net of a layout change.

The files under ``tests/fixtures/previous_main/`` were written by an earlier commit of main (its
``make_fixtures.py`` and ``manifest.json`` name it): a Lightning checkpoint of every registered method, one
recipe's exports (``backbone.pt`` and the safetensors folder), three text encoder exports, and the features
each gave on fixed inputs. Today's code must load them and give the same features, resume MoCo (queue) and
DINO (centre) through the recipe, and keep every name that commit made public (each package's ``__all__``, the
``ssl-siamese`` recipes) and every path the README, the notebook and the recipe YAMLs write.
"""

from __future__ import annotations

import ast
import json
import pkgutil
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from ssl_siamese import console, load_backbone
from ssl_siamese.cli import main as recipe_main
from ssl_siamese.methods.registry import METHODS, method_class
from ssl_siamese.text import load_text_encoder

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "previous_main"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
EXPECTED = torch.load(FIXTURES / "expected.pt", weights_only=True)
README = (REPO / "README.md").read_text()
YAMLS = sorted((REPO / "recipes").glob("*.yaml"))

pytestmark = pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")  # recipes run in-process


def features(path: Path) -> torch.Tensor:
    """``load_backbone(path)``'s features of the recorded uint8 images, as ``make_fixtures.py`` computed them."""
    backbone, transform, _ = load_backbone(path)
    with torch.no_grad():
        return backbone(transform(EXPECTED["images"]))


def test_the_fixtures_hold_every_registered_method():
    assert set(EXPECTED["features"]) == set(METHODS), "a method added since: give it a fixture (make_fixtures.py)"


@pytest.mark.parametrize("name", sorted(EXPECTED["features"]))
def test_an_old_checkpoint_gives_the_features_it_gave(name):
    path = FIXTURES / "checkpoints" / f"{name}.ckpt"
    assert torch.load(path, weights_only=True)["ssl_siamese_method"] == name
    torch.testing.assert_close(features(path), EXPECTED["features"][name])
    assert load_backbone(path).metadata["method"] == name


@pytest.mark.parametrize("export", ["backbone.pt", "backbone", "backbone/model.safetensors"])
def test_old_exports_give_the_features_they_gave(export):
    path = FIXTURES / "export" / export
    torch.testing.assert_close(features(path), EXPECTED["exports"]["backbone.pt"])
    metadata = load_backbone(path).metadata
    assert (metadata["method"], metadata["architecture"], metadata["image_size"]) == ("SimCLR", "tiny_cnn", 32)


def test_old_exports_keep_their_weight_names():
    """The safetensors folder holds the same tensors, under the same names, as ``backbone.pt``."""
    bare = torch.load(FIXTURES / "export" / "backbone.pt", weights_only=True)["state_dict"]
    folder = load_file(FIXTURES / "export" / "backbone" / "model.safetensors")
    assert folder.keys() == bare.keys()
    for key, value in bare.items():
        torch.testing.assert_close(folder[key], value)
    config = json.loads((FIXTURES / "export" / "backbone" / "config.json").read_text())
    assert config["architecture"] == "tiny_cnn" and config["num_features"] == EXPECTED["exports"]["backbone"].shape[1]


@pytest.mark.parametrize("folder", sorted(EXPECTED["text_features"]))
def test_an_old_text_encoder_export_gives_the_embeddings_it_gave(folder):
    encoder = load_text_encoder(FIXTURES / "text" / folder)
    with torch.no_grad():
        torch.testing.assert_close(encoder.encode(EXPECTED["texts"]), EXPECTED["text_features"][folder])


def resume_one_step(name: str, out: Path) -> tuple[dict, dict, dict]:
    """Resume ``checkpoints/<name>.ckpt`` for one more step with the recipe (``--ckpt_path``, as a user would);
    return the checkpoint's ``state_dict``, the model's at the start of the resumed fit, and the new ``last.ckpt``."""
    ckpt = out / "old.ckpt"
    shutil.copyfile(FIXTURES / "checkpoints" / f"{name}.ckpt", ckpt)
    restored = {}

    class Recording(method_class(name)):
        def on_train_start(self) -> None:
            super().on_train_start()
            restored.update({key: value.detach().clone() for key, value in self.state_dict().items()})

    Recording.__name__ = name  # the name the method records in its checkpoints
    recipe = METHODS[name].rsplit(".", 1)[1]
    recipe_main(Recording, recipe, [*MANIFEST["recipe_arguments"][name], "--trainer.max_steps", "3",
                                    "--ckpt_path", str(ckpt), "--out", str(out)])
    old = torch.load(ckpt, weights_only=True)
    return old["state_dict"], restored, torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)


@pytest.mark.parametrize("name", ["MoCo", "DINO"])
def test_an_old_checkpoint_resumes_through_the_recipe(name, tmp_path, monkeypatch):
    """Every weight and buffer comes back as saved (MoCo's queue, DINO's teacher and centre), then one step more."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    saved, restored, new = resume_one_step(name, tmp_path)
    assert restored.keys() == saved.keys()
    for key, value in saved.items():
        torch.testing.assert_close(restored[key], value, rtol=0, atol=0, msg=key)
    assert new["global_step"] == 3 and new["ssl_siamese_method"] == name
    state = new["state_dict"]
    if name == "MoCo":  # the keys of both views of a batch of 8 went in at the restored pointer
        size, start = len(saved["queue.keys"]), int(saved["queue.pointer"])
        written = [(start + i) % size for i in range(16)]
        kept = sorted(set(range(size)) - set(written))
        assert start != 0 and kept and int(state["queue.pointer"]) == (start + 16) % size
        torch.testing.assert_close(state["queue.keys"][kept], saved["queue.keys"][kept])
        assert not torch.allclose(state["queue.keys"][written], saved["queue.keys"][written])
    else:  # the centre (the running mean of the teacher's outputs) moved on from the restored one
        assert torch.isfinite(state["criterion.center"]).all()
        assert not torch.equal(state["criterion.center"], saved["criterion.center"])


@pytest.mark.parametrize("package", [key.removesuffix(".__all__") for key in MANIFEST if key.endswith(".__all__")])
def test_every_public_name_of_the_old_main_still_imports(package):
    names = MANIFEST[f"{package}.__all__"]
    module = pkgutil.resolve_name(package)
    assert set(names) <= set(module.__all__), set(names) - set(module.__all__)
    for name in names:
        assert getattr(module, name) is not None, f"{package}.{name}"


def documented_paths() -> set[str]:
    """Dotted paths the README, the notebook and the recipe YAMLs write: ``ssl_siamese.x.y`` (modules,
    ``python -m`` targets, ``class_path``s, named functions), ``from M import a, b`` and every ``class_path``."""
    texts = [README, *(path.read_text() for path in YAMLS)]
    paths = {match for text in texts for match in re.findall(r"\bssl_siamese(?:\.\w+)+", text)}
    paths |= {match for text in texts for match in re.findall(r"class_path:\s*([\w.]+)", text)}
    for module, names in re.findall(r"from (ssl_siamese[\w.]*) import (\([^)]*\)|[\w, ]+)", README):
        paths |= {f"{module}.{name}" for name in re.findall(r"\w+", names)}
    for paragraph in README.split("\n\n"):  # "`f(...)`, `g(...)` ... from `ssl_siamese.evaluation`."
        for module in re.findall(r"from `(ssl_siamese[\w.]*)`", paragraph):
            paths |= {f"{module}.{name}" for name in re.findall(r"`(\w+)\(", paragraph)}
    notebook = json.loads((REPO / "notebooks" / "quickstart.ipynb").read_text())
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            for node in ast.walk(ast.parse("".join(cell["source"]))):
                if isinstance(node, ast.ImportFrom) and node.module.startswith("ssl_siamese"):
                    paths |= {f"{node.module}.{alias.name}" for alias in node.names}
    return paths


def test_the_documented_paths_are_found():
    """The parsing above finds what it is meant to (so that the next test checks something)."""
    paths = documented_paths()
    assert {"ssl_siamese.augment.ViewAugmentation", "ssl_siamese.views.kornia_views.KorniaViews",
            "kornia.augmentation.RandomElasticTransform", "ssl_siamese.recipes.simclr", "ssl_siamese.data.prepare",
            "ssl_siamese.recipes.finetune.load_classifier", "ssl_siamese.evaluation.weighted_knn_scores",
            "ssl_siamese.data.images.list_image_files", "ssl_siamese.text.load_text_encoder",
            "ssl_siamese.backbones.torchvision_resnet", "ssl_siamese.data.FASHION_MNIST_CLASSES"} <= paths


PREVIOUS_DOCUMENTED = json.loads((FIXTURES / "documented_paths.json").read_text())["paths"]
"""What the previous main's README, YAMLs and notebook documented (4601c95, before the layer packages): users'
scripts and YAMLs written from those docs keep working."""


@pytest.mark.parametrize("path", sorted(documented_paths() | set(PREVIOUS_DOCUMENTED)))
def test_every_documented_path_imports(path):
    assert pkgutil.resolve_name(path) is not None


def recipe_of(path: Path) -> str:
    """The recipe a YAML names in its header: ``# python -m ssl_siamese.recipes.<recipe> --config recipes/...``."""
    found = re.search(rf"-m ssl_siamese\.recipes\.(\w+) --config recipes/{re.escape(path.name)}", path.read_text())
    assert found, f"{path} names no `python -m ssl_siamese.recipes.<recipe> --config recipes/{path.name}`"
    return found.group(1)


@pytest.mark.parametrize("path", [p for p in YAMLS if p.name != "sweep_quickstart.yaml"], ids=lambda p: p.name)
def test_every_recipe_yaml_parses_with_its_recipe(path, capsys):
    """Every option a YAML sets is still an option of its recipe (the W&B sweep's command: tests/test_wandb_media)."""
    with pytest.raises(SystemExit) as stop:
        console.main([recipe_of(path), "--config", str(path), "--print_config"])
    assert stop.value.code in (0, None), stop.value.code
    resolved, written = yaml.safe_load(capsys.readouterr().out), yaml.safe_load(path.read_text())
    for key, value in written.items():
        assert key in resolved, key
        if isinstance(value, dict):
            assert set(value) <= set(resolved[key]), (key, set(value) - set(resolved[key]))


def test_every_recipe_of_the_old_main_is_still_a_recipe():
    """``ssl-siamese <recipe>`` and ``python -m ssl_siamese.recipes.<recipe>`` for each recipe of that commit."""
    assert set(MANIFEST["recipes"]) <= set(console.recipes())
    for name in MANIFEST["recipes"]:
        assert pkgutil.resolve_name(f"ssl_siamese.recipes.{name}").__doc__, name
    script = Path(sys.executable).with_name("ssl-siamese")
    listing = subprocess.run([str(script)], capture_output=True, text=True, timeout=60, check=True).stdout
    assert listing.startswith("usage: ssl-siamese <recipe>")
    assert all(f"  {name} " in listing for name in MANIFEST["recipes"]), listing
