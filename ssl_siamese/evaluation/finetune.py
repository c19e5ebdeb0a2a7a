"""Fine-tuning a backbone end to end with a new linear head, and reading the fine-tuned classifier back.

:class:`FineTuneClassifier` is the backbone + head trained with cross-entropy (uint8 batches augmented on the
device); :func:`build_init` gives the starting backbone (a file, ``random`` or torchvision's ``imagenet``
weights); :func:`load_classifier` reads the classifier ``run_finetune`` saves. The recipe
``python -m ssl_siamese.recipes.finetune`` wires them to data and a Trainer.

Example:
    >>> module, dim, metadata = build_init("random", "tiny_cnn", True, "fashion_mnist", None)
    >>> model = FineTuneClassifier(module, dim, num_classes=10, image_size=28, mean=(0.5,) * 3, std=(0.25,) * 3)
    >>> classifier, transform, classes, _ = load_classifier("out/finetune/exported_models/finetuned.pt")
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from ssl_siamese.backbones import TORCHVISION_RESNETS, build_backbone, torchvision_resnet
from ssl_siamese.export.checkpoints import read_checkpoint
from ssl_siamese.data import DATASETS, IMAGENET_MEAN, IMAGENET_STD
from ssl_siamese.views.preprocess import Preprocess
from ssl_siamese.evaluation.labelled_data import labelled_datasets
from ssl_siamese.export import load_backbone
from ssl_siamese.views.presets import finetune_views


class FineTuneClassifier(pl.LightningModule):
    """Backbone + linear head trained together with cross-entropy; uint8 batches are augmented on the device.

    Example:
        >>> backbone, dim = build_backbone("tiny_cnn")
        >>> model = FineTuneClassifier(backbone, dim, num_classes=10, image_size=28, mean=(0.5,) * 3, std=(0.25,) * 3)
        >>> pl.Trainer(max_epochs=5).fit(model, train_loader)
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, image_size: int,
                 mean: Sequence[float], std: Sequence[float], lr: float = 0.05, weight_decay: float = 5e-4,
                 momentum: float = 0.9) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["backbone"])
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.head = nn.Linear(feature_dim, num_classes)
        self.augmentation = finetune_views(image_size, mean, std)

    def forward(self, images: Tensor) -> Tensor:
        """Logits of normalised images."""
        return self.head(self.backbone(images).flatten(1))

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, labels = batch
        training = self._trainer is not None and self.trainer.training
        return (self.augmentation(images) if training else self.augmentation.normalize(images)), labels

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        images, labels = batch
        loss = F.cross_entropy(self(images), labels)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def test_step(self, batch: Any, batch_idx: int) -> None:
        images, labels = batch
        ranked = self(images).topk(min(5, self.head.out_features), dim=1).indices
        hits = (ranked == labels.unsqueeze(1)).float()
        self.log("test/top1", hits[:, 0].mean(), batch_size=len(labels))  # averaged over the epoch, by size
        self.log("test/top5", hits.amax(dim=1).mean(), batch_size=len(labels))

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        optimizer = torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        steps = max(1, int(self.trainer.estimated_stepping_batches))
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        return [optimizer], [{"scheduler": schedule, "interval": "step"}]


def imagenet_backbone(arch: str) -> tuple[nn.Module, int]:
    """torchvision's ImageNet weights for ``arch`` from the local torch hub cache; never downloads.

    Raises:
        ValueError: ``arch`` is not a torchvision ResNet, or its weights are not in the cache.
    """
    if arch not in TORCHVISION_RESNETS:
        raise ValueError(f"--backbone imagenet needs a torchvision ResNet --arch ({', '.join(TORCHVISION_RESNETS)}), "
                         f"not {arch!r}.")
    url = torchvision.models.get_model_weights(arch).DEFAULT.url
    path = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    if not path.is_file():
        raise ValueError(f"ImageNet weights for {arch} are not available locally (looked for {path}); nothing is "
                         f"downloaded here. Fetch them once with network access: python -c \"import torchvision; "
                         f"torchvision.models.{arch}(weights='DEFAULT')\", or copy {url} to {path}.")
    model = torchvision_resnet(arch)
    state = {k: v for k, v in torch.load(path, map_location="cpu", weights_only=True).items()
             if not k.startswith("fc.")}
    model.load_state_dict(state, strict=True)
    return model, 2048 if arch == "resnet50" else 512


def build_init(backbone: str, arch: str, cifar_stem: bool, dataset: str | None,
               image_size: int | None) -> tuple[nn.Module, int, dict[str, Any]]:
    """``(module, feature_dim, metadata)`` for PATH (a local file or folder), ``random`` or ``imagenet``.

    The metadata holds ``image_size``, ``mean``, ``std``, ``architecture`` and ``cifar_stem``; for a file,
    everything ``load_backbone`` read (``data`` among it). ``dataset`` supplies the size and normalisation
    the file does not record, and those of ``random`` and ``imagenet``; it may be None only for a file.
    """
    if backbone in ("random", "imagenet"):
        if dataset is None:
            raise ValueError(f"--backbone {backbone} needs --data.dataset NAME (one of "
                             f"{', '.join(labelled_datasets())}) and --data.data_dir PATH: it records no data.")
        info = DATASETS[dataset]
        if backbone == "random":
            module, dim = build_backbone(arch, cifar_stem)
            mean, std = info.mean, info.std
        else:
            module, dim = imagenet_backbone(arch)
            mean, std, cifar_stem = IMAGENET_MEAN, IMAGENET_STD, False
        return module, dim, {"image_size": image_size or info.image_size, "mean": mean, "std": std,
                             "architecture": arch, "cifar_stem": cifar_stem and arch in TORCHVISION_RESNETS}
    module, _, metadata = load_backbone(backbone, trainable=True)  # it freezes by default
    return module.train(), int(metadata["feature_dim"]), dict(metadata)


class LoadedClassifier(NamedTuple):
    """What ``load_classifier`` returns: images -> logits (eval mode, no gradients), preprocessing, names."""

    model: nn.Module
    transform: Preprocess | None
    classes: list[str]
    metadata: dict[str, Any]


def load_classifier(path: str | Path) -> LoadedClassifier:
    """The fine-tuned classifier saved by ``run_finetune`` (``<out>/exported_models/finetuned.pt``), weights-only.

    Example:
        >>> model, transform, classes, _ = load_classifier("out/finetune/exported_models/finetuned.pt")
        >>> names = [classes[i] for i in model(transform(images_uint8)).argmax(1)]

    Raises:
        ValueError: the file is not a backbone export (``load_backbone``'s errors) or has no classifier head.
    """
    backbone, transform, metadata = load_backbone(path)
    head_state = read_checkpoint(path).get("head")
    if not isinstance(head_state, dict) or "weight" not in head_state:
        raise ValueError(f"{path} holds a backbone without a classifier head; fine-tune it first "
                         "(python -m ssl_siamese.recipes.finetune --backbone PATH), or use it with load_backbone.")
    classes_out, features = head_state["weight"].shape
    head = nn.Linear(features, classes_out)
    head.load_state_dict(head_state, strict=True)
    model = nn.Sequential(backbone, nn.Flatten(1), head).eval().requires_grad_(False)
    classes = [str(c) for c in metadata.get("classes") or range(classes_out)]
    return LoadedClassifier(model, transform, classes, metadata)
