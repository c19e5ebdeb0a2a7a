"""The ``ssl-siamese`` command: ``ssl-siamese <recipe> [options]`` runs ``python -m ssl_siamese.recipes.<recipe>``.

    ssl-siamese                      # lists the recipes with one line each
    ssl-siamese simclr --config recipes/cifar10_simclr.yaml
    ssl-siamese linear_probe --ckpt out/simclr/exported_models/backbone --print_config

Every module of :mod:`ssl_siamese.recipes` is a recipe; its first docstring line is its description (read
without importing it, so the listing is instant). The recipe runs as ``python -m`` would run it (its
``__main__`` block) with ``sys.argv`` set to ``["ssl-siamese <recipe>", *options]``. A misspelt recipe gets
the closest name as a suggestion.

Example:
    >>> sorted(recipes())[:2]
    ['barlow_twins', 'byol']
    >>> main(["linear_probe", "--help"])  # doctest: +SKIP
"""

from __future__ import annotations

import ast
import difflib
import pkgutil
import runpy
import sys
from collections.abc import Sequence
from pathlib import Path

import ssl_siamese.recipes

PROG = "ssl-siamese"


def recipes() -> dict[str, str]:
    """``{recipe name: first line of its docstring, up to its command}`` for each module of the recipes."""
    found = {}
    for module in pkgutil.iter_modules(ssl_siamese.recipes.__path__):
        if module.name.startswith("_"):
            continue
        source = Path(ssl_siamese.recipes.__path__[0], f"{module.name}.py").read_text(encoding="utf-8")
        doc = ast.get_docstring(ast.parse(source)) or ""
        first = doc.strip().splitlines()[0] if doc.strip() else ""
        found[module.name] = first.split(": `")[0].split(": ``")[0].rstrip(".")  # the command comes in --help
    return found


def usage() -> str:
    """The listing printed by ``ssl-siamese`` and ``ssl-siamese --help``."""
    listing = recipes()
    width = max(map(len, listing))
    lines = [f"usage: {PROG} <recipe> [options]   ({PROG} <recipe> --help for a recipe's options)", "",
             "recipes:"]
    lines += [f"  {name:<{width}}  {description}" for name, description in sorted(listing.items())]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the recipe named by ``argv[0]`` with the rest of ``argv`` as its command line."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if not arguments or arguments[0] in ("-h", "--help"):
        print(usage())
        return
    name, options = arguments[0], arguments[1:]
    listing = recipes()
    if name not in listing:
        close = difflib.get_close_matches(name, listing, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}?" if close else f"recipes: {', '.join(sorted(listing))}"
        sys.exit(f"{PROG}: error: unknown recipe {name!r}; {hint}")
    saved = sys.argv
    sys.argv = [f"{PROG} {name}", *options]  # what the recipe's parser reads
    try:
        runpy.run_module(f"ssl_siamese.recipes.{name}", run_name="__main__", alter_sys=False)
    finally:
        sys.argv = saved


if __name__ == "__main__":
    main()
