"""ssl_siamese: self-supervised and metric learning with Siamese encoders on PyTorch Lightning.

Example:
    >>> import pytorch_lightning as pl
    >>> from ssl_siamese import SimCLR, SSLDataModule, KNNEvaluation, load_backbone
    >>> model = SimCLR(backbone="resnet18", cifar_stem=True)
    >>> pl.Trainer(max_epochs=200, callbacks=[KNNEvaluation()]).fit(model, datamodule=SSLDataModule("cifar10"))
    >>> backbone, transform, metadata = load_backbone("out/simclr/exported_models/backbone.pt")

The public names are imported on first use (``ssl_siamese._lazy``), so ``import ssl_siamese`` and a recipe
load only the modules they need (no matplotlib, W&B or scikit-learn until something uses them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ssl_siamese import _moved
from ssl_siamese._lazy import lazy_exports
from ssl_siamese.methods.registry import METHODS

_EXPORTS = {
    **METHODS,  # SimCLR, MoCo, ... SupervisedSiamese: registered in ssl_siamese/methods/registry.py
    "SiameseModule": "ssl_siamese.methods.base",
    "SSLDataModule": "ssl_siamese.data",
    "ViewAugmentation": "ssl_siamese.views.augment",
    "build_backbone": "ssl_siamese.backbones",
    "KNNEvaluation": "ssl_siamese.evaluation.knn",
    "OnlineLinearProbe": "ssl_siamese.evaluation.online_probe",
    "EmbeddingPictures": "ssl_siamese.evaluation.pictures",
    "fit_linear_probe": "ssl_siamese.evaluation.linear",
    "fewshot_episodes": "ssl_siamese.evaluation.fewshot",
    "recall_at_k": "ssl_siamese.evaluation.retrieval",
    "verification_roc": "ssl_siamese.evaluation.retrieval",
    "export_backbone": "ssl_siamese.export.backbone",
    "export_pretrained": "ssl_siamese.export.backbone",
    "load_backbone": "ssl_siamese.export.backbone",
    "LoadedBackbone": "ssl_siamese.export.backbone",
    "Preprocess": "ssl_siamese.views.preprocess",
    "embed_images": "ssl_siamese.search.embeddings",
    "EmbeddingIndex": "ssl_siamese.search.embeddings",
    "OneShotClassifier": "ssl_siamese.search.oneshot",
    "read_image": "ssl_siamese.data.images",
    "read_images": "ssl_siamese.data.images",
}

if TYPE_CHECKING:  # the same names, eagerly, for type checkers and IDEs
    from ssl_siamese.views.augment import ViewAugmentation
    from ssl_siamese.backbones import build_backbone
    from ssl_siamese.data import SSLDataModule
    from ssl_siamese.data.images import read_image, read_images
    from ssl_siamese.evaluation import (
        EmbeddingPictures,
        KNNEvaluation,
        OnlineLinearProbe,
        fewshot_episodes,
        fit_linear_probe,
        recall_at_k,
        verification_roc,
    )
    from ssl_siamese.export.backbone import LoadedBackbone, export_backbone, export_pretrained, load_backbone
    from ssl_siamese.methods import (BYOL, DCL, DINO, MAE, NNCLR, BarlowTwins, MoCo, SiameseModule, SimCLR, SimSiam,
                                     VICReg)
    from ssl_siamese.methods.siamese import SupervisedSiamese
    from ssl_siamese.search.embeddings import EmbeddingIndex, embed_images
    from ssl_siamese.search.oneshot import OneShotClassifier
    from ssl_siamese.views.preprocess import Preprocess

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
_moved.install()  # old module paths (ssl_siamese.augment, ...) answer with the moved modules

__version__ = "0.1.0"
__all__ = list(_EXPORTS)
