"""The methods of ssl_siamese, in one table: class name -> the module that defines it, imported on first use.

The table is the one place a method is registered. ``ssl_siamese`` and ``ssl_siamese.methods`` export its
names lazily (so a method whose extra is not installed costs nothing until it is used), ``load_backbone``
rebuilds a Lightning checkpoint with the method the checkpoint records (``SiameseModule`` writes its class
name as ``checkpoint["ssl_siamese_method"]``, a key of this table), and the method's recipe is the module of
the same name in ``ssl_siamese.recipes`` (``ssl_siamese.methods.byol`` -> ``python -m ssl_siamese.recipes.byol``).

Example:
    >>> method_class("BYOL")            # the name a checkpoint records
    <class 'ssl_siamese.methods.byol.BYOL'>
    >>> method_class("barlow_twins")    # or its module's (and recipe's) name
    <class 'ssl_siamese.methods.barlow_twins.BarlowTwins'>
"""

from __future__ import annotations

import difflib
import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ssl_siamese.methods.base import SiameseModule

# in the order the methods were added: a checkpoint that records no method (main before 2026-11-23) is matched by
# trying them in this order
METHODS: dict[str, str] = {
    "SimCLR": "ssl_siamese.methods.simclr",
    "MoCo": "ssl_siamese.methods.moco",
    "SimSiam": "ssl_siamese.methods.simsiam",
    "SupervisedSiamese": "ssl_siamese.methods.siamese",
    "BYOL": "ssl_siamese.methods.byol",
    "BarlowTwins": "ssl_siamese.methods.barlow_twins",
    "VICReg": "ssl_siamese.methods.vicreg",
    "DINO": "ssl_siamese.methods.dino",
    "MAE": "ssl_siamese.methods.mae",  # needs the timm extra: importing it without timm says so
    "DCL": "ssl_siamese.methods.dcl",  # DCLW: DCL(weighted=True)
    "NNCLR": "ssl_siamese.methods.nnclr",
}


def method_name(name: str) -> str:
    """The registered class name for ``name``: a class name (``"BarlowTwins"``) or its module's (``"barlow_twins"``).

    Raises:
        ValueError: an unknown name; the message lists the registered ones and suggests the closest.
    """
    if name in METHODS:
        return name
    by_module = {module.rsplit(".", 1)[1]: cls for cls, module in METHODS.items()}
    if name in by_module:
        return by_module[name]
    close = difflib.get_close_matches(name, [*METHODS, *by_module], n=1, cutoff=0.6)
    hint = f"did you mean {by_module.get(close[0], close[0])}? " if close else ""
    raise ValueError(f"Unknown method {name!r}; {hint}the methods are {', '.join(METHODS)} "
                     "(ssl_siamese.methods.registry.METHODS).")


def method_class(name: str) -> type[SiameseModule]:
    """Import and return the method class registered as ``name`` (see ``method_name`` for the names accepted).

    Raises:
        ValueError: an unknown name.
        ImportError: the method needs an extra that is not installed; the message gives the ``pip install`` line.
    """
    registered = method_name(name)
    return getattr(importlib.import_module(METHODS[registered]), registered)
