"""Embed every image of a folder with an exported backbone and write the embeddings to ``.npz``.

    python -m ssl_siamese.recipes.embed --backbone out/simclr/exported_models/backbone.pt \
        --data ~/photos --out embeddings.npz [--batch_size 256] [--device cuda]

Images are found recursively (hidden files skipped), decoded at the backbone's input size (shorter side
resized, centre crop) and preprocessed like its evaluation views. Unreadable files are skipped and
counted. The ``.npz`` holds ``paths`` (relative to the folder, POSIX), ``embeddings`` ``(N, D)`` float32
(not normalised) and, for an ImageFolder layout (every image in a class subfolder), ``labels`` and
``classes``. Load it with ``np.load``, or as a search index with ``EmbeddingIndex.load("embeddings.npz")``
(the paths become the index's ids).

Example:
    >>> summary = run_embed("backbone.pt", "photos/", "embeddings.npz")
    >>> summary["num_images"], summary["skipped"]
    (1200, 3)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssl_siamese.data import IMAGE_EXTENSIONS, _decode_all, _scan_folder
from ssl_siamese.embeddings import embed_images
from ssl_siamese.export import load_backbone

DEFAULT_IMAGE_SIZE = 64  # for exports that record no input size


def run_embed(backbone: str | Path, data: str | Path, out: str | Path = "embeddings.npz", batch_size: int = 256,
              device: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Embed the images under ``data`` with the backbone exported at ``backbone``; write ``out``.

    Returns ``out``, ``num_images``, ``feature_dim``, ``skipped`` (count of unreadable image files),
    ``skipped_paths`` and ``classes``.

    Raises:
        FileNotFoundError: no exported backbone at ``backbone``, no folder ``data``, or no images in it.
        ValueError: an unreadable export, or no readable image.
    """
    backbone_path, root = Path(backbone), Path(data).expanduser().resolve()
    if not backbone_path.is_file():
        raise FileNotFoundError(f"No exported backbone at {backbone_path.resolve()}; export one with "
                                "ssl_siamese.export_backbone, or train with a pretraining recipe "
                                "(it writes <out>/exported_models/backbone.pt).")
    if not root.is_dir():
        raise FileNotFoundError(f"Image folder {root} does not exist.")
    model, _, metadata = load_backbone(backbone_path)
    files, _ = _scan_folder(root)
    if not files:
        raise FileNotFoundError(f"No image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {root}.")

    size = int(metadata.get("image_size") or DEFAULT_IMAGE_SIZE)
    decoded = _decode_all(files, size, None)
    kept = [(path.relative_to(root), array) for path, array in zip(files, decoded) if array is not None]
    skipped = [path.relative_to(root).as_posix() for path, array in zip(files, decoded) if array is None]
    if skipped:
        print(f"ssl_siamese.recipes.embed: skipped {len(skipped)} unreadable image file(s), e.g. "
              f"{', '.join(skipped[:3])}", file=sys.stderr)
    if not kept:
        raise ValueError(f"None of the {len(files)} image files under {root} could be read.")

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
            "skipped": len(skipped), "skipped_paths": skipped, "classes": classes}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ssl_siamese.recipes.embed",
                                     description="Embed a folder of images with an exported backbone.")
    parser.add_argument("--backbone", required=True, help="Exported backbone (.pt) from export_backbone.")
    parser.add_argument("--data", required=True, help="Folder of images (searched recursively).")
    parser.add_argument("--out", default="embeddings.npz", help="Output .npz file.")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--device", default=None, help="Default: cuda when available, else cpu.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command-line entry point; user errors exit with a one-line message."""
    args = parse_args(argv)
    try:
        summary = run_embed(args.backbone, args.data, args.out, args.batch_size, args.device)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"ssl_siamese.recipes.embed: error: {error}")
    print(f"Embedded {summary['num_images']} images ({summary['feature_dim']}-d, {summary['skipped']} skipped) "
          f"-> {summary['out']}")
    return summary


if __name__ == "__main__":
    main()
