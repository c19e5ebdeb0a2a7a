"""The command line of a recipe that is one function: its flags derived from ``run_X``'s typed signature.

Every parameter of ``run_X`` becomes a flag with the parameter's type and default; its help is the ``Args:``
entry of ``run_X``'s docstring unless a :class:`Flag` gives one. A :class:`Flag` also says where a parameter
sits on the command line when that is not its own name (``dataset`` -> ``--data.dataset``, a ``data:`` key of
the YAML ``--config``), a second name (``--ckpt`` beside ``--backbone``), choices, or a switch
(``--wd_sweep``; ``--no_check`` for ``check=False``). :func:`call` hands the parsed options back to ``run_X``
as keyword arguments, so a flag and its parameter cannot drift apart. :func:`user_errors` is the one
error-to-exit wrapper: a wrong input ends the run with ``<prog>: error: <what was wrong>`` (exit status 1), and
:func:`write_results` the one ``results.json`` writer.

Example:
    >>> FLAGS = {"fmt": Flag("format", choices=("onnx", "torchscript"))}
    >>> parser = function_parser(run_export, "python -m ssl_siamese.recipes.export", "Export.", FLAGS)
    >>> args = parse_args(parser, ["--ckpt", "b.pt", "--format", "onnx"])
    >>> with user_errors(parser.prog):
    ...     result = call(run_export, args, FLAGS)  # run_export(ckpt="b.pt", fmt="onnx", ...)
"""

from __future__ import annotations

import inspect
import json
import sys
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from jsonargparse import ArgumentParser, Namespace

from ssl_siamese.cli.arguments import parse_args, recipe_parser

USER_ERRORS = (FileNotFoundError, ValueError, ImportError)  # DataNotFoundError and CheckpointError among them


@dataclass(frozen=True)
class Flag:
    """How one parameter of ``run_X`` appears on the command line (every field optional).

    ``name``: the flag without ``--`` when not the parameter's (``"data.dataset"``); ``aliases``: other option
    strings (``("--ckpt",)``); ``type``/``default``: what the command line takes when it is not the Python
    value (``"0-6"`` for ``range(7)``) and ``convert`` turns it into the parameter's; ``switch``: a flag
    without value that sets True; ``invert``: a switch that sets the parameter False (``--no_check``).
    """

    name: str | None = None
    aliases: tuple[str, ...] = ()
    help: str | None = None
    choices: Sequence[Any] | None = None
    metavar: str | None = None
    nargs: str | None = None
    required: bool | None = None
    type: Any = None
    default: Any = inspect.Parameter.empty
    convert: Callable[[Any], Any] | None = None
    switch: bool = False
    invert: bool = False


def option_name(parameter: str, flags: dict[str, Flag]) -> str:
    """The flag of ``parameter`` without ``--`` (also its key in the parsed namespace and the YAML)."""
    flag = flags.get(parameter)
    return flag.name if flag and flag.name else parameter


def command_line_type(annotation: Any) -> Any:
    """The type the command line parses for ``annotation``: a path is a string; ``X | None`` stays optional."""
    if annotation is Path:
        return str
    if typing.get_origin(annotation) in (Union, types.UnionType):
        members = [m for m in typing.get_args(annotation) if m is not type(None)]
        kept = [m for m in members if m is not Path] or [str]
        inner = kept[0] if len(kept) == 1 else Union[tuple(kept)]
        return Optional[inner] if len(members) < len(typing.get_args(annotation)) else inner
    return annotation


def parameter_help(function: Callable[..., Any]) -> dict[str, str]:
    """The ``Args:`` descriptions of ``function``'s docstring (Google style), by parameter name."""
    try:
        from docstring_parser import parse  # jsonargparse's own docstring reader, installed with it
    except ImportError:
        return {}
    return {p.arg_name: " ".join((p.description or "").split()) for p in parse(inspect.getdoc(function) or "").params}


def function_parser(function: Callable[..., Any], prog: str, description: str, flags: dict[str, Flag] | None = None,
                    skip: Sequence[str] = ("progress",)) -> ArgumentParser:
    """A recipe parser (``--config``, ``--print_config``) with one flag per parameter of ``function`` but ``skip``."""
    flags = flags or {}
    parser = recipe_parser(prog, description)
    hints = typing.get_type_hints(function)
    helps = parameter_help(function)
    for name, parameter in inspect.signature(function).parameters.items():
        if name in skip:
            continue
        flag = flags.get(name, Flag())
        option = [f"--{option_name(name, flags)}", *flag.aliases]
        text = flag.help or helps.get(name)
        default = parameter.default if flag.default is inspect.Parameter.empty else flag.default
        if flag.switch or flag.invert:
            parser.add_argument(*option, dest=option_name(name, flags), action="store_true", help=text)
            continue
        kwargs: dict[str, Any] = {"dest": option_name(name, flags), "help": text}
        if default is inspect.Parameter.empty or flag.required:
            kwargs["required"] = True
        else:
            kwargs["default"] = default
        if flag.choices is not None:
            kwargs["choices"] = list(flag.choices)
        else:
            kwargs["type"] = flag.type or command_line_type(hints.get(name, str))
        kwargs.update({key: value for key, value in (("metavar", flag.metavar), ("nargs", flag.nargs)) if value})
        parser.add_argument(*option, **kwargs)
    return parser


def call(function: Callable[..., Any], args: Namespace, flags: dict[str, Flag] | None = None,
         **given: Any) -> Any:
    """``function(**keyword arguments)`` from the parsed ``args`` (and ``given``, for parameters not on the
    command line such as ``progress``)."""
    flags = flags or {}
    kwargs = dict(given)
    for name in inspect.signature(function).parameters:
        key = option_name(name, flags)
        if name in kwargs or key not in args:
            continue
        value, flag = args[key], flags.get(name, Flag())
        kwargs[name] = (not value) if flag.invert else flag.convert(value) if flag.convert else value
    return function(**kwargs)


@contextmanager
def user_errors(prog: str) -> Iterator[None]:
    """End the run with ``<prog>: error: <message>`` (exit status 1) on a wrong input (``USER_ERRORS``).

    Only inputs are caught: a bug still shows its traceback, and what a run wrote before (checkpoints,
    exports, ``results.json``) stays where it is.
    """
    try:
        yield
    except USER_ERRORS as error:
        sys.exit(f"{prog}: error: {error}")


def write_results(out: str | Path, results: dict[str, Any]) -> Path:
    """``<out>/results.json`` (indented), the folder made if needed; returns its path."""
    path = Path(out) / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    return path


def recipe_main(function: Callable[..., Any], prog: str, description: str, flags: dict[str, Flag],
                argv: Sequence[str] | None = None, **given: Any) -> Any:
    """Parse ``argv`` for ``function`` and call it with keyword arguments, wrong inputs ending in one message."""
    args = parse_args(function_parser(function, prog, description, flags), argv)
    with user_errors(prog.removeprefix("python -m ")):
        return call(function, args, flags, **given)
