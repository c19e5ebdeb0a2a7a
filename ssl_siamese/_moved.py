"""Old import paths of modules that moved into the layered packages, kept working without files at the top level.

``MOVED`` maps an old module name to its new home. ``import ssl_siamese.augment`` (a YAML ``class_path`` such as
``ssl_siamese.augment.ViewAugmentation``, a pickled object, a user's script) then gives the very module object
that ``ssl_siamese.views.augment`` is: the same classes, the same globals, so ``isinstance`` checks, pickles and
``monkeypatch`` behave as before. ``install()`` is called once by ``ssl_siamese/__init__.py``.

Moving a module: ``git mv`` it, add one row here, and keep a test in ``tests/test_moved_paths.py`` reading every row.

Example:
    >>> import ssl_siamese.augment, ssl_siamese.views.augment
    >>> ssl_siamese.augment is ssl_siamese.views.augment
    True
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType

MOVED: dict[str, str] = {
    "ssl_siamese.augment": "ssl_siamese.views.augment",
    "ssl_siamese.checkpoint_io": "ssl_siamese.export.checkpoint_io",
    "ssl_siamese.checkpoints": "ssl_siamese.export.checkpoints",
    "ssl_siamese.cli_args": "ssl_siamese.cli.arguments",
    "ssl_siamese.console": "ssl_siamese.cli.console",
    "ssl_siamese.duplicates": "ssl_siamese.search.duplicates",
    "ssl_siamese.embeddings": "ssl_siamese.search.embeddings",
    "ssl_siamese.hub": "ssl_siamese.export.hub",
    "ssl_siamese.images": "ssl_siamese.data.images",
    "ssl_siamese.kornia_views": "ssl_siamese.views.kornia_views",
    "ssl_siamese.loader": "ssl_siamese.data.loader",
    "ssl_siamese.loggers": "ssl_siamese.cli.loggers",
    "ssl_siamese.methods.views": "ssl_siamese.views.presets",
    "ssl_siamese.metric_losses": "ssl_siamese.losses.metric",
    "ssl_siamese.model_card": "ssl_siamese.export.model_card",
    "ssl_siamese.oneshot": "ssl_siamese.search.oneshot",
    "ssl_siamese.padded": "ssl_siamese.data.padded",
    "ssl_siamese.pretrained_folder": "ssl_siamese.export.pretrained_folder",
    "ssl_siamese.queue": "ssl_siamese.methods.queue",
    "ssl_siamese.runtime_export": "ssl_siamese.export.runtime",
    "ssl_siamese.samplers": "ssl_siamese.data.samplers",
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers an import of an old name with the module at its new name (imported first if needed)."""

    def find_spec(self, fullname, path=None, target=None):  # noqa: ANN001, ANN201 (importlib's signature)
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(MOVED[spec.name])
        spec.loader_state = module.__spec__  # importlib sets module.__spec__ = spec before exec_module
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = module.__spec__.loader_state  # the module stays itself: its name, file and spec


def install() -> None:
    """Put the finder on ``sys.meta_path`` once (a second call does nothing)."""
    if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _MovedModuleFinder())
