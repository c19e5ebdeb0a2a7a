"""An exported backbone as a folder other tools load: ``model.safetensors``, ``config.json``, ``README.md``.

``model.safetensors`` holds the backbone's ``state_dict`` with the keys of the architecture's own
library (torchvision's ``ResNet``, timm's model with ``num_classes=0``), and the export metadata in its
header: string values as they are, other values JSON-encoded (their names listed under ``json_keys``),
``format`` set to ``"pt"`` as Hugging Face tools expect and ours kept as ``export_format``.
``config.json`` repeats the metadata under ``"ssl_siamese"``; for a timm architecture it is also timm's
own config, so ``timm.create_model("local-dir:<folder>", pretrained=True)`` rebuilds the model.
``README.md`` is the model card (``ssl_siamese.export.model_card``). Reading never runs code: safetensors
holds tensors and text only.

Example:
    >>> folder = write_pretrained_folder(model.backbone, metadata, "out/simclr/exported_models/backbone")
    >>> state_dict, metadata = read_pretrained(folder)          # or folder / "model.safetensors"
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ssl_siamese.extras import require

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
_JSON_KEYS = "json_keys"  # header entry naming the values that were JSON-encoded
_OWN_FORMAT = "export_format"  # our format string; the header's "format" is "pt" for Hugging Face tools


def looks_like_safetensors(path: str | Path) -> bool:
    """True when ``path`` is a folder holding ``model.safetensors`` or a file that starts like safetensors.

    A safetensors file begins with the header's length (8 bytes, little-endian) and then the JSON header.
    """
    path = Path(path)
    if path.is_dir():
        return (path / WEIGHTS_NAME).is_file()
    try:
        with open(path, "rb") as handle:
            head = handle.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000


def header_metadata(metadata: dict[str, Any]) -> dict[str, str]:
    """The metadata as safetensors header strings: strings as they are, other values as JSON.

    Example:
        >>> header_metadata({"format": "ssl_siamese.backbone/1", "feature_dim": 128, "data": "cifar10"})
        {'export_format': 'ssl_siamese.backbone/1', 'feature_dim': '128', 'data': 'cifar10', \
'json_keys': '["feature_dim"]', 'format': 'pt'}
    """
    header, encoded = {}, []
    for key, value in metadata.items():
        key = _OWN_FORMAT if key == "format" else str(key)
        if isinstance(value, str):
            header[key] = value
        else:
            header[key] = json.dumps(value)
            encoded.append(key)
    header[_JSON_KEYS] = json.dumps(encoded)
    header["format"] = "pt"
    return header


def metadata_from_header(header: dict[str, str]) -> dict[str, Any]:
    """The inverse of :func:`header_metadata`."""
    header = dict(header)
    encoded = set(json.loads(header.pop(_JSON_KEYS, "[]")))
    header.pop("format", None)
    metadata = {key: json.loads(value) if key in encoded else value for key, value in header.items()}
    if _OWN_FORMAT in metadata:
        metadata["format"] = metadata.pop(_OWN_FORMAT)
    return metadata


def _write_atomically(path: Path, write: Any) -> None:
    """``write(temporary_path)``, then rename over ``path``: a kill leaves the old file or the new one."""
    handle = tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False)
    handle.close()
    try:
        write(handle.name)
        os.replace(handle.name, path)
    finally:
        if os.path.exists(handle.name):
            os.unlink(handle.name)


def _timm_config(backbone: nn.Module, metadata: dict[str, Any]) -> dict[str, Any]:
    """timm's ``config.json`` for a timm backbone, with our preprocessing (shorter side to the size, centre crop)."""
    require("timm", "The config.json of a timm backbone")
    from timm.models._hub import save_config_for_hf  # timm's writer: the format its loader reads

    size = int(metadata.get("image_size") or 0)
    data_config: dict[str, Any] = {"crop_pct": 1.0, "crop_mode": "center", "interpolation": "bilinear"}
    if size:
        data_config["input_size"] = (3, size, size)
    if metadata.get("mean") and metadata.get("std"):
        data_config.update(mean=tuple(metadata["mean"]), std=tuple(metadata["std"]))
    with tempfile.TemporaryDirectory() as folder:
        save_config_for_hf(backbone, os.path.join(folder, CONFIG_NAME), data_config=data_config)
        config = json.loads(Path(folder, CONFIG_NAME).read_text())
    pretrained_cfg = config["pretrained_cfg"]
    pretrained_cfg["tag"] = f"ssl_siamese_{str(metadata.get('method', 'ssl')).lower()}"  # not timm's own weights
    pretrained_cfg.pop("license", None)  # timm's licence of its ImageNet weights says nothing of these
    return config


def pretrained_config(backbone: nn.Module, metadata: dict[str, Any]) -> dict[str, Any]:
    """``config.json``: the metadata under ``"ssl_siamese"``; timm's own keys too for a timm architecture."""
    arch = metadata.get("architecture")
    if isinstance(arch, str) and arch.startswith("timm/"):
        config = _timm_config(backbone, metadata)
    else:
        config = {"architecture": arch, "num_features": metadata.get("feature_dim")}
    config["ssl_siamese"] = metadata
    return config


def write_pretrained_folder(backbone: nn.Module, metadata: dict[str, Any], folder: str | Path) -> Path:
    """Write ``model.safetensors`` (weights + metadata header), ``config.json`` and ``README.md``; return the folder.

    Each file is written atomically (temporary file in the folder, then renamed).
    """
    from safetensors.torch import save_file

    from ssl_siamese.export.model_card import model_card

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state_dict = {key: value.detach().cpu().contiguous().clone() for key, value in backbone.state_dict().items()}
    header = header_metadata(metadata)
    _write_atomically(folder / WEIGHTS_NAME, lambda name: save_file(state_dict, name, metadata=header))
    config = json.dumps(pretrained_config(backbone, metadata), indent=2) + "\n"
    _write_atomically(folder / CONFIG_NAME, lambda name: Path(name).write_text(config))
    card = model_card(metadata)
    _write_atomically(folder / CARD_NAME, lambda name: Path(name).write_text(card))
    return folder


def read_pretrained(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(state_dict, metadata)`` from an exported folder or its ``model.safetensors``.

    Raises:
        FileNotFoundError: no such file or folder.
        ValueError: a folder without ``model.safetensors``, a damaged safetensors file, or one without
            ssl_siamese metadata (written by another tool: the message says how to load it yourself).
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if path.is_dir():
        weights = path / WEIGHTS_NAME
        if not weights.is_file():
            listing = ", ".join(sorted(p.name for p in path.iterdir())[:6]) or "nothing"
            raise ValueError(f"The folder {path} holds no {WEIGHTS_NAME} (it holds {listing}). Give the folder "
                             "written by ssl_siamese.export_pretrained or the pretraining recipes "
                             "(<out>/exported_models/backbone), or a .pt/.ckpt file.")
        path = weights
    if not path.is_file():
        raise FileNotFoundError(f"No exported backbone at {path.resolve()}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
            state_dict = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"{path} is not a readable safetensors file (truncated or corrupt? re-export or copy "
                         f"it again): {error}") from error
    metadata = metadata_from_header(header)
    if metadata.get("format") is None:
        keys = ", ".join(list(state_dict)[:3]) + (" ..." if len(state_dict) > 3 else "")
        raise ValueError(f"{path} is a safetensors file without ssl_siamese metadata ({len(state_dict)} tensors: "
                         f"{keys}), so the architecture it belongs to is unknown. Build that module yourself and "
                         "call module.load_state_dict(safetensors.torch.load_file(path)), or export it with "
                         "ssl_siamese.export_pretrained.")
    return state_dict, metadata
