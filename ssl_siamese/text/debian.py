"""Debian's package descriptions as text pairs: short description -> long description, grouped by source package.

apt keeps the English descriptions in ``/var/lib/apt/lists/*_i18n_Translation-en*`` (after
``apt-get update -o Acquire::Languages=en``; ``Package:`` and ``Description-en:``, whose first line is the
short description and the indented rest the long one) and gives each package's source package through
``apt-cache dumpavail``. About 64,000 packages on Debian bookworm.

Example:
    >>> pairs = debian_description_pairs()      # [TextPair(query="Real-time strategy game ...",
    ...                                          #           positive="0 A.D. (pronounced ...", group="0ad"), ...]
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import shutil
import subprocess
from pathlib import Path

from ssl_siamese.text.pairs import TextPair

LISTS_DIR = Path("/var/lib/apt/lists")
APT_UPDATE = ["apt-get", "update", "-o", "Acquire::Languages=en"]


class DebianDescriptionsMissing(FileNotFoundError):
    """No Translation-en files: apt's English descriptions have not been downloaded."""


def translation_files(lists_dir: str | Path = LISTS_DIR) -> list[Path]:
    """apt's English description files in ``lists_dir``, sorted; raises :class:`DebianDescriptionsMissing`."""
    files = sorted(p for p in Path(lists_dir).glob("*_i18n_Translation-en*") if p.is_file())
    if not files:
        raise DebianDescriptionsMissing(
            f"no *_i18n_Translation-en* files in {lists_dir}: apt has not downloaded the English package "
            f"descriptions. Run (as root) `{' '.join(APT_UPDATE)}` and try again.")
    return files


def ensure_translations(lists_dir: str | Path = LISTS_DIR) -> list[Path]:
    """:func:`translation_files`, running ``apt-get update -o Acquire::Languages=en`` first when they are missing."""
    try:
        return translation_files(lists_dir)
    except DebianDescriptionsMissing:
        if shutil.which("apt-get") is None:
            raise
        subprocess.run(APT_UPDATE, check=True, stdout=subprocess.DEVNULL)
        return translation_files(lists_dir)


def read_text(path: Path) -> str:
    """A file of apt's lists as text, decompressed (lz4 through apt's own ``apt-helper`` or ``lz4``; gz, xz, bz2)."""
    suffix = path.suffix.lower()
    opener = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open}.get(suffix)
    if opener is not None:
        with opener(path, "rt", encoding="utf-8", errors="replace") as handle:
            return handle.read()
    if suffix == ".lz4":
        for command in (["/usr/lib/apt/apt-helper", "cat-file"], ["lz4", "-dc"]):
            if shutil.which(command[0]):
                return subprocess.run([*command, str(path)], check=True, capture_output=True).stdout.decode(
                    "utf-8", errors="replace")
        raise RuntimeError(f"cannot decompress {path}: neither /usr/lib/apt/apt-helper nor lz4 is installed")
    return path.read_text(encoding="utf-8", errors="replace")


def parse_stanzas(text: str) -> list[dict[str, str]]:
    """Debian control-file stanzas (blank-line separated ``Field: value`` with indented continuation lines)."""
    stanzas, current, field = [], {}, None
    for line in text.splitlines():
        if not line.strip():
            if current:
                stanzas.append(current)
            current, field = {}, None
        elif line[0] in " \t" and field is not None:
            current[field] += "\n" + line
        elif ":" in line:
            field, value = line.split(":", 1)
            current[field] = value.strip()
    if current:
        stanzas.append(current)
    return stanzas


def split_description(value: str) -> tuple[str, str]:
    """``Description-en`` -> (short, long): continuation lines lose their leading space, `` .`` is a paragraph break."""
    short, _, rest = value.partition("\n")
    paragraphs, lines = [], []
    for line in rest.splitlines():
        line = line[1:] if line.startswith(" ") else line
        if line.strip() == ".":
            paragraphs.append(" ".join(lines))
            lines = []
        else:
            lines.append(line.strip())
    paragraphs.append(" ".join(lines))
    return short.strip(), "\n".join(p for p in paragraphs if p)


def source_packages() -> dict[str, str]:
    """Package -> source package name from ``apt-cache dumpavail`` (a package without ``Source:`` is its own)."""
    if shutil.which("apt-cache") is None:
        return {}
    text = subprocess.run(["apt-cache", "dumpavail"], check=True, capture_output=True).stdout.decode(
        "utf-8", errors="replace")
    return {s["Package"]: s.get("Source", s["Package"]).split()[0] for s in parse_stanzas(text) if "Package" in s}


def debian_description_pairs(lists_dir: str | Path = LISTS_DIR, update: bool = False) -> list[TextPair]:
    """(short description, long description, group = source package) for every package with a long description.

    A package listed in several files (e.g. bookworm and bookworm-security) counts once, from the last file.
    ``update=True`` runs ``apt-get update -o Acquire::Languages=en`` when the files are missing; otherwise
    their absence raises :class:`DebianDescriptionsMissing`, whose message gives that command.
    """
    files = ensure_translations(lists_dir) if update else translation_files(lists_dir)
    descriptions: dict[str, tuple[str, str]] = {}
    for path in files:
        for stanza in parse_stanzas(read_text(path)):
            if "Package" in stanza and "Description-en" in stanza:
                descriptions[stanza["Package"]] = split_description(stanza["Description-en"])
    sources = source_packages()
    return [TextPair(query=short, positive=long, group=sources.get(package, package))
            for package, (short, long) in sorted(descriptions.items()) if short and long]
