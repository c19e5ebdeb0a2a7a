"""Upload an exported folder (``export_pretrained``) to the Hugging Face Hub, when ``huggingface_hub`` is installed.

The folder is uploaded as it is: ``model.safetensors``, ``config.json`` and the model card ``README.md``
(plus ``backbone.onnx`` when ``recipes.export --format onnx`` wrote it there). For a timm architecture the
repository then loads with ``timm.create_model("hf-hub:<repo_id>", pretrained=True)``.

Example:
    >>> hub_files("out/simclr/exported_models/backbone")      # what would be uploaded, no network
    ['README.md', 'config.json', 'model.safetensors']
    >>> push_to_hub("out/simclr/exported_models/backbone", "me/simclr-resnet18-cifar10")  # needs a login
"""

from __future__ import annotations

from pathlib import Path

from ssl_siamese.export.pretrained_folder import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME

UPLOADED = (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME, "backbone.onnx")


def hub_files(folder: str | Path) -> list[str]:
    """The files of ``folder`` that :func:`push_to_hub` uploads (sorted).

    Raises:
        ValueError: the folder is not an export (no ``model.safetensors``, ``config.json`` or ``README.md``).
    """
    folder = Path(folder)
    missing = [name for name in (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME) if not (folder / name).is_file()]
    if missing:
        raise ValueError(f"{folder} is not an exported folder: {', '.join(missing)} missing. Write it with "
                         "ssl_siamese.export.export_pretrained or `python -m ssl_siamese.recipes.export "
                         "--format safetensors`.")
    return sorted(name for name in UPLOADED if (folder / name).is_file())


def push_to_hub(folder: str | Path, repo_id: str, private: bool = False, token: str | None = None,
                commit_message: str = "Add ssl_siamese backbone") -> str:
    """Create ``repo_id`` (a model repository) if needed and upload the export; return the commit URL.

    Raises:
        ValueError: not an exported folder, or ``huggingface_hub`` is not installed.
    """
    files = hub_files(folder)
    try:
        from huggingface_hub import HfApi
    except ImportError as error:
        raise ValueError("push_to_hub needs huggingface_hub: pip install huggingface_hub, then "
                         "`huggingface-cli login` (or pass token=...).") from error
    api = HfApi(token=token, library_name="ssl_siamese")
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), allow_patterns=files,
                               commit_message=commit_message)
    return str(getattr(commit, "commit_url", commit))
