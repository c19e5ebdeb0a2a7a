"""Optional packages: every extra in pyproject is known to ``require``, and a missing one names its extra."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest
import torch

from ssl_siamese.extras import EXTRAS, install_hint, require

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def declared_extras() -> dict[str, list[str]]:
    return tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]


def test_each_module_names_an_extra_that_declares_its_package():
    extras = declared_extras()
    for module, (extra, package) in EXTRAS.items():
        assert extra in extras, f"{module}: extra {extra!r} is not declared in pyproject.toml"
        assert any(req.split(">")[0].split("=")[0].split("[")[0] == package for req in extras[extra]), \
            f"{module}: {package} is not in the {extra!r} extra"


def test_a_missing_package_says_which_extra_installs_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "bm25s", None)  # what Python does for a package that is not installed
    with pytest.raises(ImportError, match=r"The BM25 baseline needs the Python package bm25s: "
                                          r"pip install 'ssl_siamese\[text\]'  \(or: pip install bm25s\)"):
        require("bm25s", "The BM25 baseline")
    assert install_hint("faiss") == "pip install 'ssl_siamese[faiss]'  (or: pip install faiss-cpu)"
    assert install_hint("somepkg.sub") == "pip install somepkg"


def test_features_fail_with_the_hint_where_they_are_used(monkeypatch, tmp_path):
    from ssl_siamese.export.runtime import run_exported
    from ssl_siamese.text.retrieval import bm25_search

    monkeypatch.setitem(sys.modules, "bm25s", None)
    with pytest.raises(ImportError, match=r"ssl_siamese\[text\]"):
        bm25_search(["a query"], ["a document"])
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r"ssl_siamese\[onnx\]"):
        run_exported(tmp_path / "backbone.onnx", torch.zeros(1, 3, 8, 8))


def test_a_broken_dependency_of_an_installed_package_is_not_blamed_on_it(monkeypatch, tmp_path):
    (tmp_path / "pkg_with_missing_dep.py").write_text("import a_dependency_that_is_missing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="a_dependency_that_is_missing"):
        require("pkg_with_missing_dep", "a feature")
