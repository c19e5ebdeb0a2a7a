"""The small base class every Siamese method shares.

It owns what is common and nothing else: the backbone, the augmented views made on the device
after transfer (two by default, one augmentation for both or one per view; a method may ask for more in
groups, ``view_groups``, as DINO's multi-crop), the optimizer with warm-up + cosine
schedule and batch-size scaling, the step position for per-step schedules (EMA momentum), and the features
used for evaluation. A method implements ``shared_step(view0, view1) -> (loss, embeddings)`` (with more
views: ``shared_step(*views)``). Its own ``__init__`` arguments land in ``hparams`` (and checkpoints) through the
base's ``save_hyperparameters``, which Lightning makes collect every subclass's arguments; ``hparams_not_saved``
names those to leave out (modules, file paths).

Example (a complete method):
    >>> class MyMethod(SiameseModule):
    ...     def __init__(self, **kwargs):
    ...         super().__init__(**kwargs)
    ...         self.head = nn.Linear(self.feature_dim, 64)
    ...     def shared_step(self, view0, view1):
    ...         z0, z1 = self.head(self.encode_views(view0, view1)).chunk(2)
    ...         return -F.cosine_similarity(z0, z1).mean(), z0
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from lightly.utils.lars import LARS
from lightly.utils.scheduler import CosineWarmupScheduler
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor, nn

from ssl_siamese.views.augment import ViewAugmentation
from ssl_siamese.backbones import build_backbone
from ssl_siamese.data.loader import estimated_stepping_batches, finish_epoch_boundary_restart
from ssl_siamese.views.presets import method_augmentations

OPTIMIZERS = ("sgd", "lars", "adamw")


class SiameseModule(pl.LightningModule):
    """Shared LightningModule: one backbone, two views in one forward, one loss.

    Args:
        backbone: a name for ``build_backbone`` (``resnet18``, ``tiny_cnn``, ``timm/...``) or an nn.Module.
        cifar_stem: 3x3 stem without max-pool for torchvision ResNets (small images).
        feature_dim: the backbone's output size, needed only for a module without ``feature_dim``.
        backbone_kwargs: keyword arguments of the backbone's constructor (``build_backbone``), e.g.
            ``{"img_size": 32, "patch_size": 4, "pooling": "mean"}`` for a timm ViT on CIFAR; recorded in exports.
        optimizer: ``sgd``, ``lars`` or ``adamw`` (``torch.optim.AdamW``, betas (0.9, 0.999); ``momentum``
            is then unused). All three use the same parameter groups (no weight decay on biases and norms).
        lr: learning rate per 256 images; the optimizer uses ``lr * global_batch / 256`` where the global
            batch is per-device batch x devices x nodes x gradient-accumulation steps.
        weight_decay: the optimizer's weight decay.
        momentum: the optimizer's (SGD or LARS) momentum.
        warmup_epochs: linear warm-up length (may be fractional), then cosine decay to zero.
        batch_size: images per device per step, for the learning-rate scaling when the Trainer has no
            datamodule that says it (recipes link it from the data).
        view_size: side length of the augmented views (linked from ``data.image_size`` in recipes).
        mean: per-channel normalisation mean of the views (linked from the data in recipes).
        std: per-channel normalisation standard deviation of the views (linked from the data in recipes).
        augmentation: a ``ViewAugmentation`` (of view 0 and, unless ``augmentation_view1`` is given, of
            view 1 too; its ``normalize`` makes the evaluation images); ``None`` uses the method's preset.
        augmentation_view1: the second view's own ``ViewAugmentation`` (asymmetric views, as BYOL's);
            ``None``: ``augmentation`` when that is given, else the method's preset for view 1.
        channels_last: use the channels-last memory format (faster convolutions on recent GPUs).
        sync_batchnorm_heads: under DDP, BatchNorm in the heads (SimCLR's projector, SimSiam's projector
            and predictor; MoCo v2's head has none) normalises with the statistics of the global batch
            (``nn.SyncBatchNorm``), as SimCLR's paper does for its projector; the backbone
            keeps per-device statistics and its speed. For all layers use ``Trainer(sync_batchnorm=True)``.
            GPUs only (torch's SyncBatchNorm does not run on CPU tensors); no effect on one device.
        compile: ``torch.compile`` the encoders (``encoders()``) in place when fitting starts; the
            parameter names, checkpoints and exports stay those of the plain modules. The first steps pay
            the compilation; off by default (not measured on a GPU by this project yet).
    """

    augmentation_preset_name = "simclr"
    hparams_not_saved: tuple[str, ...] = ()  # a method's own arguments left out of ``hparams`` (modules, paths)

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        cifar_stem: bool = True,
        feature_dim: int | None = None,
        backbone_kwargs: dict[str, Any] | None = None,
        optimizer: str = "sgd",
        lr: float = 0.12,
        weight_decay: float = 5e-4,
        momentum: float = 0.9,
        warmup_epochs: float = 0.0,
        batch_size: int = 512,
        view_size: int = 32,
        mean: tuple[float, float, float] = (0.4914, 0.4822, 0.4465),
        std: tuple[float, float, float] = (0.2470, 0.2435, 0.2616),
        augmentation: ViewAugmentation | None = None,
        augmentation_view1: ViewAugmentation | None = None,
        channels_last: bool = False,
        sync_batchnorm_heads: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"Unknown optimizer {optimizer!r}; choose one of {OPTIMIZERS}.")
        ignore = ["augmentation", "augmentation_view1", *self.hparams_not_saved]
        ignore += ["backbone"] if isinstance(backbone, nn.Module) else []
        self.hparams_ignore = ignore  # the exclusions, for a subclass that still saves its arguments itself
        self.save_hyperparameters(ignore=ignore)  # Lightning collects the arguments of every subclass __init__ too
        self.backbone, self.feature_dim = build_backbone(backbone, cifar_stem, feature_dim, **(backbone_kwargs or {}))
        preset0, preset1 = self.preset_augmentations(view_size, mean, std) if augmentation is None else (None, None)
        self.augmentation = augmentation or preset0
        self.augmentation_view1 = augmentation_view1 or preset1  # None: view 1 uses ``augmentation`` too
        for augment in (augmentation, augmentation_view1):  # views given without a mean/std take the model's
            if getattr(augment, "normalization_from_model", False):
                augment.set_normalization(mean, std)

    # ---- what a method implements -------------------------------------------------------------
    def shared_step(self, view0: Tensor, view1: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(loss, embeddings of view0)``; the embeddings feed the collapse monitor."""
        raise NotImplementedError

    def preset_augmentations(self, view_size: int, mean: tuple[float, float, float], std: tuple[float, float, float]
                             ) -> tuple[ViewAugmentation, ViewAugmentation | None]:
        """The method's default ``(view 0, view 1)`` augmentations; view 1 ``None``: the same as view 0."""
        return method_augmentations(self.augmentation_preset_name, view_size, mean, std)

    # ---- shared machinery ---------------------------------------------------------------------
    def view_augmentations(self) -> list[ViewAugmentation]:
        """The augmentation of each training view, applied in this order (each draws its own randomness)."""
        return [self.augmentation, self.augmentation_view1 or self.augmentation]

    def view_groups(self) -> list[tuple[ViewAugmentation, int]]:
        """``(augmentation, count)`` per group of training views, in order: each group's ``count`` views come
        from one batched ``ViewAugmentation.views`` call (a group of one: a plain call, as the default, each of
        ``view_augmentations()`` once)."""
        return [(augment, 1) for augment in self.view_augmentations()]

    def forward(self, images: Tensor) -> Tensor:
        """Backbone features ``(B, D)`` of normalised images."""
        return self.backbone(images).flatten(1)

    def encode_views(self, view0: Tensor, view1: Tensor, encoder: nn.Module | None = None) -> Tensor:
        """Both views through the same encoder in ONE forward; returns features of ``cat([v0, v1])``."""
        encoder = encoder or self.backbone
        return encoder(torch.cat([view0, view1])).flatten(1)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """On the device: uint8 images (with their sizes when padded) -> the random views of ``view_groups``
        (training; two by default) or one normalised view (eval)."""
        images, labels = batch[0], batch[1]
        sizes = batch[2] if len(batch) > 2 else None  # streamed images of varying size, padded (data/streamed.py)
        memory_format = torch.channels_last if self.hparams.channels_last else torch.contiguous_format
        if self._trainer is not None and self.trainer.training:
            views = [view.contiguous(memory_format=memory_format) for augment, count in self.view_groups()
                     for view in ([augment(images, sizes=sizes)] if count == 1 else augment.views(images, count,
                                                                                                   sizes=sizes))]
            return views, labels
        return self.augmentation.normalize(images, sizes=sizes).contiguous(memory_format=memory_format), labels

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        views, _ = batch
        loss, embeddings = self.shared_step(*views)
        self.log("train/loss", loss, prog_bar=True, sync_dist=False)
        return {"loss": loss, "embeddings": embeddings.detach()}

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        """Features for the evaluation callbacks (loader 0: kNN bank, loader 1: queries)."""
        images, labels = batch
        return {"features": self(images).detach(), "labels": labels}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["ssl_siamese_method"] = type(self).__name__  # named in errors when resumed wrongly

    def head_modules(self) -> list[nn.Module]:
        """The method's heads (every child named ``*_head``): what ``sync_batchnorm_heads`` converts."""
        return [module for name, module in self.named_children() if name.endswith("_head")]

    def sync_head_batchnorm(self) -> None:
        """Replace the BatchNorm layers of ``head_modules()`` by ``nn.SyncBatchNorm`` (same parameters)."""
        for head in self.head_modules():
            for name, child in list(head.named_children()):
                setattr(head, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))

    def encoders(self) -> list[nn.Module]:
        """The image encoders, where the compute is: what ``compile`` compiles."""
        return [self.backbone]

    def compile_encoders(self, **options: Any) -> None:
        """``torch.compile`` each of ``encoders()`` in place (``nn.Module.compile``: names unchanged)."""
        for encoder in self.encoders():
            encoder.compile(**options)

    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        if self.hparams.get("sync_batchnorm_heads") and self.trainer.world_size > 1:
            if self.trainer.strategy.root_device.type == "cpu":  # the model moves to its device after setup
                raise ValueError("sync_batchnorm_heads needs GPUs: torch's SyncBatchNorm does not run on CPU "
                                 "tensors. Train on GPUs, or drop --model.sync_batchnorm_heads for this CPU run.")
            self.sync_head_batchnorm()
        if self.hparams.get("compile"):
            self.compile_encoders()

    def on_fit_start(self) -> None:
        if self.hparams.channels_last:
            self.to(memory_format=torch.channels_last)

    def per_device_batch_size(self) -> int:
        """The datamodule's batch size when training with one (a user's own Trainer), else ``batch_size``."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        size = getattr(datamodule, "batch_size", None) or getattr(datamodule, "hparams", {}).get("batch_size")
        return int(size or self.hparams.batch_size)

    def configure_optimizers(self) -> Any:
        world_size = self.trainer.world_size if self._trainer is not None else 1
        accumulate = self.trainer.accumulate_grad_batches if self._trainer is not None else 1
        lr = self.hparams.lr * self.per_device_batch_size() * world_size * accumulate / 256
        groups = self.parameter_groups()
        if self.hparams.optimizer == "lars":  # lightly's LARS leaves groups with weight_decay 0 unscaled
            optimizer = LARS(groups, lr=lr, momentum=self.hparams.momentum)
        elif self.hparams.optimizer == "adamw":
            optimizer = torch.optim.AdamW(groups, lr=lr)
        else:
            optimizer = torch.optim.SGD(groups, lr=lr, momentum=self.hparams.momentum)
        total_steps = max(1, int(estimated_stepping_batches(self.trainer)))  # keeps a resumed loader state
        max_epochs = max(1, self.trainer.max_epochs or 1)
        warmup_steps = min(total_steps, int(self.hparams.warmup_epochs * total_steps / max_epochs))  # short runs
        self._schedule_steps = (total_steps, warmup_steps)  # compared with a resumed scheduler's
        scheduler = CosineWarmupScheduler(optimizer, warmup_epochs=warmup_steps,
                                          max_epochs=total_steps, end_value=0.0)
        return [optimizer], [{"scheduler": scheduler, "interval": "step"}]

    def schedule_position(self) -> tuple[int, int]:
        """``(optimizer steps done, total optimizer steps of this fit)`` for per-step schedules such as an
        EMA momentum; both restored on resume, so a schedule of them resumes exactly. ``(0, 1)`` without a
        Trainer. A run extended on resume (larger ``max_epochs``) re-derives it over the new total, as the
        learning rate (``rederive_schedule``)."""
        if self._trainer is None:
            return 0, 1
        return self.global_step, max(1, int(self.trainer.estimated_stepping_batches))

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Optimizer groups: ``decay`` (weights of convolutions and linear layers: weight decay and LARS's
        layer-wise scaling) and ``no_decay`` (every 1-d parameter: biases, BatchNorm and other norm
        weights and biases; neither), as in SimCLR's paper and lightly's benchmarks. Frozen parameters
        (MoCo's key encoder) are left out; an empty group is dropped.
        """
        decay, no_decay = [], []
        for param in self.parameters():
            if param.requires_grad:
                (no_decay if param.ndim <= 1 else decay).append(param)
        groups = [{"name": "decay", "params": decay, "weight_decay": self.hparams.weight_decay},
                  {"name": "no_decay", "params": no_decay, "weight_decay": 0.0}]
        return [group for group in groups if group["params"]]

    def on_train_start(self) -> None:
        finish_epoch_boundary_restart(self.trainer)
        self.rederive_schedule()

    def rederive_schedule(self) -> None:
        """Fit the restored learning-rate schedule to this run's length, saying so when it changes.

        Lightning restores the scheduler of a checkpoint as it was, built for the total number of steps of
        the run that wrote it. Resumed with another length (a larger ``max_epochs`` to extend a finished
        run, or after a ``max_steps`` stop), that schedule would end at the old total and train on at a
        learning rate of zero; here the cosine schedule (same warm-up, same base rate) is re-derived over
        the new total, continuing at the current step.
        """
        total, warmup = getattr(self, "_schedule_steps", (None, None))
        for config in self.trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if total is None or not isinstance(scheduler, CosineWarmupScheduler) or scheduler.max_epochs == total:
                continue
            old = scheduler.max_epochs
            scheduler.max_epochs, scheduler.warmup_epochs = total, min(warmup, total)
            factor = scheduler.scale_lr(scheduler.last_epoch)
            for group, base_lr in zip(scheduler.optimizer.param_groups, scheduler.base_lrs):
                group["lr"] = base_lr * factor
            scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]  # noqa: SLF001
            rank_zero_info(
                f"Resuming at step {self.trainer.global_step} with {self.trainer.max_epochs} epochs "
                f"({total} steps) instead of the checkpoint's {old} steps: cosine schedule re-derived over "
                f"{total} steps instead of {old}; lr now {scheduler._last_lr[0]:.4g}.")  # noqa: SLF001
