"""What a user meets before training starts: --help, import cost, misspelt options, the W&B mode and run id."""

import re
import subprocess
import sys

import pytest

from ssl_siamese.cli import main
from ssl_siamese.methods import MoCo, SimCLR, SimSiam

from helpers import offline_wandb_run_ids

METHODS = {"simclr": SimCLR, "moco": MoCo, "simsiam": SimSiam}
TINY = ["--model.backbone", "tiny_cnn", "--data.dataset", "synthetic", "--data.batch_size", "32",
        "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false"]
SHORT_RUN = ["--trainer.limit_train_batches", "2", "--data.train_subset", "64", "--data.val_subset", "64",
             "--data.knn_bank_subset", "128", "--knn_at_start", "false", "--online_probe", "false",
             "--pictures_every_n_epochs", "0"]
HELP_LINE_BUDGET = 380  # (360 until the base gained adamw and per-view augmentations) 1,365 lines before (730 of them the torch.nn classes); Lightning's Trainer takes ~130


@pytest.fixture(autouse=True)
def offline_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def help_text(name: str, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(METHODS[name], name, ["--help"])
    assert exit_info.value.code in (0, None)
    return capsys.readouterr().out


def option_help(text: str) -> dict[str, str]:
    """``{--option: its help text}`` from argparse's help layout (help on the same or the following lines)."""
    entries: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        match = re.match(r"^  (-\S+)(.*)$", line)
        if match:
            current = match.group(1).split(",")[0]
            invocation_and_help = re.split(r"\s{2,}", match.group(2).strip(), maxsplit=1)
            entries[current] = invocation_and_help[1] if len(invocation_and_help) > 1 else ""
        elif current is not None and line.startswith("    ") and line.strip():
            entries[current] += " " + line.strip()
        else:
            current = None
    return entries


@pytest.mark.parametrize("name", METHODS)
def test_help_is_short_and_every_model_and_data_option_is_described(name, capsys):
    text = help_text(name, capsys)
    lines = text.splitlines()
    assert len(lines) < HELP_LINE_BUDGET, f"--help of {name} has {len(lines)} lines"
    assert "torch.nn.modules" not in text and "known subclasses" not in text
    entries = option_help(text)
    options = [o for o in entries if o.startswith(("--model.", "--data.")) and not o.endswith(".help")]
    assert {"--model.backbone", "--model.lr", "--data.dataset", "--data.data_dir", "--data.batch_size"} <= set(options)
    undescribed = [o for o in options if not re.sub(r"\(type:.*\)\s*$", "", entries[o]).strip()]
    assert not undescribed, f"options without a description: {undescribed}"
    backbone = entries["--model.backbone"]
    assert "type: str" in backbone and all(arch in backbone for arch in ("resnet18", "resnet50", "tiny_cnn", "timm/"))


def test_help_runs_as_a_command_and_names_the_recipe():
    result = subprocess.run([sys.executable, "-m", "ssl_siamese.recipes.simsiam", "--help"], capture_output=True,
                            text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    assert "ssl_siamese.recipes.simsiam" in result.stdout and "SimSiam" in result.stdout
    assert len(result.stdout.splitlines()) < HELP_LINE_BUDGET


def modules_after(*stages: str) -> list[set[str]]:
    """The top-level modules loaded after each of ``stages`` (code run one after the other in one fresh
    interpreter: each set holds what the earlier stages loaded too)."""
    code = "import sys\n" + "".join(f"{stage}\nprint(' '.join(sys.modules))\n" for stage in stages)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    return [{name.split(".")[0] for name in line.split()} for line in result.stdout.splitlines()]


def test_importing_the_package_and_a_recipe_skips_heavy_optional_modules():
    # one interpreter (each costs ~6 s with Lightning): the package, then what Lightning and lightly load on their
    # own, then a recipe, then the README's imports; a later stage's set holds the earlier ones'
    package, theirs, recipe, readme = modules_after(
        "import ssl_siamese",
        # `import pytorch_lightning` itself imports matplotlib (through torchmetrics), so a recipe cannot avoid it;
        # lightly's losses import its timm modules when timm is installed, and timm pulls in more: not ours to avoid
        "import pytorch_lightning, lightly.loss, lightly.models.modules",
        "import ssl_siamese.recipes.simclr",
        "from ssl_siamese import SimCLR, load_backbone, read_image")
    assert not {"wandb", "matplotlib", "sklearn", "torch"} & package
    assert not ({"wandb", "sklearn"} - theirs) & recipe
    assert not ({"wandb", "sklearn"} - theirs) & readme


def test_embedding_images_imports_no_lightning(tmp_path):
    """The embed recipe and load_backbone + read_images (the README's downstream snippet) need no Lightning."""
    (modules,) = modules_after("import ssl_siamese.recipes.embed\n"
                               "from ssl_siamese import load_backbone, read_images, embed_images")
    assert not {"pytorch_lightning", "lightning_fabric", "torchmetrics", "wandb"} & modules


def test_public_names_resolve_lazily():
    import ssl_siamese
    for name in ssl_siamese.__all__:
        assert getattr(ssl_siamese, name) is not None, name
    assert "SupervisedSiamese" in ssl_siamese.__all__ and "read_images" in ssl_siamese.__all__
    from ssl_siamese.methods.siamese import SupervisedSiamese
    assert ssl_siamese.SupervisedSiamese is SupervisedSiamese
    with pytest.raises(AttributeError, match="no attribute 'Simclr'"):
        getattr(ssl_siamese, "Simclr")


@pytest.mark.parametrize(("typed", "meant"), [("--ckpt_pth", "--ckpt_path"), ("--out_dir", "--out"),
                                              ("--log-to", "--log_to"), ("--knn_at_strat", "--knn_at_start")])
def test_misspelt_option_without_a_dot_gets_a_suggestion(typed, meant, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(SimCLR, "simclr", TINY + [typed, "x", "--out", str(tmp_path)])
    message = str(exit_info.value.code)
    assert f"unknown option {typed}" in message and f"did you mean {meant}?" in message


def test_wandb_online_without_credentials_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        main(SimSiam, "simsiam", TINY + ["--wandb_mode", "online", "--out", str(tmp_path)])
    message = str(exit_info.value.code)
    assert "--wandb_mode online" in message and "wandb login" in message


def test_wandb_stays_offline_with_credentials_and_a_resume_continues_its_run(tmp_path, monkeypatch):
    """One W&B-logged recipe run serves three checks (each was a fit of its own): the backbone given on the command
    line is built; with credentials but no --wandb_mode the run stays offline; a resume continues its W&B run."""
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)  # a key exists, as on a machine that ran `wandb login`
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # an online run would fail here, not hang
    first = main(SimSiam, "simsiam", TINY + SHORT_RUN + ["--trainer.max_epochs", "1", "--out", str(tmp_path)])
    from ssl_siamese import load_backbone
    assert load_backbone(first["backbone"]).metadata["architecture"] == "tiny_cnn"
    (run_id,) = offline_wandb_run_ids(tmp_path)  # exactly one run, offline
    assert not list(tmp_path.glob("wandb/run-*")), "an online run was started"
    checkpoint = first["out"] / "checkpoints" / "last.ckpt"
    second = main(SimSiam, "simsiam", TINY + SHORT_RUN + ["--trainer.max_epochs", "2", "--ckpt_path",
                                                          str(checkpoint), "--out", str(tmp_path)])
    assert second["epochs"] == 2
    assert set(offline_wandb_run_ids(tmp_path)) == {run_id}
    assert not list(tmp_path.glob("wandb/run-*")), "an online run was started"
    # a new run in the same folder without --ckpt_path is a new W&B run
    main(SimSiam, "simsiam", TINY + SHORT_RUN + ["--trainer.max_epochs", "1", "--out", str(tmp_path)])
    assert len(set(offline_wandb_run_ids(tmp_path))) == 2
