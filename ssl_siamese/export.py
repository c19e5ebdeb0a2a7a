"""Export a trained backbone on its own, and load it back as a feature extractor.

The file holds only tensors and plain metadata, so it loads with ``torch.load(weights_only=True)``:
opening a file never runs code from it. For torchvision ResNets the weights load into
``torchvision.models.resnet18()`` (with ``fc = Identity`` and, when ``metadata["cifar_stem"]``, the
3x3 stem) with ``strict=True``.

Example:
    >>> export_backbone(model, "out/simclr/exported_models/backbone.pt", data="cifar10", epochs=200)
    >>> backbone, metadata = load_backbone("out/simclr/exported_models/backbone.pt")
    >>> features = backbone(images)          # (B, 512), eval mode
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ssl_siamese.backbones import build_backbone

FORMAT = "ssl_siamese.backbone/1"


def export_backbone(model: nn.Module, path: str | Path, **metadata: Any) -> Path:
    """Write ``model.backbone``'s weights and metadata to ``path`` atomically; return the path.

    ``model`` is a method (``SimCLR``, ``MoCo``, ``SimSiam``). Metadata records the architecture, the
    stem, feature dimension, input size and normalisation, the method, plus any ``metadata`` given.
    """
    hparams = dict(getattr(model, "hparams", {}))
    arch = hparams.get("backbone")
    info = {
        "format": FORMAT,
        "architecture": arch if isinstance(arch, str) else type(model.backbone).__name__,
        "cifar_stem": bool(hparams.get("cifar_stem", False)),
        "feature_dim": int(model.feature_dim),
        "image_size": int(hparams.get("view_size", 0)),
        "mean": [float(v) for v in hparams.get("mean", ())],
        "std": [float(v) for v in hparams.get("std", ())],
        "method": type(model).__name__,
        **{key: value for key, value in metadata.items() if value is not None},
    }
    state_dict = {key: value.detach().cpu().clone() for key, value in model.backbone.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as handle:
        torch.save({"state_dict": state_dict, "metadata": info}, handle)
    os.replace(handle.name, path)
    return path


def load_backbone(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Load an exported backbone: ``(module in eval mode, metadata)``. Weights-only; never unpickles code.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a file that is not an ssl_siamese backbone export, is truncated, or holds weights
            that do not fit the architecture it names.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No exported backbone at {path.resolve()}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated, corrupt, or carries pickled objects
        raise ValueError(
            f"Cannot read {path} as an exported backbone ({type(error).__name__}: {str(error)[:200]}). "
            "The file may be truncated, or hold pickled objects, which are refused for safety; "
            "export it again with ssl_siamese.export_backbone."
        ) from error
    if not isinstance(payload, dict) or payload.get("metadata", {}).get("format") != FORMAT:
        raise ValueError(f"{path} is not an ssl_siamese backbone export (expected format {FORMAT}).")
    metadata = payload["metadata"]
    backbone, _ = build_backbone(metadata["architecture"], metadata.get("cifar_stem", False))
    try:
        backbone.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as error:
        raise ValueError(
            f"The weights in {path} do not fit architecture {metadata['architecture']!r} "
            f"(cifar_stem={metadata.get('cifar_stem')}): {str(error)[:300]}"
        ) from error
    return backbone.eval(), metadata
