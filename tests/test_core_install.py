"""The core install (``pip install ssl_siamese``, no extras): every method but MAE imports, builds and runs.

The check runs in a subprocess of this interpreter in which every installed distribution that a core install
would not have is unimportable: a finder placed first on ``sys.meta_path`` raises ``ModuleNotFoundError`` for
their top-level modules. Why that stands for a virtual environment without the extras (one costs minutes and
5 GB of torch to build): Python resolves every import, of ours and of our dependencies (lightly probing for
timm with ``try: import timm``, ``ssl_siamese.extras.require``), through ``sys.meta_path``; a finder in front
that raises for a name gives what an absent package gives, the same exception with the same ``name``, before
any other finder can find the installed copy. What is blocked is computed, not listed: all installed
distributions minus the closure of pyproject's ``[project].dependencies`` (their own requirements followed,
extras and environment markers evaluated), plus every module of ``ssl_siamese.extras.EXTRAS`` (faiss is in no
extra of ``[dev]``, so it may not be installed at all). What it does not hide is installed metadata
(``importlib.metadata.version("timm")``): ssl_siamese never asks for it, and code that did would then fail
importing here, as a test failure rather than a false pass.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, distribution, distributions, packages_distributions
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from ssl_siamese.extras import EXTRAS

REPO = Path(__file__).resolve().parents[1]

CHECK = '''
import importlib.abc, importlib.metadata, importlib.util, re, sys
from importlib.machinery import PathFinder

MODULES, DISTRIBUTIONS = (frozenset(names.split(",")) for names in sys.argv[1:3])


class CoreInstallPathFinder(importlib.abc.MetaPathFinder):
    """Python's path finder, blind to the modules and the metadata of the distributions left out."""

    def find_spec(self, name, path=None, target=None):
        return None if name.partition(".")[0] in MODULES else PathFinder.find_spec(name, path, target)

    def find_distributions(self, context=importlib.metadata.DistributionFinder.Context()):
        return (dist for dist in PathFinder.find_distributions(context)
                if re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower() not in DISTRIBUTIONS)


sys.meta_path[sys.meta_path.index(PathFinder)] = CoreInstallPathFinder()
assert not MODULES & {name.partition(".")[0] for name in sys.modules}, "imported before the finder was in place"
assert not any(importlib.util.find_spec(name) for name in MODULES)
for name in ("timm", "kornia", "transformers"):
    try:
        importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        pass
    else:
        raise AssertionError(f"the metadata of {name} is still visible")

import torch

import ssl_siamese
import ssl_siamese.methods
from ssl_siamese.methods.registry import METHODS, method_class

NEEDS_AN_EXTRA = {"MAE"}
for package in (ssl_siamese, ssl_siamese.methods):
    for name in sorted(set(package.__all__) - NEEDS_AN_EXTRA):
        getattr(package, name)  # imports the module that defines it
images = torch.rand(2, 3, 32, 32)
for name in METHODS:
    if name in NEEDS_AN_EXTRA:
        continue
    model = method_class(name)(backbone="tiny_cnn", view_size=32).eval()
    with torch.no_grad():
        assert model(images).shape == (2, model.feature_dim), name
for name in sorted(NEEDS_AN_EXTRA):
    try:
        getattr(ssl_siamese, name)
    except ImportError as error:
        print(f"{name}: {error}")
    else:
        raise AssertionError(f"{name} imported without its extra")
print("core install: every method but", ", ".join(sorted(NEEDS_AN_EXTRA)), "imports, builds and runs")
'''


def core_distributions() -> set[str]:
    """The distributions ``pip install ssl_siamese`` installs: pyproject's dependencies and theirs, transitively."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    todo = [Requirement(line) for line in project["dependencies"]]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        requirement = todo.pop()
        key = (canonicalize_name(requirement.name), frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            requires = distribution(requirement.name).requires or []
        except PackageNotFoundError:  # not for this platform / Python: a core install would not have it either
            continue
        for line in map(Requirement, requires):
            if line.marker is None or any(line.marker.evaluate({"extra": extra}) for extra in {"", *key[1]}):
                todo.append(line)
    return {name for name, _ in seen}


def left_out() -> tuple[set[str], set[str]]:
    """``(top-level modules, distributions)`` a core install lacks: the installed distributions outside
    ``core_distributions`` and their modules, and every module of an extra (``ssl_siamese.extras.EXTRAS``)."""
    core = core_distributions() | {"ssl-siamese"}
    missing = {canonicalize_name(dist.metadata["Name"]) for dist in distributions()} - core
    modules = {module for module, dists in packages_distributions().items()
               if "/" not in module and not any(canonicalize_name(dist) in core for dist in dists)
               and any(canonicalize_name(dist) in missing for dist in dists)}
    return modules | set(EXTRAS), missing


def test_core_install_imports_every_method_but_mae_which_names_its_extra():
    modules, dists = left_out()
    assert {"timm", "kornia", "transformers", "sentence_transformers", "onnx", "onnxruntime", "bm25s",
            "faiss", "sklearn"} <= modules
    assert not {"torch", "lightly", "pytorch_lightning", "litdata", "ssl_siamese"} & modules
    result = subprocess.run([sys.executable, "-c", CHECK, ",".join(sorted(modules)), ",".join(sorted(dists))],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "MAE: MAE (a timm ViT encoder" in result.stdout
    assert "pip install 'ssl_siamese[timm]'" in result.stdout
