"""The Siamese methods: one file each on a shared ``SiameseModule`` base."""

from ssl_siamese.methods.barlow_twins import BarlowTwins
from ssl_siamese.methods.base import SiameseModule
from ssl_siamese.methods.byol import BYOL
from ssl_siamese.methods.dino import DINO
from ssl_siamese.methods.mae import MAE
from ssl_siamese.methods.moco import MoCo
from ssl_siamese.methods.simclr import SimCLR
from ssl_siamese.methods.simsiam import SimSiam
from ssl_siamese.methods.vicreg import VICReg

__all__ = ["SiameseModule", "SimCLR", "MoCo", "SimSiam", "BYOL", "BarlowTwins", "VICReg", "DINO", "MAE"]
