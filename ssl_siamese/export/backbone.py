"""Export a trained backbone on its own, and load it back as a feature extractor.

The file holds only tensors and plain metadata, so it loads with ``torch.load(weights_only=True)``:
opening a file never runs code from it. For torchvision ResNets the weights load into
``torchvision.models.resnet18()`` (with ``fc = Identity`` and, when ``metadata["cifar_stem"]``, the
3x3 stem) with ``strict=True``. ``load_backbone`` also reads a Lightning checkpoint of any registered method
(``ssl_siamese.methods.registry``; weights-only as well) and returns the backbone inside it.

``export_pretrained`` writes the same weights and metadata as a folder other tools load
(``ssl_siamese.export.pretrained_folder``): ``model.safetensors`` (metadata in its header; plain torchvision and
timm load it), ``config.json`` and a model card ``README.md``. ``load_backbone`` reads that folder or its
``model.safetensors`` as well.

Example:
    >>> export_backbone(model, "out/simclr/exported_models/backbone.pt", data="cifar10", epochs=200)
    >>> export_pretrained(model, "out/simclr/exported_models/backbone", data="cifar10", metrics={"knn_top1": 0.83})
    >>> backbone, transform, metadata = load_backbone("out/simclr/exported_models/backbone")  # or the .pt
    >>> features = backbone(transform(images_uint8))          # (B, 512), eval mode
"""

from __future__ import annotations

import inspect
import os
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from ssl_siamese.backbones import TORCHVISION_RESNETS, build_backbone, is_backbone_name, vit_pooling
from ssl_siamese.export.checkpoints import EXPORT_FORMAT, bare_state_dict, read_checkpoint
from ssl_siamese.export.pretrained_folder import looks_like_safetensors, read_pretrained
from ssl_siamese.methods.registry import METHODS, method_class
from ssl_siamese.views.preprocess import RESIZE, Preprocess, preprocessing

FORMAT = EXPORT_FORMAT


class LoadedBackbone(NamedTuple):
    """What ``load_backbone`` returns: the feature extractor, its preprocessing and the metadata.

    ``transform`` maps uint8 images ``(B, C, H, W)`` to the backbone's input with no randomness: training's
    evaluation geometry (shorter side to the input size, centre crop: metadata ``"resize"``, which exports
    older than that field get too) and normalisation; it is ``None`` when the metadata records no input size
    or normalisation.
    """

    backbone: nn.Module
    transform: Preprocess | None
    metadata: dict[str, Any]


def export_backbone(model: nn.Module, path: str | Path, head: nn.Module | None = None, **metadata: Any) -> Path:
    """Write ``model.backbone``'s weights and metadata to ``path`` atomically; return the path.

    ``model`` is a method (``SimCLR``, ``MoCo``, ``SimSiam``). Metadata records the architecture, the
    stem, feature dimension, input size and normalisation, the method, plus any ``metadata`` given (given
    keys win over the recorded ones; None values are left out). The recipes give ``data`` and ``data_dir``,
    the data it was trained on, which ``linear_probe`` and ``finetune`` evaluate on by default. ``head``
    (a fine-tuned classifier's linear layer) is saved beside the backbone under ``"head"``. A
    backbone given as a user module has ``architecture`` None and its class name in ``module_class``:
    ``load_backbone`` cannot rebuild it, the user loads the ``state_dict`` into their own module. The
    backbone's constructor arguments (``backbone_kwargs``, e.g. a ViT's ``img_size`` and ``patch_size``) and a
    ViT's ``pooling`` (``token`` or ``mean``) are recorded too, so that ``load_backbone`` rebuilds the same model.
    """
    info = backbone_metadata(model, **metadata)
    state_dict = {key: value.detach().cpu().clone() for key, value in model.backbone.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as handle:
        payload = {"state_dict": state_dict, "metadata": info}
        if head is not None:
            payload["head"] = {key: value.detach().cpu().clone() for key, value in head.state_dict().items()}
        torch.save(payload, handle)
    os.replace(handle.name, path)
    return path


def export_pretrained(model: nn.Module, folder: str | Path, metrics: dict[str, float] | None = None,
                      **metadata: Any) -> Path:
    """Write ``model.backbone`` as ``folder/model.safetensors`` + ``config.json`` + ``README.md``; return ``folder``.

    The metadata is ``export_backbone``'s (the same keywords), plus ``metrics`` (e.g. ``{"knn_top1": 0.83}``,
    shown in the model card). The weights' keys are those of the architecture's own library, so
    ``torchvision.models.resnet18()`` (``fc = Identity``) loads them with ``strict=True`` and ``timm`` with
    ``pretrained_cfg_overlay=dict(file=folder / "model.safetensors")``.

    Example:
        >>> export_pretrained(model, "out/simclr/exported_models/backbone", data="cifar10", epochs=200)
        >>> timm.create_model("local-dir:out/simclr/exported_models/backbone", pretrained=True)  # timm backbones
    """
    from ssl_siamese.export.pretrained_folder import write_pretrained_folder

    clean = {key: float(value) for key, value in (metrics or {}).items() if value is not None}
    return write_pretrained_folder(model.backbone, backbone_metadata(model, metrics=clean or None, **metadata), folder)


def backbone_metadata(model: nn.Module, **metadata: Any) -> dict[str, Any]:
    """The metadata an export records for ``model`` (a method): see ``export_backbone``."""
    hparams = dict(getattr(model, "hparams", {}))
    arch = hparams.get("backbone")
    info = {
        "format": FORMAT,
        "architecture": arch if isinstance(arch, str) else None,  # None: a user module, not rebuildable
        "module_class": type(model.backbone).__name__,
        "cifar_stem": bool(hparams.get("cifar_stem", False)) and arch in TORCHVISION_RESNETS,  # only ResNets have one
        "feature_dim": int(model.feature_dim),
        "image_size": int(hparams.get("view_size", 0)),
        "mean": [float(v) for v in hparams.get("mean", ())],
        "std": [float(v) for v in hparams.get("std", ())],
        "resize": RESIZE,  # training's evaluation geometry, which load_backbone's transform applies
        "method": type(model).__name__,
        **backbone_options(model.backbone, hparams.get("backbone_kwargs")),
        **export_versions(arch),
        **{key: value for key, value in metadata.items() if value is not None},
    }
    return info


def backbone_options(backbone: nn.Module, kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """``backbone_kwargs`` (when any were given) and a ViT's ``pooling``: what an export records of them."""
    options: dict[str, Any] = {"backbone_kwargs": dict(kwargs)} if kwargs else {}
    pooling = vit_pooling(backbone)
    return {**options, "pooling": pooling} if pooling else options


def rebuild_arguments(metadata: dict[str, Any]) -> dict[str, Any]:
    """``build_backbone``'s keyword arguments from an export's metadata: its ``backbone_kwargs``, and its
    recorded ``pooling`` unless those name one already (``pooling`` or timm's ``global_pool``)."""
    kwargs = dict(metadata.get("backbone_kwargs") or {})
    if metadata.get("pooling") in ("token", "mean") and not {"pooling", "global_pool"} & set(kwargs):
        kwargs["pooling"] = metadata["pooling"]
    return kwargs


def export_versions(arch: Any) -> dict[str, str]:
    """The library, torch and (for a timm architecture) timm versions that wrote an export."""
    from ssl_siamese import __version__

    versions = {"library": "ssl_siamese", "library_version": __version__, "torch_version": str(torch.__version__)}
    if isinstance(arch, str) and arch.startswith("timm/"):
        import timm

        versions["timm_version"] = str(timm.__version__)
    return versions


def load_backbone(path: str | Path, trainable: bool = False) -> LoadedBackbone:
    """``(backbone in eval mode, transform, metadata)`` from an export or a Lightning checkpoint.

    ``path``: an ``export_backbone`` file (``.pt``), an ``export_pretrained`` folder or its
    ``model.safetensors``, or a Lightning checkpoint (``.ckpt``).

    The backbone is a frozen feature extractor: eval mode and ``requires_grad=False`` on its parameters, so
    ``backbone(transform(images))`` gives plain features (``.numpy()`` works, no graph is kept). To fine-tune
    it, pass ``trainable=True`` or unfreeze it yourself: ``backbone.requires_grad_(True).train()``.

    Weights-only loading: a file holding pickled objects is refused, never unpickled. A checkpoint is rebuilt
    from its ``hyper_parameters`` with the method it records (``checkpoint["ssl_siamese_method"]``, a name of
    ``ssl_siamese.methods.registry.METHODS``) and its ``state_dict`` loaded strictly; a checkpoint written
    before methods were recorded, with the first registered method whose ``state_dict`` loads strictly.

    Example:
        >>> backbone, transform, metadata = load_backbone("out/simclr/checkpoints/last.ckpt")
        >>> features = backbone(transform(images_uint8))

    Raises:
        FileNotFoundError: no such file.
        ValueError: a truncated or unreadable file, pickled objects, a file that is neither an export nor
            a checkpoint of our methods, weights that do not fit the architecture they name, or the
            weights of a user module (rebuild that module yourself and load its ``state_dict``).
        ImportError: the checkpoint's method needs an extra that is not installed (MAE: timm); the message
            says what to install.
    """
    path = Path(path)
    if path.is_dir() or looks_like_safetensors(path):
        state_dict, metadata = read_pretrained(path)
        payload = {"state_dict": state_dict, "metadata": metadata}
    elif not path.is_file():
        raise FileNotFoundError(f"No exported backbone or checkpoint at {path.resolve()}")
    else:
        payload = read_checkpoint(path)
    if isinstance(payload, dict) and isinstance(payload.get("metadata"), dict) \
            and payload["metadata"].get("format") == FORMAT:
        backbone, metadata = _from_export(payload, path)
    elif isinstance(payload, dict) and "state_dict" in payload and "hyper_parameters" in payload:
        backbone, metadata = _from_checkpoint(payload, path)
    else:
        raise ValueError(f"{path} is not an ssl_siamese backbone export (expected format {FORMAT}) nor a "
                         f"Lightning checkpoint with 'state_dict' and 'hyper_parameters': it {_describe(payload)}")
    has_preprocessing = metadata.get("image_size") and metadata.get("mean") and metadata.get("std")
    transform = preprocessing(metadata) if has_preprocessing else None
    return LoadedBackbone(backbone.eval().requires_grad_(trainable), transform, metadata)


def _describe(payload: Any) -> str:
    """What a loaded file that is neither an export nor a checkpoint holds, and how to use it."""
    bare = bare_state_dict(payload)
    if bare:
        return (f"is {bare} without metadata, so the architecture it belongs to is unknown. Build that module "
                "yourself and call module.load_state_dict(torch.load(path, weights_only=True)), or write the file "
                "with ssl_siamese.export_backbone.")
    if isinstance(payload, dict):
        return f"holds a dict with keys {', '.join(map(str, list(payload)[:5]))}."
    return f"holds a {type(payload).__name__}."


def _from_export(payload: dict[str, Any], path: Path) -> tuple[nn.Module, dict[str, Any]]:
    metadata = dict(payload["metadata"])
    arch = metadata.get("architecture")
    if not is_backbone_name(arch):
        module = metadata.get("module_class") or arch or "unknown"
        weights = f"torch.load({str(path)!r}, weights_only=True)['state_dict']"
        if path.is_dir() or looks_like_safetensors(path):
            weights = f"safetensors.torch.load_file({str(path / 'model.safetensors' if path.is_dir() else path)!r})"
        raise ValueError(
            f"{path} holds the weights of a user module ({module}), which ssl_siamese cannot rebuild. "
            f"Build the module yourself and load the weights: module.load_state_dict({weights})."
        )
    backbone, _ = build_backbone(arch, metadata.get("cifar_stem", False), **rebuild_arguments(metadata))
    try:
        backbone.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as error:
        raise ValueError(
            f"The weights in {path} do not fit architecture {arch!r} "
            f"(cifar_stem={metadata.get('cifar_stem')}, {rebuild_arguments(metadata)}): {str(error)[:300]}"
        ) from error
    return backbone, metadata


def _constructor_arguments(cls: type) -> set[str]:
    """The keyword arguments ``cls(...)`` accepts, following ``**kwargs`` up to the base classes."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        parameters = list(inspect.signature(klass.__init__).parameters.values())[1:]
        names.update(p.name for p in parameters if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL))
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return names


def _rebuild(method: type[nn.Module], hparams: dict[str, Any], state_dict: dict[str, Any]) -> nn.Module:
    """``method`` built from a checkpoint's hyper-parameters (those it accepts), its weights loaded strictly."""
    accepted = _constructor_arguments(method)
    model = method(**{key: value for key, value in hparams.items() if key in accepted})
    model.load_state_dict(state_dict, strict=True)
    return model


_USER_BACKBONE = ("A checkpoint of a method trained on a user backbone module cannot be rebuilt here: export its "
                 "backbone with ssl_siamese.export_backbone instead.")


def _recorded_method(payload: dict[str, Any], hparams: dict[str, Any], path: Path) -> nn.Module:
    """The checkpoint's method rebuilt: the one it records, or (older checkpoints) the first registered that fits."""
    recorded = payload.get("ssl_siamese_method")
    if recorded is None:  # written before SiameseModule recorded its class: try each registered method in turn
        for name in METHODS:
            try:
                return _rebuild(method_class(name), hparams, payload["state_dict"])
            except (ImportError, TypeError, ValueError, RuntimeError):
                continue
        raise ValueError(f"The checkpoint {path} records no method and does not match any of {', '.join(METHODS)} "
                         f"(hyper-parameters {sorted(hparams)}). {_USER_BACKBONE}")
    if recorded not in METHODS:
        raise ValueError(f"The checkpoint {path} was written by {recorded}, which is not a registered method "
                         f"({', '.join(METHODS)}): rebuild it with {recorded}.load_from_checkpoint(path) and export "
                         "its backbone with ssl_siamese.export_backbone (or register the method in "
                         "ssl_siamese/methods/registry.py).")
    try:
        return _rebuild(method_class(recorded), hparams, payload["state_dict"])
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"The checkpoint {path} of {recorded} does not rebuild from its hyper-parameters "
                         f"{sorted(hparams)}: {str(error)[:300]}. {_USER_BACKBONE}") from error


def _from_checkpoint(payload: dict[str, Any], path: Path) -> tuple[nn.Module, dict[str, Any]]:
    hparams = {key: value for key, value in dict(payload["hyper_parameters"]).items() if not key.startswith("_")}
    hparams.pop("pretrained", None)  # the checkpoint's weights replace any initial backbone file
    model = _recorded_method(payload, hparams, path)
    metadata = {"method": type(model).__name__, "architecture": hparams.get("backbone"),
                "cifar_stem": bool(hparams.get("cifar_stem", False)) and hparams.get("backbone") in TORCHVISION_RESNETS,
                "feature_dim": int(model.feature_dim),
                **backbone_options(model.backbone, hparams.get("backbone_kwargs")),
                "image_size": int(hparams.get("view_size", 0)), "mean": [float(v) for v in hparams.get("mean", ())],
                "std": [float(v) for v in hparams.get("std", ())], "epochs": payload.get("epoch"),
                "steps": payload.get("global_step")}
    data = payload.get("datamodule_hyper_parameters") or {}  # saved by Lightning for a datamodule's hparams
    if data.get("dataset"):
        metadata.update(data=data["dataset"], data_dir=data.get("data_dir"), data_seed=data.get("seed"),
                        val_fraction=data.get("val_fraction"))  # the held-out rule linear_probe reproduces
    return model.backbone, metadata
