"""Lazy public names for a package: ``from pkg import Name`` imports Name's module on first use only.

A recipe imports ``ssl_siamese.cli`` and one method; with eager package imports it would also pay for
matplotlib, the one-shot classifier, the exporters and every evaluation module. ``lazy_exports`` gives a
package the module-level ``__getattr__`` and ``__dir__`` (PEP 562) that import a name's module when the
name is first read and cache the value in the package.

Example:
    >>> __getattr__, __dir__ = lazy_exports(__name__, {"SimCLR": "ssl_siamese.methods.simclr"})
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` whose public ``name`` lives in module ``exports[name]``."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name]), name)
        setattr(sys.modules[package], name, value)  # later reads skip this function
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
