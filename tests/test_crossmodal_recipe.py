"""The cross-modal recipe end to end on real Debian icon themes: it learns (text-to-image Recall@10 on held-out
icon names above chance and above the random-init towers), and a missing theme ends with a clear message.

The icons come from apt (``apt-get download``, no root needed; ~70 MB once per test session, then a cached
.npz); a machine without apt-get and without the themes installed skips the real-data test and says why.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ssl_siamese.crossmodal.datamodule import IconTextDataModule, name_group
from ssl_siamese.crossmodal.icons import IconThemesMissing, icon_text, load_icons
from ssl_siamese.crossmodal.module import CrossModalCLIP
from ssl_siamese.crossmodal.retrieval import cross_modal_recall

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def icon_cache(tmp_path_factory) -> Path:
    """A cache folder holding the decoded icons of the default themes, built once per test session."""
    folder = tmp_path_factory.getbasetemp() / "icon_cache"
    try:
        load_icons(cache_dir=folder)
    except IconThemesMissing as error:
        pytest.skip(str(error))
    return folder


def test_real_icons_split_holds_out_whole_names_in_every_theme(icon_cache):
    dm = IconTextDataModule(cache_dir=str(icon_cache), test_fraction=0.15)
    dm.setup("fit")
    train, test = dm.train_icons, dm.test_icons
    assert len(set(train.themes)) == 6 and len(train) + len(test) > 3000
    assert not {name_group(n) for n in train.names} & {name_group(n) for n in test.names}
    assert not set(train.texts) & set(test.texts)
    shared = [n for n in set(test.names) if test.names.count(n) > 1]
    assert len(shared) > 50  # many held-out names have an icon in several themes
    assert icon_text("audio-volume-high", "status") in train.texts + test.texts


@pytest.mark.slow
def test_recipe_learns_held_out_icon_names(icon_cache, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "ssl_siamese.recipes.cross_modal", "--config", "recipes/cross_modal_icons.yaml",
               "--data.cache_dir", str(icon_cache), "--trainer.max_epochs", "2", "--trainer.enable_progress_bar",
               "false", "--out", str(out), "--log_to", "csv"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=dict(os.environ), timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    print(done.stdout[done.stdout.index("held-out icon names"):])
    results = json.loads((out / "results.json").read_text())
    chance, init, trained = (results["metrics"][m] for m in ("chance", "random_init", "trained"))
    assert trained["t2i_recall@10"] > init["t2i_recall@10"] + 0.05
    assert trained["t2i_recall@10"] > 3 * chance["t2i_recall@10"]
    assert trained["i2t_recall@10"] > init["i2t_recall@10"] + 0.05
    assert results["held_out_icons"] > 300 and results["held_out_texts"] > 200
    model = CrossModalCLIP.load_exported(results["weights_path"])
    dm = IconTextDataModule(cache_dir=str(icon_cache))
    dm.setup("fit")
    images, texts, owner = dm.evaluation_set()
    again = cross_modal_recall(model.encode_images(images), model.encode_texts(texts), owner)
    assert again == pytest.approx(trained, abs=1e-6)  # the exported towers give the recipe's figures


def test_recipe_names_a_missing_theme(tmp_path):
    from ssl_siamese.recipes.cross_modal import main

    with pytest.raises(SystemExit, match="root= must hold one folder per theme"):
        main(["--data.themes", "[no-such-theme]", "--data.root", str(tmp_path), "--log_to", "none",
              "--out", str(tmp_path)])
