"""Checkpoint files that survive a kill mid-save and never run code when loaded.

``SafeCheckpointIO`` is the recipes' Lightning checkpoint plugin. Writing: the checkpoint goes to a
temporary file in the SAME folder, is flushed to disk (fsync), then renamed over the target with
``os.replace``, so a kill at any moment leaves either the previous file or the new one, both whole.
(Lightning's own writer stages its temporary file in the system temp folder; on a cluster that is another
filesystem, where the final move is a copy and not atomic.) Reading: always ``weights_only=True``, so a
checkpoint from an untrusted source cannot execute code. A file that cannot be used is named for what it
is (empty, text, an image, random bytes, truncated, a plain pickle, pickled objects, an exported backbone
given to resume, a bare state_dict) with what to do instead.

Example:
    >>> trainer = pl.Trainer(plugins=[SafeCheckpointIO()], callbacks=[ModelCheckpoint(save_last=True)])
    >>> check_resume_checkpoint(model, "out/simclr/checkpoints/last.ckpt")  # before fit(ckpt_path=...)
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ssl_siamese._lazy import lazy_exports

# SafeCheckpointIO (a Lightning plugin) is imported on first use, so reading a checkpoint or an exported
# backbone (load_backbone, the embed recipe) does not import Lightning.
__getattr__, __dir__ = lazy_exports(__name__, {"SafeCheckpointIO": "ssl_siamese.export.checkpoint_io"})


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: not a checkpoint, truncated, unsafe, or of another model."""


def _is_local(path: str | Path) -> bool:
    return "://" not in str(path) or str(path).startswith("file://")


_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C  # the first pickle of a torch.save file in the pre-1.6 format
_SIGNATURES = (  # leading bytes of formats users hand over by mistake: (magic, what the file is)
    (b"\x89PNG\r\n\x1a\n", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
    (b"II*\x00", "a TIFF image"), (b"MM\x00*", "a TIFF image"),
    (b"\x93NUMPY", "a NumPy array (.npy; read it with numpy.load)"), (b"\x1f\x8b", "a gzip-compressed file"),
    (b"%PDF", "a PDF document"), (b"\x89HDF\r\n\x1a\n", "an HDF5 file (e.g. a Keras .h5 model)"),
    (b"\x7fELF", "an executable program"),
)
_EXPECTED = ("Expected a file written by torch.save: a training checkpoint (<out>/checkpoints/last.ckpt) or an "
             "exported backbone (<out>/exported_models/backbone.pt).")


def _sniff(head: bytes) -> str | None:
    """What a file is from its first bytes, when that is not one of torch's formats (a zip or a pickle)."""
    if not head:
        return "empty (0 bytes): nothing was written to it, e.g. the save was killed before it started"
    if head.startswith(_ZIP_MAGIC) or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")):
        return None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "a WebP image"
    if head[:2] == b"BM" and head[6:10] == bytes(4):  # "BM", file size, four reserved zero bytes
        return "a BMP image"
    for magic, kind in _SIGNATURES:
        if head.startswith(magic):
            return kind
    if len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000:
        return "a safetensors file (read it with safetensors.torch.load_file)"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as error:  # a multi-byte character cut at the end of the sample is still text
        text = head[: error.start].decode("utf-8") if error.start > len(head) - 4 else ""
    if text and all(c.isprintable() or c in "\t\r\n\f" for c in text):
        first = " ".join(text.split())[:60]
        return f"a text file (it begins {first!r})"
    return (f"random or damaged data: its content matches no file format (first bytes {head[:8].hex(' ')}), "
            "so it is neither a torch.save file nor an image, text or archive")


def _pickle_globals(data: bytes) -> list[str]:
    """The classes and functions a pickle names (GLOBAL / STACK_GLOBAL), read without running anything."""
    import pickletools

    names, strings = [], []
    try:
        for opcode, argument, _ in pickletools.genops(data):
            if opcode.name == "GLOBAL":
                names.append(str(argument).replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(argument, str) and "UNICODE" in opcode.name:
                strings.append(argument)
    except Exception:  # noqa: BLE001 - a damaged pickle: report what was read before the damage
        pass
    return list(dict.fromkeys(names))


def _refused_objects(names: list[str]) -> CheckpointError | None:
    if not names:
        return None
    return CheckpointError(
        f"holds pickled Python objects ({', '.join(names[:4])}{' ...' if len(names) > 4 else ''}) that weights-only "
        "loading refuses, because unpickling them could run code; it was not loaded. If you trust where the file "
        "came from, load it in your own code with torch.load(path, weights_only=False) and re-save only its "
        "tensors (e.g. torch.save(model.state_dict(), path)).")


def _diagnose(path: Path, error: BaseException) -> CheckpointError:
    """Why ``torch.load`` failed on a file that starts like a zip or a pickle."""
    with open(path, "rb") as file:
        head = file.read(8)
    if head.startswith(_ZIP_MAGIC):
        import zipfile

        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
                pickles = [name for name in names if name.endswith("/data.pkl") or name == "data.pkl"]
                if not pickles:
                    listing = ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")
                    return CheckpointError(f"is a zip archive, not a file written by torch.save (it holds {listing}). "
                                           + _EXPECTED)
                from torch.serialization import get_unsafe_globals_in_checkpoint

                refused = _refused_objects(get_unsafe_globals_in_checkpoint(path)) \
                    if isinstance(error, pickle.UnpicklingError) else None
                damaged = archive.testzip()
        except zipfile.BadZipFile:
            return CheckpointError(
                "is truncated: it starts as a torch.save zip archive but its end is missing (the save was "
                "interrupted, or the copy or download is incomplete). Use an earlier checkpoint or copy it again.")
        except Exception as failure:  # noqa: BLE001 - a member that cannot be read is damage as well
            return CheckpointError(f"is a damaged (truncated or corrupt) torch.save archive: {failure}")
        if refused is not None:
            return refused
        what = f"its member {damaged} fails its checksum" if damaged else f"{str(error).splitlines()[0][:200]}"
        return CheckpointError(f"is a damaged (truncated or corrupt) torch.save archive: {what}.")
    data = path.read_bytes()
    import pickletools

    try:
        first = next(iter(pickletools.genops(data)))
        is_torch = any(op.name in ("LONG1", "LONG4") and arg == _LEGACY_TORCH_MAGIC
                       for op, arg, _ in pickletools.genops(data))
    except Exception:  # noqa: BLE001 - not even one whole pickle
        first, is_torch = None, False
    if first is None:
        return CheckpointError(f"is not a readable pickle or checkpoint (truncated or corrupt): "
                               f"{str(error).splitlines()[0][:200]}")
    if not is_torch:
        names = _pickle_globals(data)
        objects = f" holding {', '.join(names[:4])}" if names else ""
        return CheckpointError(f"is a Python pickle{objects} written by pickle.dump, not torch.save; it was not "
                               "loaded (unpickling can run code). Save tensors with torch.save instead.")
    names = [name for name in _pickle_globals(data) if not name.startswith(("torch.", "collections.OrderedDict"))]
    return _refused_objects(names) or CheckpointError(
        f"is an old-format (pre-1.6) torch.save file that could not be read (truncated or corrupt?): "
        f"{str(error).splitlines()[0][:200]}")


def read_checkpoint(path: str | Path, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with errors that say what the file is, when it is not one.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: the file is empty, text, an image or another format, truncated, a plain pickle, or
            holds pickled objects that weights-only loading refuses; the message names which and what to do.
    """
    path = Path(str(path).removeprefix("file://"))
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint file not found: {path}" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        with open(path, "rb") as file:
            head = file.read(64)
    except OSError as error:
        raise CheckpointError(f"{path} cannot be read: {error.strerror or error}") from error
    kind = _sniff(head)
    if kind is not None:
        raise CheckpointError(f"{path} is not a PyTorch checkpoint: it is {kind}. {_EXPECTED}")
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of files it then refuses anyway
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch fails on wrong files in many ways (IndexError included)
        problem = _diagnose(path, error)
        raise CheckpointError(f"{path} {problem}") from error


EXPORT_FORMAT = "ssl_siamese.backbone/1"  # backbone.FORMAT; written here too so this module imports no model code


def bare_state_dict(payload: Any) -> str | None:
    """``"a bare state_dict (N tensors: a, b, c ...)"`` when ``payload`` is a plain name -> tensor dict, else None."""
    if not (isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values())):
        return None
    keys = ", ".join(map(str, list(payload)[:3])) + (" ..." if len(payload) > 3 else "")
    return f"a bare state_dict ({len(payload)} tensors: {keys})"


def _not_a_training_checkpoint(payload: Any) -> str | None:
    """Why ``payload`` (a loaded file) cannot be resumed from, or None for a Lightning checkpoint."""
    if isinstance(payload, dict) and isinstance(payload.get("metadata"), dict) \
            and payload["metadata"].get("format") == EXPORT_FORMAT:
        info = payload["metadata"]
        what = ", ".join(f"{key} {info[key]}" for key in ("architecture", "method", "data") if info.get(key))
        return (f"is an exported backbone, not a training checkpoint: it holds a backbone's weights ({what}) "
                "only, without the heads, optimizer and loop state that --ckpt_path resumes. To resume training, "
                "pass the run's <out>/checkpoints/last.ckpt. To use this backbone, give it to "
                "ssl_siamese.load_backbone(path), to the finetune, linear_probe or embed recipe with --backbone "
                "PATH, or to the siamese recipe with --pretrained PATH.")
    if isinstance(payload, dict) and "state_dict" in payload:
        return None
    bare = bare_state_dict(payload)
    if bare:
        return (f"is {bare}, as torch.save(model.state_dict()) "
                "writes, with no training state (optimizer, epoch, loops) to resume from. Load it into a model "
                "yourself with model.load_state_dict(...), or resume from a recipe's <out>/checkpoints/last.ckpt.")
    what = f"a dict with keys {', '.join(map(str, list(payload)[:5]))}" if isinstance(payload, dict) \
        else f"a {type(payload).__name__}"
    return (f"holds {what}, not a Lightning training checkpoint (no 'state_dict'). Resume from a recipe's "
            "<out>/checkpoints/last.ckpt.")


def check_resume_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Raise ``CheckpointError`` unless ``path`` holds weights that fit ``model`` exactly.

    Lists the first missing, unexpected and mis-shaped keys, so "resumed a MoCo checkpoint into SimCLR"
    or "resnet18 weights into resnet50" is a one-line message instead of Lightning's strict-load traceback;
    an exported backbone or a bare state_dict is named as such, with where it can be used instead.
    """
    checkpoint = read_checkpoint(path)
    problem = _not_a_training_checkpoint(checkpoint)
    if problem:
        raise CheckpointError(f"{path} {problem}")
    saved, expected = checkpoint["state_dict"], model.state_dict()
    missing = [k for k in expected if k not in saved]
    unexpected = [k for k in saved if k not in expected]
    shapes = [f"{k} {tuple(saved[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in saved and hasattr(saved[k], "shape") and saved[k].shape != v.shape]
    if missing or unexpected or shapes:
        saved_by = checkpoint.get("ssl_siamese_method") or "another model"
        problems = [f"{name} ({len(keys)}): {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                    for name, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)) if keys]
        raise CheckpointError(
            f"{path} does not fit this {type(model).__name__} (it was saved by {saved_by}): "
            + "; ".join(problems) + ". Resume with the same method, backbone and heads, or start afresh.")
