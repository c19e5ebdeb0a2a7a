"""The one command line: ``ssl-siamese <recipe>`` and ``--config`` / ``--print_config`` on every recipe."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import ssl_siamese.recipes
from ssl_siamese.cli import console
from ssl_siamese.recipes import linear_probe, siamese

pytestmark = pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")  # in-process runs
RECIPES_DIR = Path(ssl_siamese.recipes.__file__).parent


def test_every_recipe_module_is_listed_with_a_description(capsys):
    modules = {p.stem for p in RECIPES_DIR.glob("*.py") if not p.stem.startswith("_")}
    listing = console.recipes()
    assert set(listing) == modules
    assert all(listing.values()), [name for name, text in listing.items() if not text]
    console.main([])
    out = capsys.readouterr().out
    assert out.startswith("usage: ssl-siamese <recipe>")
    assert all(f"  {name} " in out for name in modules)


def test_a_misspelt_recipe_gets_the_closest_name():
    with pytest.raises(SystemExit) as caught:
        console.main(["linear_prob", "--ckpt", "x"])
    assert "unknown recipe 'linear_prob'; did you mean linear_probe?" in str(caught.value.code)


@pytest.mark.parametrize("name", sorted(console.recipes()))
def test_every_recipe_answers_print_config(name, capsys):
    with pytest.raises(SystemExit) as caught:
        console.main([name, "--print_config"])
    assert caught.value.code in (0, None)
    config = yaml.safe_load(capsys.readouterr().out)
    assert isinstance(config, dict) and config, f"{name} --print_config printed no YAML mapping"


def test_print_config_round_trips_through_config_and_dotted_overrides(tmp_path, capsys):
    with pytest.raises(SystemExit):
        linear_probe.parse_args(["--ckpt", "b.pt", "--data.dataset", "cifar10", "--wd_sweep", "--print_config"])
    path = tmp_path / "probe.yaml"
    path.write_text(capsys.readouterr().out)
    args = linear_probe.parse_args(["--config", str(path), "--data.data_dir", "/data", "--epochs", "7"])
    assert (args.ckpt, args.data.dataset, args.data.data_dir, args.wd_sweep, args.epochs) == \
        ("b.pt", "cifar10", "/data", True, 7)


def test_siamese_config_keeps_class_specs_as_written(tmp_path, capsys):
    with pytest.raises(SystemExit):
        siamese.main(["--train_classes", "0-2,Bag", "--data.download", "false", "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["train_classes"] == "0-2,Bag" and config["data"]["download"] is False
    assert siamese.parse_classes(config["train_classes"]) == [0, 1, 2, "Bag"]


def test_the_installed_console_script_runs_a_recipe():
    script = shutil.which("ssl-siamese", path=str(Path(sys.executable).parent))
    assert script is not None, "ssl-siamese is not installed: pip install -e . (scripts/setup.sh does it)"
    done = subprocess.run([script, "export", "--ckpt", "missing.pt", "--print_config"], capture_output=True,
                          text=True, timeout=120, check=True)
    assert yaml.safe_load(done.stdout)["ckpt"] == "missing.pt"
    failed = subprocess.run([script, "export", "--ckpt", "missing.pt", "--out", "never"], capture_output=True,
                            text=True, timeout=120)
    assert failed.returncode != 0 and "missing.pt" in failed.stderr
