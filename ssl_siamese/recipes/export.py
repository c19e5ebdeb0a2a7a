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
import sys
from pathlib import Path
from typing import Any

from jsonargparse import Namespace

from ssl_siamese.cli.arguments import parse_args as parse_checked
from ssl_siamese.cli.arguments import recipe_parser

FORMATS = ("safetensors", "onnx", "torchscript", "torch_export")


def run_export(ckpt: str | Path, fmt: str = "safetensors", out: str | Path = "exported",
               image_size: int | None = None, opset: int = 17, check: bool = True,
               push_to_hub: str | None = None) -> dict[str, Any]:
    """Export the backbone in ``ckpt`` to ``out`` in ``format``; return ``path``, ``format``, ``max_abs_diff``.

    ``max_abs_diff`` is None when not checked (``check=False``, safetensors, or ONNX without onnxruntime).

    Raises:
        FileNotFoundError: no ``ckpt``.
        ValueError: an unknown format, an unreadable ``ckpt``, no input size known, or a failed export.
    """
    from ssl_siamese.checkpoints import EXPORT_FORMAT
    from ssl_siamese.export import export_versions, load_backbone
    from ssl_siamese.pretrained_folder import write_pretrained_folder
    from ssl_siamese.runtime_export import FILE_NAMES, compare, export_onnx, export_program, export_torchscript

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
            from ssl_siamese.hub import push_to_hub as push

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


def parse_args(argv: list[str] | None = None) -> Namespace:
    parser = recipe_parser("python -m ssl_siamese.recipes.export",
                           "Export a backbone as safetensors (+ config and model card), "
                           "ONNX, TorchScript or a torch.export program.")
    parser.add_argument("--ckpt", "--backbone", dest="ckpt", required=True, metavar="PATH",
                        help="Lightning checkpoint (.ckpt), exported backbone (.pt), or exported folder / "
                             "model.safetensors.")
    parser.add_argument("--format", default="safetensors", choices=FORMATS)
    parser.add_argument("--out", default="exported", help="Output folder.")
    parser.add_argument("--image_size", type=int, default=None,
                        help="Input side S of the graph formats; default: the recorded one.")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset.")
    parser.add_argument("--no_check", action="store_true", help="Do not run the exported file against PyTorch.")
    parser.add_argument("--push_to_hub", default=None, metavar="REPO_ID",
                        help="Upload the safetensors folder to this Hugging Face Hub model repository.")
    return parse_checked(parser, argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command-line entry point; user errors exit with a one-line message."""
    args = parse_args(argv)
    try:
        result = run_export(args.ckpt, args.format, args.out, args.image_size, args.opset, not args.no_check,
                            args.push_to_hub)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"ssl_siamese.recipes.export: error: {error}")
    print(f"Exported {args.format}: {result['path']}")
    if result["max_abs_diff"] is not None:
        print(f"max |exported - PyTorch| on a batch of 3: {result['max_abs_diff']:.3g}")
    return result


if __name__ == "__main__":
    main()
