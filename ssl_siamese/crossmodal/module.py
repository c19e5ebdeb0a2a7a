"""``CrossModalCLIP``: an image tower and a text tower trained into one space with CLIP's symmetric loss.

Image tower: a backbone of :func:`ssl_siamese.backbones.build_backbone` (``tiny_cnn``, ``resnet18``,
``timm/...``) and a linear projection; text tower: any text encoder of
:func:`ssl_siamese.text.encoder.build_text_encoder` (the built-in one trained from scratch by default, a
Hugging Face or sentence-transformers folder) and a linear projection; both to ``embed_dim``. Loss:
:class:`ssl_siamese.crossmodal.loss.CLIPLoss` with a learned temperature. AdamW with a linear warm-up
over the first ``warmup`` fraction of the steps, then cosine decay (lightly's ``CosineWarmupScheduler``).

Example:
    >>> model = CrossModalCLIP(image_backbone="tiny_cnn", text_encoder="builtin", embed_dim=128)
    >>> pl.Trainer(max_epochs=10).fit(model, datamodule=IconTextDataModule())
    >>> model.encode_images(images), model.encode_texts(["audio volume high status"])   # one space
    >>> model = CrossModalCLIP.load_exported("out/cross_modal/exported_models/cross_modal.pt")
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from lightly.utils.scheduler import CosineWarmupScheduler
from torch import Tensor, nn

from ssl_siamese.backbones import build_backbone
from ssl_siamese.crossmodal.loss import CLIPLoss
from ssl_siamese.text.encoder import build_text_encoder


class CrossModalCLIP(pl.LightningModule):
    """Two towers, one space (see the module docstring).

    ``text_*``, ``vocab_size``, ``bigram_buckets`` and ``max_length`` go to :func:`build_text_encoder`;
    ``temperature`` is the initial one, learned unless ``learn_temperature=False``.
    """

    def __init__(self, image_backbone: str = "tiny_cnn", cifar_stem: bool = True, text_encoder: str = "builtin",
                 text_kind: str = "bag", text_dim: int = 256, vocab_size: int = 4000, bigram_buckets: int = 4096,
                 max_length: int = 32, local_files_only: bool = True, embed_dim: int = 128, temperature: float = 0.07,
                 learn_temperature: bool = True, gather_distributed: bool = True, lr: float = 2e-3,
                 weight_decay: float = 0.05, warmup: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.image_backbone, image_dim = build_backbone(image_backbone, cifar_stem=cifar_stem)
        self.text_encoder = build_text_encoder(text_encoder, kind=text_kind, dim=text_dim, vocab_size=vocab_size,
                                               bigram_buckets=bigram_buckets, max_length=max_length,
                                               local_files_only=local_files_only)
        self.image_projection = nn.Linear(image_dim, embed_dim)
        self.text_projection = nn.Linear(self.text_encoder.dim, embed_dim)
        self.loss_fn = CLIPLoss(temperature, learn_temperature=learn_temperature,
                                gather_distributed=gather_distributed)

    @classmethod
    def load_exported(cls, path: str | Path) -> CrossModalCLIP:
        """The towers the recipe wrote to ``<out>/exported_models/cross_modal.pt`` (tokenizer included), in eval mode."""
        stored = torch.load(path, map_location="cpu", weights_only=True)
        accepted = inspect.signature(cls.__init__).parameters  # LightningCLI adds "_instantiator" to the hparams
        model = cls(**{key: value for key, value in stored["hparams"].items() if key in accepted})
        model.load_state_dict(stored["state_dict"])
        return model.eval()

    def image_embeddings(self, images: Tensor) -> Tensor:
        return self.image_projection(self.image_backbone(images))

    def text_embeddings(self, features: dict[str, Tensor]) -> Tensor:
        return self.text_projection(self.text_encoder(features))

    def setup(self, stage: str) -> None:
        """Hand the text tower's tokenizer to a datamodule that has none (training the built-in one if needed)."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is None or getattr(datamodule, "tokenizer", "absent") is not None:
            return
        self.fit_tokenizer(datamodule.training_texts())
        datamodule.tokenizer = self.text_encoder.tokenizer

    def fit_tokenizer(self, texts: Any) -> None:
        """Train the text encoder's tokenizer on ``texts`` unless it has one (most come with theirs)."""
        if not self.text_encoder.has_tokenizer:
            self.text_encoder.fit_tokenizer(texts)

    @torch.no_grad()
    def encode_images(self, images: Tensor, batch_size: int = 512) -> Tensor:
        """L2-normalised embeddings ``(N, embed_dim)`` (float32, CPU) of normalized images, in eval mode."""
        was_training = self.training
        self.eval()
        out = [F.normalize(self.image_embeddings(images[s:s + batch_size].to(self.device)).float(), dim=1).cpu()
               for s in range(0, len(images), batch_size)]
        self.train(was_training)
        return torch.cat(out)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 512) -> Tensor:
        """L2-normalised embeddings ``(N, embed_dim)`` (float32, CPU) of ``texts``, in eval mode."""
        was_training = self.training
        self.eval()
        tokenize = self.text_encoder.tokenizer
        out = []
        for s in range(0, len(texts), batch_size):
            features = {k: v.to(self.device) for k, v in tokenize(list(texts[s:s + batch_size])).items()}
            out.append(F.normalize(self.text_embeddings(features).float(), dim=1).cpu())
        self.train(was_training)
        return torch.cat(out)

    def training_step(self, batch: tuple[Tensor, dict[str, Tensor]], batch_idx: int) -> Tensor:
        images, tokens = batch
        loss = self.loss_fn(self.image_embeddings(images), self.text_embeddings(tokens))
        self.log("train/loss", loss, prog_bar=True, batch_size=len(images))
        self.log("train/temperature", 1.0 / self.loss_fn.scale.detach(), batch_size=len(images))
        return loss

    def configure_optimizers(self) -> Any:
        """AdamW (no weight decay on biases, norms, the temperature and embeddings), lightly's cosine schedule
        with a linear warm-up over the first ``warmup`` fraction of the steps."""
        flat = {name: p.ndim <= 1 or "embedding" in name for name, p in self.named_parameters()}
        groups = [{"params": [p for n, p in self.named_parameters() if flat[n] == no_decay],
                   "weight_decay": 0.0 if no_decay else self.hparams.weight_decay} for no_decay in (False, True)]
        optimizer = torch.optim.AdamW(groups, lr=self.hparams.lr)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        scheduler = CosineWarmupScheduler(optimizer, warmup_epochs=int(self.hparams.warmup * total), max_epochs=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
