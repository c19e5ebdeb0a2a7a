"""One recipe shape: a function recipe's flags are its ``run_X`` signature (same defaults), called by keyword,
and a wrong input ends in one message naming what was wrong."""

from __future__ import annotations

import inspect

import pytest

from ssl_siamese.cli.recipe import Flag, function_parser, option_name
from ssl_siamese.recipes import duplicates, embed, explore, export, finetune, linear_probe, siamese

RECIPES = {  # recipe module -> its run function (the recipes whose command line is derived from it)
    duplicates: duplicates.run_duplicates,
    embed: embed.run_embed,
    explore: explore.run_explore,
    export: export.run_export,
    finetune: finetune.run_finetune,
    linear_probe: linear_probe.run_linear_probe,
    siamese: siamese.run_siamese,
}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda module: module.__name__.rsplit(".", 1)[1])
def test_every_parameter_has_a_flag_with_the_same_default(recipe, capsys):
    run = RECIPES[recipe]
    parser = function_parser(run, recipe.PROG, "", recipe.FLAGS)
    with pytest.raises(SystemExit) as caught:
        parser.parse_args(["--help"])
    assert caught.value.code == 0 and "--config" in capsys.readouterr().out
    defaults = parser.get_defaults()
    for name, parameter in inspect.signature(run).parameters.items():
        if name == "progress":
            continue
        flag = recipe.FLAGS.get(name, Flag())
        key = option_name(name, recipe.FLAGS)
        assert key in defaults, f"{recipe.__name__}: no flag for {name}"
        if parameter.default is inspect.Parameter.empty or flag.required:
            continue
        value = defaults[key]
        value = (not value) if flag.invert else flag.convert(value) if flag.convert else value
        expected = list(parameter.default) if isinstance(parameter.default, range) else parameter.default
        assert value == expected, f"{recipe.__name__}: --{key} defaults to {value!r}, {name}= to {expected!r}"


@pytest.mark.parametrize(("recipe", "argv", "flag", "status"), [
    (finetune, ["--backbone", "random", "--epochs", "ten"], "--epochs", 2),  # the parser's type check
    (embed, ["--backbone", "b.pt", "--data", "photos", "--batch_size", "many"], "--batch_size", 2),
    (duplicates, ["--embeddings", "e.npz", "--threshold", "high"], "--threshold", 2),
    (explore, ["--embeddings", "e.npz", "--duplicates", "1.5"], "--duplicates", 1),  # checks after parsing
    (explore, ["--backbone", "b.pt"], "--backbone needs --data", 1),
    (explore, ["--embeddings", "e.npz", "--data", "photos"], "--data and --save_embeddings go with --backbone", 1),
], ids=lambda value: value.__name__.rsplit(".", 1)[1] if inspect.ismodule(value) else None)
def test_a_bad_flag_value_exits_non_zero_naming_the_flag(recipe, argv, flag, status, capsys):
    with pytest.raises(SystemExit) as caught:
        recipe.main(argv)
    code = caught.value.code  # argparse: status 2, message on stderr; user_errors: the message is the code (1)
    message = capsys.readouterr().err if isinstance(code, int) else str(code)
    assert (code if isinstance(code, int) else 1) == status and flag in message, (code, message)
    if status == 1:
        assert message.startswith(f"{recipe.__name__}: error: ")


def test_a_wrong_input_ends_in_one_message_with_the_recipe_name(tmp_path):
    with pytest.raises(SystemExit) as caught:
        export.main(["--ckpt", str(tmp_path / "absent.pt"), "--out", str(tmp_path / "x")])
    assert str(caught.value.code).startswith("ssl_siamese.recipes.export: error: No exported backbone")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(("raised", "ends"), [(FileNotFoundError("no folder data/x"), "message"),
                                              (ImportError("install kornia"), "message"),
                                              (RuntimeError("a bug"), "traceback")])
def test_a_lightning_recipe_fails_as_the_function_recipes_do(raised, ends, monkeypatch, tmp_path):
    """user_errors is the Lightning recipes' wrapper too: a wrong input ends in one line, a bug keeps its traceback."""
    from ssl_siamese import SimCLR
    from ssl_siamese.cli import lightning
    from ssl_siamese.data import SSLDataModule

    def setup(self, stage=None):
        raise raised

    monkeypatch.setattr(SSLDataModule, "setup", setup)
    argv = ["--model.backbone", "tiny_cnn", "--data.dataset", "synthetic", "--log_to", "none", "--out", str(tmp_path)]
    with pytest.raises(SystemExit if ends == "message" else RuntimeError) as caught:
        lightning.main(SimCLR, "simclr", argv)
    if ends == "message":
        assert caught.value.code == f"ssl_siamese.recipes.simclr: error: {raised}"
