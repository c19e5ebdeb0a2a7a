"""Export a backbone for other tools: ``python -m ssl_siamese.recipes.export --ckpt PATH --format F --out DIR``.

    python -m ssl_siamese.recipes.export --ckpt out/simclr/checkpoints/last.ckpt --format safetensors \\
        --out out/simclr/hf                            # model.safetensors + config.json + README.md
    python -m ssl_siamese.recipes.export --ckpt out/simclr/exported_models/backbone --format onnx --out onnx/

``--ckpt`` is anything ``load_backbone`` reads: a Lightning checkpoint, an exported ``.pt``, or an exported
folder / ``model.safetensors``. Formats: ``safetensors`` (the folder of ``export_pretrained``; timm and
torchvision load it), ``onnx`` (``backbone.onnx``, dynamic batch axis), ``torchscript``
(``backbone.torchscript.pt``) and ``torch_export`` (``backbone.pt2``). Graph formats take normalised
float32 images ``(B, 3, S, S)`` with ``S`` the recorded input size (``--image_size`` otherwise) and are
checked after writing: the recipe runs the file (onnxruntime for ONNX) on a batch of another size and
prints the largest absolute difference to the PyTorch features. ``--push_to_hub me/name`` uploads the
safetensors folder (needs ``huggingface_hub`` and a login).

Example:
    >>> summary = run_export("out/simclr/checkpoints/last.ckpt", "onnx", "out/onnx")
    >>> summary["path"], summary["max_abs_diff"]
    ('out/onnx/backbone.onnx', 1.9e-06)
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from jsonargparse import Namespace

from ssl_siamese.cli.arguments import parse_args as parse_checked
from ssl_siamese.cli.recipe import Flag, function_parser, recipe_main

FORMATS = ("safetensors", "onnx", "torchscript", "torch_export")


def run_export(ckpt: str | Path, fmt: str = "safetensors", out: str | Path = "exported",
               image_size: int | None = None, opset: int = 17, check: bool = True,
               push_to_hub: str | None = None) -> dict[str, Any]:
    """Export the backbone in ``ckpt`` to ``out`` in ``format``; return ``path``, ``format``, ``max_abs_diff``.

    ``max_abs_diff`` is None when not checked (``check=False``, safetensors, or ONNX without onnxruntime).

    Args:
        ckpt: Lightning checkpoint (.ckpt), exported backbone (.pt), or exported folder / model.safetensors.
        fmt: The format: safetensors (a folder with config.json and a model card), onnx, torchscript or
            torch_export (one file each, backbone.onnx, backbone.torchscript.pt, backbone.pt2).
        out: Output folder (made if missing): the safetensors folder itself, or the folder of the graph file.
        image_size: Input side S in pixels of the graph formats, which take (B, 3, S, S) normalised images;
            null: the size the backbone records (an error when it records none).
        opset: ONNX opset version (--format onnx only).
        check: Run the exported graph against PyTorch on a batch of another size and report the largest
            absolute difference of the features (skipped for safetensors, and for onnx without onnxruntime).
        push_to_hub: Upload the safetensors folder to this Hugging Face Hub model repository (user/name; needs
            huggingface_hub and a login); null: no upload.

    Raises:
        FileNotFoundError: no ``ckpt``.
        ValueError: an unknown format, an unreadable ``ckpt``, no input size known, or a failed export.
    """
    from ssl_siamese.export.checkpoints import EXPORT_FORMAT
    from ssl_siamese.export import export_versions, load_backbone
    from ssl_siamese.export.pretrained_folder import write_pretrained_folder
    from ssl_siamese.export.runtime import FILE_NAMES, compare, export_onnx, export_program, export_torchscript

    if fmt not in FORMATS:
        raise ValueError(f"Unknown format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    if push_to_hub and fmt != "safetensors":
        raise ValueError("--push_to_hub uploads the safetensors folder: use it with --format safetensors.")
    backbone, _, loaded = load_backbone(ckpt)
    metadata = {**export_versions(loaded.get("architecture")), "module_class": type(backbone).__name__,
                **{key: value for key, value in loaded.items() if value is not None}, "format": EXPORT_FORMAT}
    out = Path(out)
    result: dict[str, Any] = {"format": fmt, "max_abs_diff": None, "source": str(ckpt)}
    if fmt == "safetensors":
        result["path"] = str(write_pretrained_folder(backbone, metadata, out))
        if push_to_hub:
            from ssl_siamese.export.hub import push_to_hub as push

            result["hub_commit"] = push(out, push_to_hub)
        return result
    size = int(image_size or metadata.get("image_size") or 0)
    if size <= 0:
        raise ValueError(f"{ckpt} records no input size: pass --image_size S (the side of the square images "
                         "the backbone was trained on).")
    path = out / FILE_NAMES[fmt]
    try:
        if fmt == "onnx":
            export_onnx(backbone, path, size, metadata, opset=opset)
        elif fmt == "torchscript":
            export_torchscript(backbone, path, size)
        else:
            export_program(backbone, path, size)
    except Exception as error:  # noqa: BLE001 - the exporters fail on unsupported operators in many ways
        other = "torch_export" if fmt != "torch_export" else "torchscript"
        raise ValueError(f"Exporting {metadata.get('architecture')} to {fmt} failed: {str(error)[:400]}. "
                         f"Try --format {other}.") from error
    result.update(path=str(path), image_size=size)
    if check and (fmt != "onnx" or importlib.util.find_spec("onnxruntime") is not None):
        result["max_abs_diff"] = compare(path, backbone, size)
    return result


PROG = "python -m ssl_siamese.recipes.export"
DESCRIPTION = "Export a backbone as safetensors (+ config and model card), ONNX, TorchScript or a torch.export program."
FLAGS = {
    "ckpt": Flag(aliases=("--backbone",), metavar="PATH"),
    "fmt": Flag("format", choices=FORMATS),
    "check": Flag("no_check", invert=True, help="Do not run the exported file against PyTorch."),
    "push_to_hub": Flag(metavar="REPO_ID"),
}


def parse_args(argv: list[str] | None = None) -> Namespace:
    """The options of ``run_export``, as flags (``--format`` is ``fmt``, ``--no_check`` is ``check=False``)."""
    return parse_checked(function_parser(run_export, PROG, DESCRIPTION, FLAGS), argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command-line entry point; user errors exit with a one-line message."""
    result = recipe_main(run_export, PROG, DESCRIPTION, FLAGS, argv)
    print(f"Exported {result['format']}: {result['path']}")
    if result["max_abs_diff"] is not None:
        print(f"max |exported - PyTorch| on a batch of 3: {result['max_abs_diff']:.3g}")
    return result


if __name__ == "__main__":
    main()
