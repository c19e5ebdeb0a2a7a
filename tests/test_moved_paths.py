"""Every module that moved into a layer package still imports under its old name, as the very same module."""

from __future__ import annotations

import importlib
import pickle
import subprocess
import sys

import pytest

from ssl_siamese import _moved


@pytest.mark.parametrize("old", sorted(_moved.MOVED))
def test_an_old_module_path_gives_the_moved_module_itself(old: str) -> None:
    new = _moved.MOVED[old]
    assert importlib.import_module(old) is importlib.import_module(new)
    module = sys.modules[new]
    assert module.__name__ == new and module.__spec__.name == new  # the alias does not rename the module


def test_the_alias_keeps_identity_pickles_and_attributes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(_moved.MOVED, "ssl_siamese.old_images_probe", "ssl_siamese.data.images")
    monkeypatch.delitem(sys.modules, "ssl_siamese.old_images_probe", raising=False)
    old = importlib.import_module("ssl_siamese.old_images_probe")
    import ssl_siamese.data.images as new

    assert old is new and new.__spec__.name == "ssl_siamese.data.images"
    from ssl_siamese.old_images_probe import read_image  # from-imports of names work too

    assert read_image is new.read_image
    assert pickle.loads(pickle.dumps(new.read_image)) is new.read_image
    sys.modules.pop("ssl_siamese.old_images_probe")


def test_old_paths_work_in_a_fresh_interpreter() -> None:
    """A user's script importing an old path first, before anything else of the package, still works."""
    if not _moved.MOVED:
        pytest.skip("no module has moved")
    old, new = sorted(_moved.MOVED.items())[0]
    code = f"import {old}, {new}, sys; assert sys.modules['{old}'] is sys.modules['{new}']"
    subprocess.run([sys.executable, "-c", code], check=True)
