"""Everything that leaves training as a file: checkpoints, backbone exports, pretrained folders, runtimes, the Hub.

``backbone``: ``export_backbone`` / ``export_pretrained`` write a trained method's backbone, ``load_backbone``
reads it back (or a checkpoint) as a frozen feature extractor with its preprocessing. ``checkpoints``: reading
checkpoints weights-only with clear errors (``read_checkpoint``), and ``checkpoint_io.SafeCheckpointIO``, the
atomic Lightning plugin. ``pretrained_folder``: the ``model.safetensors`` + ``config.json`` + model card
(``model_card``) folder other tools load. ``runtime``: ONNX, TorchScript and ``torch.export`` files;
``hub``: uploading a folder to the Hugging Face Hub. The names below are imported on first use, so reading a
checkpoint imports no Lightning and no model code.

Example:
    >>> from ssl_siamese.export import export_backbone, load_backbone
    >>> export_backbone(model, "out/simclr/exported_models/backbone.pt", data="cifar10")
    >>> backbone, transform, metadata = load_backbone("out/simclr/exported_models/backbone.pt")
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ssl_siamese._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(["FORMAT", "LoadedBackbone", "export_backbone", "export_pretrained", "load_backbone",
                     "backbone_metadata", "backbone_options", "rebuild_arguments", "export_versions"],
                    "ssl_siamese.export.backbone"),
    **dict.fromkeys(["CheckpointError", "read_checkpoint", "check_resume_checkpoint", "bare_state_dict",
                     "EXPORT_FORMAT"], "ssl_siamese.export.checkpoints"),
    "SafeCheckpointIO": "ssl_siamese.export.checkpoint_io",
    **dict.fromkeys(["write_pretrained_folder", "read_pretrained", "looks_like_safetensors"],
                    "ssl_siamese.export.pretrained_folder"),
    **dict.fromkeys(["export_onnx", "export_torchscript", "export_program", "run_exported"],
                    "ssl_siamese.export.runtime"),
    "push_to_hub": "ssl_siamese.export.hub",
}

if TYPE_CHECKING:  # the same names, eagerly, for type checkers and IDEs
    from ssl_siamese.export.backbone import (
        FORMAT,
        LoadedBackbone,
        backbone_metadata,
        backbone_options,
        export_backbone,
        export_pretrained,
        export_versions,
        load_backbone,
        rebuild_arguments,
    )
    from ssl_siamese.export.checkpoint_io import SafeCheckpointIO
    from ssl_siamese.export.checkpoints import (
        EXPORT_FORMAT,
        CheckpointError,
        bare_state_dict,
        check_resume_checkpoint,
        read_checkpoint,
    )
    from ssl_siamese.export.hub import push_to_hub
    from ssl_siamese.export.pretrained_folder import looks_like_safetensors, read_pretrained, write_pretrained_folder
    from ssl_siamese.export.runtime import export_onnx, export_program, export_torchscript, run_exported

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = list(_EXPORTS)
