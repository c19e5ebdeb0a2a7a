"""The packages of ssl_siamese are layers: each imports only the layers below it (README's architecture drawing).

Read from the source (every ``import ssl_siamese.<package>...`` and ``from ssl_siamese.<package> ...``, at module
level or inside functions), so a new upward import fails here with the file and line to look at.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ssl_siamese"

LAYERS = {  # bottom (0) to top; the same number: neither imports the other
    "backbones": 0, "data": 0,
    "views": 1,
    "losses": 2,
    "methods": 3, "callbacks": 3,
    "export": 4,
    "evaluation": 5, "search": 5,
    "text": 6, "explorer": 6,
    "crossmodal": 7,
    "cli": 8,
    "recipes": 9,
}
ANYWHERE = {"_lazy", "_moved", "extras"}  # plumbing every layer may use
UPWARD_ON_PURPOSE = {  # (file, imported package): why
    ("methods/siamese.py", "export"): "SupervisedSiamese(pretrained=...) starts from an exported backbone",
    ("cli/console.py", "recipes"): "the ssl-siamese command lists and runs the recipes",
}


def imported_packages(path: Path) -> list[tuple[str, int]]:
    """``(package, line)`` of every ssl_siamese package that ``path`` imports."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        modules = []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        for module in modules:
            parts = module.split(".")
            if parts[0] == "ssl_siamese" and len(parts) > 1 and parts[1] in LAYERS | dict.fromkeys(ANYWHERE):
                found.append((parts[1], node.lineno))
                break
    return found


def test_every_package_is_a_layer():
    packages = {path.name for path in PACKAGE.iterdir() if path.is_dir() and (path / "__init__.py").is_file()}
    modules = {path.stem for path in PACKAGE.glob("*.py")} - {"__init__"}
    assert packages == set(LAYERS), "add the new package to LAYERS (and to README's architecture drawing)"
    assert modules == ANYWHERE, "a module at the top level: put it in the layer it belongs to (see CONTRIBUTING.md)"


def test_layers_import_only_the_layers_below():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if len(relative.parts) == 1:
            continue  # __init__ and the plumbing
        layer = relative.parts[0]
        for package, line in imported_packages(path):
            if package in ANYWHERE or package == layer:
                continue
            if LAYERS[package] >= LAYERS[layer] and (relative.as_posix(), package) not in UPWARD_ON_PURPOSE:
                upward.append(f"{relative}:{line} ({layer}, layer {LAYERS[layer]}) imports {package} "
                              f"(layer {LAYERS[package]})")
    assert not upward, "imports that point up or sideways:\n" + "\n".join(upward)


def test_the_exceptions_are_still_there():
    """An exception that no longer happens is removed from UPWARD_ON_PURPOSE, so the list stays true."""
    for file, package in UPWARD_ON_PURPOSE:
        assert package in {name for name, _ in imported_packages(PACKAGE / file)}, (file, package)
