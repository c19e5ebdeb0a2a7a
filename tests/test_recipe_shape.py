"""One recipe shape: a function recipe's flags are its ``run_X`` signature (same defaults), called by keyword,
and a wrong input ends in one message naming what was wrong."""

from __future__ import annotations

import inspect

import pytest

from ssl_siamese.cli.recipe import Flag, function_parser, option_name
from ssl_siamese.recipes import export, finetune, linear_probe, siamese

RECIPES = {  # recipe module -> its run function (the recipes whose command line is derived from it)
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


def test_a_bad_flag_value_exits_2_naming_the_flag(capsys):
    with pytest.raises(SystemExit) as caught:
        finetune.main(["--backbone", "random", "--epochs", "ten"])
    assert caught.value.code == 2 and "--epochs" in capsys.readouterr().err


def test_a_wrong_input_ends_in_one_message_with_the_recipe_name(tmp_path):
    with pytest.raises(SystemExit) as caught:
        export.main(["--ckpt", str(tmp_path / "absent.pt"), "--out", str(tmp_path / "x")])
    assert str(caught.value.code).startswith("ssl_siamese.recipes.export: error: No exported backbone")
    assert not (tmp_path / "x").exists()
