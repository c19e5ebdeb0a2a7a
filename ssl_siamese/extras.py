"""Optional dependencies: import one, or fail with a message that names the extra that installs it.

The core install (``pip install ssl_siamese``) trains and evaluates images; the rest is in extras declared in
pyproject.toml: ``timm`` (timm backbones and exports), ``kornia`` (kornia view pipelines), ``onnx`` (ONNX
export and its check), ``text`` (text encoders, tokenizers, BM25, sentence-transformers), ``faiss`` (a faster
search for very large indexes). Code that needs one calls :func:`require` where it is used, so a missing
package costs nothing until the feature is asked for, and then says what to install.

Example:
    >>> timm = require("timm", "the timm backbone 'vit_small_patch16_224'")  # the module, when installed
    >>> require("not_a_package", "this feature")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    ImportError: this feature needs the Python package not_a_package: pip install not_a_package
"""

from __future__ import annotations

import importlib
from types import ModuleType

# module name -> (extra of ssl_siamese that installs it, its name on PyPI)
EXTRAS: dict[str, tuple[str, str]] = {
    "timm": ("timm", "timm"),
    "kornia": ("kornia", "kornia"),
    "onnx": ("onnx", "onnx"),
    "onnxruntime": ("onnx", "onnxruntime"),
    "transformers": ("text", "transformers"),
    "tokenizers": ("text", "tokenizers"),
    "sentence_transformers": ("text", "sentence-transformers"),
    "bm25s": ("text", "bm25s"),
    "sklearn": ("text", "scikit-learn"),
    "faiss": ("faiss", "faiss-cpu"),
}


def install_hint(module: str) -> str:
    """``pip install 'ssl_siamese[text]'  (or: pip install bm25s)`` for a module of an extra."""
    top = module.split(".")[0]
    if top not in EXTRAS:
        return f"pip install {top}"
    extra, package = EXTRAS[top]
    return f"pip install 'ssl_siamese[{extra}]'  (or: pip install {package})"


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module``; if it is missing, raise ImportError saying that ``purpose`` needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        missing = getattr(error, "name", None) or module
        if missing.split(".")[0] != module.split(".")[0]:
            raise  # the package is there but one of its own dependencies is not: its message says which
        raise ImportError(f"{purpose} needs the Python package {module.split('.')[0]}: "
                          f"{install_hint(module)}") from error
