"""Icon themes from Debian as image-text pairs: each icon's image with the words of its name and context folder.

``audio-volume-high.png`` in a theme's ``status/`` folder becomes the text ``"audio volume high status"``.
The themes are Debian packages that ship PNG icons (:data:`DEFAULT_THEMES`); for each one missing from
``/usr/share/icons`` the package is fetched with ``apt-get download`` (no root, nothing installed) and read
from the .deb in memory (``dpkg-deb --fsys-tarfile``). The decoded icons are cached as one ``.npz`` file in
``<cache_dir>/icons/`` (default :func:`ssl_siamese.data.default_cache_dir`), so the next load reads only
that file. Per theme and icon name one image is kept: the PNG whose size is closest to ``size`` (at least
``size`` when there is one), alpha-composited on white and resized to ``size x size``. Symbolic
(monochrome) variants and symlinked aliases are left out.

Example:
    >>> icons = load_icons(size=32)              # 3,898 icons of 6 themes; ~70 MB of .deb fetched the first time
    >>> icons.images.shape, icons.texts[0], icons.themes[0]
    ((3898, 3, 32, 32), 'ac adapter', 'Adwaita')
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ssl_siamese.data.folders import default_cache_dir

# Debian packages that ship their icons as PNG files (no SVG rasteriser needed).
DEFAULT_THEMES = ("adwaita-icon-theme", "gnome-icon-theme", "mate-icon-theme", "oxygen-icon-theme",
                  "tango-icon-theme", "elementary-xfce-icon-theme")
SYSTEM_ICONS = Path("/usr/share/icons")
CACHE_VERSION = 1
# Context folders renamed in the text: "mimes" is elementary's "mimetypes"; Adwaita's "legacy" says nothing.
CONTEXT_WORDS = {"mimes": "mimetypes", "legacy": "", "panel": "status", "scalable": ""}
_SIZE = re.compile(r"^(\d+)(x\d+)?(@\d+x?)?$")


DEBIAN_PACKAGE_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]+")  # Debian policy 5.6.1


class IconThemesMissing(FileNotFoundError):
    """An icon theme is neither installed nor obtainable with apt."""


@dataclass
class IconSet:
    """Decoded icons: ``images`` uint8 ``(N, 3, S, S)``; per icon its ``texts``, ``names``, ``contexts``, ``themes``."""

    images: np.ndarray
    texts: list[str]
    names: list[str]
    contexts: list[str]
    themes: list[str]

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Sequence[int]) -> IconSet:
        idx = list(indices)
        return IconSet(self.images[idx], *([values[i] for i in idx] for values in
                                           (self.texts, self.names, self.contexts, self.themes)))


def icon_text(name: str, context: str) -> str:
    """The words of an icon name and its context folder: ``("audio-volume-high", "status")`` -> ``"audio volume high status"``."""
    words = re.split(r"[-_.\s]+", name.lower()) + [CONTEXT_WORDS.get(context, context)]
    return " ".join(word for word in words if word)


def _size_and_context(parts: Sequence[str]) -> tuple[int | None, str]:
    """The pixel size and the context folder of an icon from its folders (``32x32/status`` or ``status/32``)."""
    size, context = None, ""
    for part in reversed(parts):
        match = _SIZE.match(part)
        if match and size is None:
            size = int(match.group(1))
        elif not context and not match:
            context = part
        if size is not None and context:
            break
    return size, context


def choose_icons(files: Sequence[str], size: int) -> dict[str, tuple[str, str]]:
    """``{icon name: (file, context)}`` from a theme's PNG paths (relative to the theme folder): per name the
    size closest to ``size`` (larger preferred); symbolic variants and files outside a context folder skipped."""
    best: dict[str, tuple[tuple[int, int, str], str, str]] = {}
    for file in files:
        parts = file.split("/")
        name = parts[-1][:-len(".png")]
        if "symbolic" in name or "cursors" in parts:
            continue
        pixels, context = _size_and_context(parts[:-1])
        if pixels is None or not context:
            continue
        rank = (0 if pixels >= size else 1, abs(pixels - size), file)
        if name not in best or rank < best[name][0]:
            best[name] = (rank, file, context)
    return {name: (file, context) for name, (_, file, context) in best.items()}


def _decode(data: bytes, size: int) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    rgb = Image.alpha_composite(white, rgba).convert("RGB")
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)


def _main_theme(files: dict[str, bytes]) -> tuple[str, dict[str, bytes]]:
    """The theme (first folder) with the most PNG files, and its files relative to it."""
    counts: dict[str, int] = {}
    for file in files:
        counts[file.split("/")[0]] = counts.get(file.split("/")[0], 0) + 1
    theme = max(counts, key=counts.get)
    return theme, {file[len(theme) + 1:]: data for file, data in files.items() if file.startswith(theme + "/")}


def read_theme_folder(folder: Path) -> dict[str, bytes]:
    """The PNG files (not symlinks) of a theme folder, by path relative to it."""
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*.png"))
            if not path.is_symlink() and "symbolic" not in path.name}


def read_deb_icons(deb: Path) -> tuple[str, dict[str, bytes]]:
    """The main theme of a Debian icon package and its PNG files, read from the .deb in memory (``dpkg-deb``)."""
    prefix = "./usr/share/icons/"
    files: dict[str, bytes] = {}
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as proc:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as archive:
            for member in archive:
                if member.isfile() and member.name.startswith(prefix) and member.name.endswith(".png") \
                        and "symbolic" not in member.name:
                    files[member.name[len(prefix):]] = archive.extractfile(member).read()
    if proc.returncode != 0 or not files:
        raise IconThemesMissing(f"{deb.name} holds no PNG icons under /usr/share/icons (an SVG-only theme?); "
                                f"choose themes that ship PNG files, e.g. {', '.join(DEFAULT_THEMES)}")
    return _main_theme(files)


def _installed_theme(package: str) -> Path | None:
    """The theme folder that ``package`` installed under ``/usr/share/icons`` (``dpkg -L``), if it is installed."""
    if shutil.which("dpkg") is None:
        return None
    listing = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True)
    if listing.returncode != 0:
        return None
    counts: dict[str, int] = {}
    for line in listing.stdout.splitlines():
        if line.startswith(f"{SYSTEM_ICONS}/") and line.endswith(".png"):
            theme = Path(line).relative_to(SYSTEM_ICONS).parts[0]
            counts[theme] = counts.get(theme, 0) + 1
    return SYSTEM_ICONS / max(counts, key=counts.get) if counts else None


def how_to_get(packages: Sequence[str]) -> str:
    return (f"Install them (`sudo apt-get install {' '.join(packages)}`) or let the library fetch them: it needs "
            "`apt-get download` and `dpkg-deb` (Debian or Ubuntu). Elsewhere, unpack each theme's icon folder "
            "(from the .deb on packages.debian.org) and pass their parent folder as root=/--data.root.")


def download_debs(packages: Sequence[str], workdir: Path) -> dict[str, Path]:
    """``apt-get download`` of ``packages`` (one call, no root needed) into ``workdir``: ``{package: .deb}``."""
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise IconThemesMissing(f"icon themes {', '.join(packages)} are not installed and `{tool}` is not "
                                    f"available to fetch them. {how_to_get(packages)}")
    done = subprocess.run(["apt-get", "download", "-q", *packages], cwd=workdir, capture_output=True, text=True)
    debs = {package: next(iter(sorted(workdir.glob(f"{package}_*.deb"))), None) for package in packages}
    missing = [package for package, deb in debs.items() if deb is None]
    if done.returncode != 0 or missing:
        raise IconThemesMissing(f"`apt-get download {' '.join(packages)}` failed ({done.stderr.strip()[-300:]}). "
                                f"If apt knows no such package, run `sudo apt-get update` first. {how_to_get(missing)}")
    return debs


def _cache_file(cache_dir: Path, themes: Sequence[str], size: int, root: Path | None) -> Path:
    key = json.dumps([CACHE_VERSION, list(themes), size, str(root) if root else None])
    return cache_dir / "icons" / f"icons_{size}px_{hashlib.sha1(key.encode()).hexdigest()[:12]}.npz"


def load_icons(themes: Sequence[str] = DEFAULT_THEMES, size: int = 32, cache_dir: str | Path | None = None,
               root: str | Path | None = None, download: bool = True) -> IconSet:
    """The icons of ``themes`` (Debian package names, or theme folder names under ``root``) at ``size`` px.

    ``root``: a folder of unpacked theme folders to read instead of the packages (nothing is fetched).
    ``download=False``: use only installed themes; raise :class:`IconThemesMissing`, saying how to get
    them, when one is missing. The result is cached in ``<cache_dir>/icons/`` and read back from there.
    """
    cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    root = Path(root).expanduser() if root else None
    not_packages = [theme for theme in themes if not DEBIAN_PACKAGE_NAME.fullmatch(theme)]
    if root is None and not_packages:
        raise IconThemesMissing(f"{', '.join(map(repr, not_packages))}: not Debian package names (such as "
                                f"{DEFAULT_THEMES[0]!r}). For theme folders on disk, pass their parent folder as "
                                "root=/--data.root and the folders' names as themes.")
    cache = _cache_file(cache_dir, themes, size, root)
    if cache.is_file():
        with np.load(cache) as stored:
            meta = json.loads(str(stored["meta"]))
            return IconSet(stored["images"], meta["texts"], meta["names"], meta["contexts"], meta["themes"])
    sources: dict[str, tuple[str, dict[str, bytes]] | Path] = {}
    for package in themes:
        if root is not None:
            if not (root / package).is_dir():
                raise IconThemesMissing(f"no theme folder {root / package}; root= must hold one folder per theme "
                                        f"({', '.join(themes)})")
            sources[package] = root / package
        elif (installed := _installed_theme(package)) is not None:
            sources[package] = installed
        elif not download:
            raise IconThemesMissing(f"icon theme {package!r} is not installed (download=False). {how_to_get([package])}")
    images, texts, names, contexts, theme_names = [], [], [], [], []
    with tempfile.TemporaryDirectory(prefix="ssl_siamese_icons_") as tmp:
        to_fetch = [package for package in themes if package not in sources]
        debs = download_debs(to_fetch, Path(tmp)) if to_fetch else {}
        for package in themes:
            if package in debs:
                theme, files = read_deb_icons(debs[package])
            else:
                theme, files = sources[package].name, read_theme_folder(sources[package])
            for name, (file, context) in sorted(choose_icons(list(files), size).items()):
                images.append(_decode(files[file], size))
                texts.append(icon_text(name, context))
                names.append(name)
                contexts.append(context)
                theme_names.append(theme)
    if not images:
        raise IconThemesMissing(f"no PNG icons found in {', '.join(themes)}. {how_to_get(list(themes))}")
    icons = IconSet(np.stack(images), texts, names, contexts, theme_names)
    cache.parent.mkdir(parents=True, exist_ok=True)
    meta = json.dumps({"texts": texts, "names": names, "contexts": contexts, "themes": theme_names})
    partial = cache.with_suffix(".tmp.npz")
    np.savez(partial, images=icons.images, meta=np.array(meta))
    partial.replace(cache)
    return icons
