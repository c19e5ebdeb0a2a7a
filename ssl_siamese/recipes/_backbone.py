"""The ``--backbone`` option (alias ``--ckpt``) of the recipes that use a trained backbone: one help, one check.

``embed``, ``explore``, ``linear_probe`` and ``finetune`` take whatever :func:`ssl_siamese.load_backbone` reads
(an exported ``.pt`` file, an exported folder, that folder's ``model.safetensors``, a Lightning ``.ckpt``) and a
W&B model artifact, and say the same thing when the path holds nothing. ``load_backbone`` itself says what is
wrong with a file that exists. (A module name starting with ``_`` is not listed as a recipe.)

Example:
    >>> add_backbone_option(parser)                 # --backbone PATH / --ckpt PATH, required
    >>> path = backbone_path(args.backbone)         # a local Path; wandb: artifacts are downloaded first
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

BACKBONE_FORMS = ("an exported backbone (the .pt file or the folder a pretraining recipe writes to "
                  "<out>/exported_models/, or that folder's model.safetensors), a Lightning checkpoint (.ckpt), "
                  "or a W&B model artifact wandb:ENTITY/PROJECT/NAME:ALIAS")


def add_backbone_option(parser: Any, dest: str = "backbone", more: str = "", required: bool = True) -> None:
    """Add ``--backbone PATH`` (alias ``--ckpt``), stored in ``dest``, to a parser or argument group; ``more``
    ends its help."""
    parser.add_argument("--backbone", "--ckpt", dest=dest, required=required, metavar="PATH",
                        help=f"{BACKBONE_FORMS[0].upper()}{BACKBONE_FORMS[1:]}{more}.")


def backbone_path(backbone: str | Path) -> Path:
    """The local file or folder that ``--backbone`` names: a ``wandb:`` artifact downloaded, any other path checked.

    Raises:
        FileNotFoundError: nothing at that path; the message lists what ``--backbone`` takes.
        ValueError: a malformed ``wandb:`` reference, or W&B credentials missing.
    """
    if str(backbone).startswith("wandb:"):
        from ssl_siamese.cli.loggers import fetch_wandb_artifact  # imports Lightning and W&B: only for an artifact

        return fetch_wandb_artifact(str(backbone))
    path = Path(backbone).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"No exported backbone or checkpoint at {path.resolve()}. --backbone takes "
                                f"{BACKBONE_FORMS}.")
    return path
