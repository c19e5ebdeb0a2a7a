"""Embed images (a folder, files or a glob pattern) with an exported backbone and write the embeddings to ``.npz``.

    python -m ssl_siamese.recipes.embed --backbone out/simclr/exported_models/backbone.pt \
        --data ~/photos --out embeddings.npz [--batch_size 256] [--device cuda]
    python -m ssl_siamese.recipes.embed --backbone backbone.pt --data one.png two.jpg 'more/*.webp'
    python -m ssl_siamese.recipes.embed --backbone out/text_siamese/exported_models/text_encoder \
        --data sentences.txt --out texts.npz          # texts: one per line, or --data x.jsonl --field text

``--backbone`` (alias ``--ckpt``) is anything ``load_backbone`` reads: an exported ``.pt`` file or folder (or its
``model.safetensors``), a Lightning checkpoint, or a W&B model artifact (``wandb:ENTITY/PROJECT/NAME:ALIAS``).
``--data`` takes folders (searched recursively, hidden files skipped), image files and glob patterns
(``*``, ``?``, ``[...]``, ``**`` for any depth; quote them so the shell leaves them to the recipe). Images
are decoded as training decodes folders (:mod:`ssl_siamese.data.images`: shorter side resized to the
backbone's input size, centre crop, transparency on white) and preprocessed like its evaluation views.
Files that are not readable images (an SVG, notes, a broken file) are skipped and counted, as training
counts them. The ``.npz`` holds ``paths`` (relative to the folder given, or to the files' common folder;
POSIX), ``embeddings`` ``(N, D)`` float32 (not normalised) and, when every image lies in a class
subfolder (ImageFolder layout), ``labels`` and ``classes``. Load it with ``np.load``, or as a search index
with ``EmbeddingIndex.load("embeddings.npz")`` (the paths become the index's ids).

Texts: ``--data`` one ``.txt`` file (a text per line) or ``.jsonl`` file (``--field``, optional
``--id_field``) and ``--backbone`` a text model (the text_siamese recipe's exported folder or checkpoint):
:func:`ssl_siamese.text.embed_texts.run_embed_text` writes ``embeddings``, ``ids`` (the texts) and ``lines``.

Example:
    >>> summary = run_embed("backbone.pt", "photos/", "embeddings.npz")
    >>> summary["num_images"], summary["skipped"]
    (1200, 3)
"""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jsonargparse import Namespace

from ssl_siamese.cli.arguments import parse_args as parse_checked
from ssl_siamese.cli.recipe import Flag, function_parser, recipe_main
from ssl_siamese.search.embeddings import embed_images
from ssl_siamese.export import load_backbone
from ssl_siamese.data.images import IMAGE_EXTENSIONS, decode_files, list_image_files, unreadable_reasons
from ssl_siamese.recipes._backbone import BACKBONE_FORMS, backbone_path
from ssl_siamese.text.embed_texts import is_text_file, run_embed_text

DEFAULT_IMAGE_SIZE = 64  # for exports that record no input size
GLOB_CHARACTERS = frozenset("*?[")


def _missing(path: Path) -> FileNotFoundError:
    where = (f"its folder {path.parent} does not exist either" if not path.parent.is_dir()
             else f"no file or folder of that name in {path.parent}")
    return FileNotFoundError(f"{path} does not exist ({where}). --data takes image folders, image files and glob "
                             "patterns such as 'photos/*.png'.")


def collect_images(data: str | Path | Sequence[str | Path]) -> tuple[Path, list[Path], list[Path]]:
    """``(root, image files, skipped files)`` for folders, files and glob patterns, each list sorted.

    ``root`` is the folder given (one folder) or the deepest folder holding every file; the ``.npz`` paths are
    relative to it. Files without an image extension (``images.IMAGE_EXTENSIONS``) are skipped, as in training.

    Raises:
        FileNotFoundError: a path that does not exist, a pattern that matches nothing, or no image file at all.
    """
    entries = [data] if isinstance(data, (str, Path)) else list(data)
    if not entries:
        raise FileNotFoundError("No images given: --data takes folders, image files and glob patterns.")
    files, skipped, folders = set(), set(), []
    for entry in entries:
        path = Path(entry).expanduser()
        if not path.exists() and GLOB_CHARACTERS & set(str(entry)):
            matches = sorted(Path(m) for m in glob.glob(os.path.expanduser(str(entry)), recursive=True))
            if not matches:
                raise FileNotFoundError(f"The pattern {entry} matches no file.")
        elif not path.exists():
            raise _missing(Path(os.path.abspath(path)))
        else:
            matches = [path]
        for match in (Path(os.path.abspath(m)) for m in matches):  # absolute, links kept as named
            if match.is_dir():
                images, others = list_image_files(match)
                files.update(images)
                skipped.update(others)
                folders.append(match)
            else:
                (files if match.suffix.lower() in IMAGE_EXTENSIONS else skipped).add(match)
    if not files:
        found = f" (only {len(skipped)} other files, e.g. {sorted(skipped)[0].name})" if skipped else ""
        raise FileNotFoundError(f"No image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in "
                                f"{', '.join(map(str, entries))}{found}.")
    if len(entries) == 1 and folders == [Path(os.path.abspath(Path(entries[0]).expanduser()))]:
        root = folders[0]  # one folder: paths relative to it, its subfolders the classes
    else:
        root = Path(os.path.commonpath([path.parent for path in files | skipped] + folders))
    return root, sorted(files), sorted(skipped)


def run_embed(backbone: str | Path, data: str | Path | Sequence[str | Path], out: str | Path = "embeddings.npz",
              batch_size: int = 256, device: str | None = None, field: str = "text", id_field: str | None = None,
              progress: bool = True) -> dict[str, Any]:
    """Embed the images of ``data`` (folders, files, glob patterns) with the backbone at ``backbone``; write ``out``.

    Returns ``out``, ``num_images``, ``feature_dim``, ``skipped`` (count of files skipped: not images, or
    unreadable), ``skipped_paths``, ``root`` (what the paths are relative to) and ``classes``. One ``.txt`` or
    ``.jsonl`` file in ``data`` holds texts instead: they are embedded with the text model at ``backbone``
    (:func:`ssl_siamese.text.embed_texts.run_embed_text`; returns ``out``, ``num_texts``, ``feature_dim``).

    Args:
        backbone: An exported backbone, a Lightning checkpoint or a W&B model artifact; for texts, the
            text_siamese recipe's exported folder or checkpoint.
        data: Image folders (searched recursively), image files, or quoted glob patterns; or one .txt/.jsonl file
            of texts.
        out: Output .npz file.
        batch_size: Images (or texts) per forward pass.
        device: Default: cuda when available, else cpu.
        field: Texts in a .jsonl --data file: the field holding the text.
        id_field: Texts in a .jsonl --data file: a field to use as ids (default: the text).
        progress: Show a progress bar.

    Raises:
        FileNotFoundError: nothing at ``backbone``, a ``data`` path that does not exist, or no images.
        ValueError: an unreadable backbone, or no readable image.
    """
    entries = [data] if isinstance(data, (str, Path)) else list(data)
    if len(entries) == 1 and is_text_file(entries[0]):
        return run_embed_text(backbone_path(backbone), entries[0], out, field, id_field, batch_size, device, progress)
    path = backbone_path(backbone)
    root, files, others = collect_images(data)
    model, _, metadata = load_backbone(path)

    size = int(metadata.get("image_size") or DEFAULT_IMAGE_SIZE)
    decoded = decode_files(files, size)  # the decoder training uses for folders
    kept = [(path.relative_to(root), array) for path, array in zip(files, decoded) if array is not None]
    skipped = sorted([path for path, array in zip(files, decoded) if array is None] + others)
    skipped_names = [path.relative_to(root).as_posix() for path in skipped]
    if skipped:
        print(f"ssl_siamese.recipes.embed: skipped {len(skipped)} files that are not readable images (first few: "
              f"{', '.join(skipped_names[:5])}); the image types read are {' '.join(sorted(IMAGE_EXTENSIONS))}",
              file=sys.stderr)
    if not kept:
        raise ValueError(f"None of the {len(files)} image files under {root} could be read. "
                         + " ".join(f"{reason}." for reason in unreadable_reasons(files, size))
                         + (" ..." if len(files) > 3 else ""))

    images = torch.from_numpy(np.stack([array for _, array in kept]))
    embeddings = embed_images(model, images, {**metadata, "image_size": size}, batch_size, device, progress)
    arrays: dict[str, np.ndarray] = {"paths": np.asarray([path.as_posix() for path, _ in kept], dtype=str),
                                     "embeddings": embeddings.numpy()}
    classes: list[str] = []
    if all(len(path.parts) > 1 for path, _ in kept):  # ImageFolder layout: the first folder is the class
        classes = sorted({path.parts[0] for path, _ in kept})
        arrays["labels"] = np.asarray([classes.index(path.parts[0]) for path, _ in kept], dtype=np.int64)
        arrays["classes"] = np.asarray(classes, dtype=str)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as handle:  # a handle keeps the name as given (numpy would append .npz)
        np.savez(handle, **arrays)
    return {"out": str(out), "num_images": len(kept), "feature_dim": int(embeddings.shape[1]),
            "skipped": len(skipped), "skipped_paths": skipped_names, "root": str(root), "classes": classes}


PROG = "python -m ssl_siamese.recipes.embed"
DESCRIPTION = "Embed images (folders, files, glob patterns) with a backbone."
FLAGS = {
    "backbone": Flag(aliases=("--ckpt",), metavar="PATH", help=f"{BACKBONE_FORMS[0].upper()}{BACKBONE_FORMS[1:]}; "
                     "for texts, the text_siamese recipe's exported folder or checkpoint."),
    "data": Flag(nargs="+", type=str),
}


def parse_args(argv: list[str] | None = None) -> Namespace:
    """The options of ``run_embed``, as flags (``--ckpt`` is ``--backbone``)."""
    return parse_checked(function_parser(run_embed, PROG, DESCRIPTION, FLAGS), argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command-line entry point; user errors exit with a one-line message."""
    summary = recipe_main(run_embed, PROG, DESCRIPTION, FLAGS, argv)
    if "num_texts" in summary:
        print(f"Embedded {summary['num_texts']} texts ({summary['feature_dim']}-d) -> {summary['out']}")
    else:
        print(f"Embedded {summary['num_images']} images ({summary['feature_dim']}-d, {summary['skipped']} skipped) "
              f"-> {summary['out']}")
    return summary


if __name__ == "__main__":
    main()
