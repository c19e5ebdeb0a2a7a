"""ssl_siamese: self-supervised and metric learning with Siamese encoders on PyTorch Lightning.

Example:
    >>> import pytorch_lightning as pl
    >>> from ssl_siamese import SimCLR, SSLDataModule, KNNEvaluation, load_backbone
    >>> model = SimCLR(backbone="resnet18", cifar_stem=True)
    >>> pl.Trainer(max_epochs=200, callbacks=[KNNEvaluation()]).fit(model, datamodule=SSLDataModule("cifar10"))
    >>> backbone, transform, metadata = load_backbone("out/simclr/exported_models/backbone.pt")
"""

from ssl_siamese.augment import ViewAugmentation
from ssl_siamese.backbones import build_backbone
from ssl_siamese.data import SSLDataModule
from ssl_siamese.embeddings import EmbeddingIndex, Preprocess, embed_images
from ssl_siamese.evaluation import (
    EmbeddingPictures,
    KNNEvaluation,
    OnlineLinearProbe,
    fewshot_episodes,
    fit_linear_probe,
    recall_at_k,
    verification_roc,
)
from ssl_siamese.export import LoadedBackbone, export_backbone, load_backbone
from ssl_siamese.methods import MoCo, SiameseModule, SimCLR, SimSiam
from ssl_siamese.oneshot import OneShotClassifier

__version__ = "0.1.0"
__all__ = ["SimCLR", "MoCo", "SimSiam", "SiameseModule", "SSLDataModule", "ViewAugmentation", "build_backbone",
           "KNNEvaluation", "OnlineLinearProbe", "EmbeddingPictures", "fit_linear_probe", "fewshot_episodes",
           "recall_at_k", "verification_roc", "export_backbone", "load_backbone", "LoadedBackbone", "Preprocess",
           "embed_images", "EmbeddingIndex", "OneShotClassifier"]
