"""A backbone as a graph that runs without ssl_siamese: ONNX, TorchScript, or a ``torch.export`` program.

Each takes normalised float32 images ``(B, 3, S, S)`` (the batch size is free) and returns features
``(B, D)``. Preprocessing (resize, mean/std) stays outside the graph, as in ``load_backbone``; the ONNX
file records it in its metadata (``metadata_props``, the export's metadata as strings).

ONNX uses torch's TorchScript-based exporter (``dynamo=False``), which needs no ``onnxscript``; the batch
axis is declared dynamic. ``compare`` runs an exported file on a batch of a size it was not traced with and
returns the largest absolute difference to the PyTorch features.

Example:
    >>> path = export_onnx(backbone, "out/backbone.onnx", image_size=32, metadata=metadata)
    >>> compare(path, backbone, image_size=32)        # max |onnxruntime - PyTorch|, e.g. 2e-6
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ssl_siamese.extras import require

FILE_NAMES = {"onnx": "backbone.onnx", "torchscript": "backbone.torchscript.pt", "torch_export": "backbone.pt2"}
INPUT_NAME, OUTPUT_NAME = "images", "features"


def _example(image_size: int, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))


def export_onnx(backbone: nn.Module, path: str | Path, image_size: int, metadata: dict[str, Any] | None = None,
                opset: int = 17) -> Path:
    """Write ``backbone`` as ONNX with a dynamic batch axis (input ``images``, output ``features``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    backbone = backbone.eval()
    with warnings.catch_warnings(), torch.no_grad():  # the TorchScript-based exporter is deprecated, not gone
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        torch.onnx.export(backbone, (_example(image_size),), str(path), dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    if metadata:
        from ssl_siamese.export.pretrained_folder import header_metadata

        onnx = require("onnx", "ONNX export")

        model = onnx.load(str(path))
        onnx.helper.set_model_props(model, header_metadata(metadata))
        onnx.save(model, str(path))
    return path


def export_torchscript(backbone: nn.Module, path: str | Path, image_size: int) -> Path:
    """Write ``torch.jit.trace(backbone)``; load it with ``torch.jit.load(path)`` (no Python class needed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():  # torch.jit is deprecated in favour of torch.export
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(backbone.eval(), _example(image_size))
        torch.jit.save(traced, str(path))
    return path


def export_program(backbone: nn.Module, path: str | Path, image_size: int) -> Path:
    """Write a ``torch.export`` program with a dynamic batch; ``torch.export.load(path).module()`` runs it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(backbone.eval(), (_example(image_size),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    return path


def run_exported(path: str | Path, images: torch.Tensor) -> torch.Tensor:
    """Features from an exported file (by its extension): onnxruntime, ``torch.jit.load`` or ``torch.export.load``."""
    path = str(path)
    if path.endswith(".onnx"):
        onnxruntime = require("onnxruntime", "Running an exported .onnx file")
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(None, {INPUT_NAME: images.numpy()})[0])
    with torch.no_grad():
        if path.endswith(".pt2"):
            return torch.export.load(path).module()(images)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            return torch.jit.load(path)(images)


def compare(path: str | Path, backbone: nn.Module, image_size: int, batch: int = 3) -> float:
    """Largest ``|exported - PyTorch|`` over the features of ``batch`` random images (another batch size)."""
    images = _example(image_size, batch)
    with torch.no_grad():
        expected = backbone.eval()(images)
    return float((run_exported(path, images) - expected).abs().max())
