"""The Siamese methods: one file each on a shared ``SiameseModule`` base, registered in ``registry.METHODS``.

The names are imported on first use (``ssl_siamese._lazy``): ``from ssl_siamese.methods import SimCLR`` loads
SimCLR's module only, so a method whose extra is missing (MAE: timm) stops nothing else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ssl_siamese._lazy import lazy_exports
from ssl_siamese.methods.registry import METHODS

_EXPORTS = {"SiameseModule": "ssl_siamese.methods.base", **METHODS}

if TYPE_CHECKING:  # the same names, eagerly, for type checkers and IDEs
    from ssl_siamese.methods.barlow_twins import BarlowTwins
    from ssl_siamese.methods.base import SiameseModule
    from ssl_siamese.methods.byol import BYOL
    from ssl_siamese.methods.dcl import DCL
    from ssl_siamese.methods.dino import DINO
    from ssl_siamese.methods.mae import MAE
    from ssl_siamese.methods.moco import MoCo
    from ssl_siamese.methods.nnclr import NNCLR
    from ssl_siamese.methods.siamese import SupervisedSiamese
    from ssl_siamese.methods.simclr import SimCLR
    from ssl_siamese.methods.simsiam import SimSiam
    from ssl_siamese.methods.vicreg import VICReg

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = list(_EXPORTS)
