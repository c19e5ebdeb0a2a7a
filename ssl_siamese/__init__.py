"""ssl_siamese: self-supervised and metric learning with Siamese encoders on PyTorch Lightning.

Example:
    >>> import pytorch_lightning as pl
    >>> from ssl_siamese import SimCLR, SSLDataModule
    >>> model = SimCLR(backbone="resnet18", cifar_stem=True)
    >>> pl.Trainer(max_epochs=200).fit(model, datamodule=SSLDataModule("cifar10"))
"""

from ssl_siamese.augment import ViewAugmentation
from ssl_siamese.backbones import build_backbone
from ssl_siamese.data import SSLDataModule
from ssl_siamese.evaluation.knn import KNNEvaluation
from ssl_siamese.export import export_backbone, load_backbone
from ssl_siamese.methods import MoCo, SiameseModule, SimCLR, SimSiam

__version__ = "0.1.0"
__all__ = ["SimCLR", "MoCo", "SimSiam", "SiameseModule", "SSLDataModule", "ViewAugmentation",
           "KNNEvaluation", "build_backbone", "export_backbone", "load_backbone"]
