"""The README's downstream Python snippet, run as written: on a backbone trained for a few steps by the SimCLR
recipe (``ssl_siamese.cli.main``, as ``python -m ssl_siamese.recipes.simclr``) and on real image files written
where the snippet looks: Fashion-MNIST samples as PNG, a real RGBA icon from Debian's adwaita-icon-theme and a
16-bit grayscale PNG."""

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import REPO, adwaita_theme, fashion_mnist_dir, needs_fashion_mnist
from ssl_siamese.cli import main
from ssl_siamese.data import load_split
from ssl_siamese.methods.simclr import SimCLR
from ssl_siamese.search.oneshot import UNKNOWN

README = REPO / "README.md"
CLASSES = {1: "trouser", 8: "bag", 9: "boot"}  # registered: one reference each
UNREGISTERED = 5  # sandals appear among the photos, never registered


def readme_python_blocks(section: str) -> list[str]:
    """The ```python blocks of the README section whose heading starts with ``section``."""
    text = README.read_text()
    start = text.index(f"\n## {section}")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end if end > 0 else None], flags=re.S)


def rgba_icon() -> Path:
    theme = adwaita_theme()
    for path in sorted(theme.glob("*/*/*.png")):
        with Image.open(path) as image:
            if image.mode == "RGBA" and image.size[0] >= 32 and (np.asarray(image)[..., 3] < 255).any():
                return path
    pytest.skip(f"no RGBA icon found under {theme} (Debian package adwaita-icon-theme)")


def save_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@needs_fashion_mnist
def test_readme_downstream_snippet_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)
    icon = rgba_icon()
    data_dir = fashion_mnist_dir()
    main(SimCLR, "simclr", ["--config", str(REPO / "recipes" / "quickstart.yaml"), "--data.data_dir", str(data_dir),
                            "--data.train_subset", "512", "--data.batch_size", "128", "--trainer.max_steps", "4",
                            "--data.knn_bank_subset", "256", "--data.val_subset", "64", "--log_to", "none",
                            "--trainer.enable_progress_bar", "false", "--out", "out/simclr"])
    assert Path("out/simclr/exported_models/backbone.pt").is_file()

    test = load_split("fashion_mnist", "test", data_dir, download=False)
    rows = {c: np.flatnonzero(test.labels.numpy() == c) for c in (*CLASSES, UNREGISTERED)}
    for c, name in CLASSES.items():
        save_png(test.images[rows[c][0], 0].numpy(), Path("references") / f"{name}.png")
        for i in rows[c][1:21]:
            save_png(test.images[i, 0].numpy(), Path("held_out") / name / f"{i}.png")
        save_png(test.images[rows[c][30], 0].numpy(), Path("photos") / f"{name}.png")
    save_png(test.images[rows[UNREGISTERED][0], 0].numpy(), Path("photos/sandal.png"))
    shutil.copy(icon, "photos/icon.png")
    sixteen = test.images[rows[8][31], 0].numpy().astype(np.uint16) * 257  # 16-bit grayscale, 0..65535
    Image.fromarray(sixteen).save("photos/scan16.png")
    with Image.open("photos/scan16.png") as image:
        assert image.mode.startswith("I")  # really a 16-bit file

    blocks = readme_python_blocks("Downstream")
    assert blocks, f"no ```python block in the Downstream section of {README}"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, f"{README}:Downstream", "exec"), namespace)  # noqa: S102 - the README, as written

    features, photos = namespace["features"], namespace["photos"]
    assert isinstance(features, np.ndarray) and features.shape == (1, namespace["metadata"]["feature_dim"])
    assert [p.name for p in photos] == ["bag.png", "boot.png", "icon.png", "sandal.png", "scan16.png", "trouser.png"]
    assert len(namespace["index"]) == len(photos) and namespace["nearest"][0, 0] == photos.index(Path("photos/icon.png"))
    classifier = namespace["classifier"]
    assert sorted(classifier.classes) == sorted(CLASSES.values()) and classifier.false_reject_rate == 0.05
    results = classifier.classify(photos)
    assert str(results) in capsys.readouterr().out  # what the snippet printed
    assert all(name in (*CLASSES.values(), UNKNOWN) for name, _ in results)
