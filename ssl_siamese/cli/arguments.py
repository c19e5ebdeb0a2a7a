"""The command line of the recipes that do not train with a Trainer, and the misspelling help of all of them.

:func:`recipe_parser` is jsonargparse's ``ArgumentParser`` (what LightningCLI builds on) with ``--config FILE``
(YAML), ``--print_config`` (the resolved options as YAML, ready for ``--config``) and default values in
``--help``; options are declared as with argparse, and a dotted name such as ``--data.dataset`` is one key of
a ``data:`` section in the YAML. So ``linear_probe``, ``embed``, ``finetune``, ``siamese`` and ``export`` take
``--config``, ``--print_config`` and dotted overrides like the pretraining recipes.

A misspelt command-line option gets the closest valid one as a suggestion, for any argparse-style parser.

Python's argparse (3.11) answers ``--ckpt_pth x`` with "unrecognized arguments" and no hint, and when a
required option is missing it reports that first, so the typo itself is never named. The recipes call
:func:`parse_args` instead of ``parser.parse_args``: every ``--option`` in ``argv`` is checked against the
parser's own option table first (prefixes argparse would accept count as known), and an unknown one ends in
``parser.error("unknown option --ckpt_pth; did you mean --ckpt (same as --backbone)?")``. The pieces work on
any parser with argparse's ``_option_string_actions`` table (jsonargparse's included):
:func:`unknown_option_message` for a message, :func:`closest_option` for the suggestion alone.

Example:
    >>> parser = argparse.ArgumentParser(prog="embed")
    >>> _ = parser.add_argument("--backbone", "--ckpt")
    >>> _ = parser.add_argument("--out")
    >>> unknown_option_message(parser, ["--ckpt_pth", "b.pt", "--out", "e.npz"])
    'unknown option --ckpt_pth; did you mean --ckpt (same as --backbone)?'
    >>> args = parse_args(parser, ["--ckpt", "b.pt"])  # a known option: parsed as usual
    >>> parser = recipe_parser("python -m ssl_siamese.recipes.embed", "Embed images.")
    >>> _ = parser.add_argument("--data.dataset", default="cifar10")
    >>> parse_args(parser, ["--data.dataset", "stl10"]).data.dataset
    'stl10'
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from jsonargparse import ActionConfigFile, ArgumentParser, DefaultHelpFormatter


def _options(parser: Any) -> dict[str, Any]:
    """The parser's option strings (``--name``) mapped to their actions."""
    return {name: action for name, action in parser._option_string_actions.items()  # noqa: SLF001
            if name.startswith("--")}


def closest_option(name: str, options: Iterable[str]) -> str | None:
    """The option in ``options`` closest to the misspelt ``name`` (difflib ratio >= 0.6), or None."""
    options = list(options)
    key = name.replace("-", "_").lower()
    matches = difflib.get_close_matches(key, [o.replace("-", "_").lower() for o in options], n=1, cutoff=0.6)
    if not matches:
        return None
    return next(o for o in options if o.replace("-", "_").lower() == matches[0])


def unknown_options(parser: Any, argv: Sequence[str]) -> list[str]:
    """The ``--options`` in ``argv`` that ``parser`` does not define (nor accepts as an abbreviation)."""
    known = _options(parser)
    abbreviations = getattr(parser, "allow_abbrev", False)
    unknown = []
    for arg in argv:
        if arg == "--":
            break  # everything after "--" is a value
        if not arg.startswith("--") or len(arg) == 2:
            continue
        name = arg.split("=", 1)[0]
        if name in known or (abbreviations and any(option.startswith(name) for option in known)):
            continue
        unknown.append(name)
    return unknown


def unknown_option_message(parser: Any, argv: Sequence[str]) -> str | None:
    """``"unknown option --x; did you mean --y?"`` for the first unknown option in ``argv``; None if all are known."""
    unknown = unknown_options(parser, argv)
    if not unknown:
        return None
    known = _options(parser)
    name = unknown[0]
    close = closest_option(name, known)
    if close is None:
        listing = ", ".join(sorted({action.option_strings[0] for action in known.values()}))
        return f"unknown option {name}; valid options: {listing}"
    canonical = known[close].option_strings[0]
    same = f" (same as {canonical})" if canonical != close else ""
    return f"unknown option {name}; did you mean {close}{same}?"


def recipe_parser(prog: str, description: str) -> ArgumentParser:
    """An argparse-compatible parser with ``--config FILE`` and ``--print_config`` (jsonargparse's).

    Declare options with ``add_argument`` as for argparse (``type=bool`` takes true/false); options given
    after ``--config`` override the file's values, as in LightningCLI.
    """
    parser = ArgumentParser(prog=prog, description=description, formatter_class=DefaultHelpFormatter)
    parser.add_argument("--config", action=ActionConfigFile,
                        help="A YAML file of options (write one with --print_config).")
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``parser.parse_args(argv)``, after exiting with a suggestion (status 2) if an option is misspelt."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    message = unknown_option_message(parser, arguments)
    if message:
        parser.error(message)
    return parser.parse_args(arguments)
