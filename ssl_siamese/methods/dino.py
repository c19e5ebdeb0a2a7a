"""DINO (Caron et al., 2021): a student matches an EMA teacher's centred, sharpened distribution over K outputs,
with multi-crop: two global views through teacher and student, smaller local views through the student only.

Example:
    >>> model = DINO(backbone="resnet18", cifar_stem=True, output_dim=2048, local_views=6, local_size=16)
    >>> pl.Trainer(max_epochs=200, gradient_clip_val=3.0).fit(model, datamodule=SSLDataModule("cifar10"))

Re-used from lightly: ``DINOProjectionHead`` (3-layer MLP, l2-normalised bottleneck, weight-normalised last
layer; ``cancel_last_layer_gradients``) and ``DINOLoss`` (cross-entropy over all teacher/student view pairs
except a view with itself, teacher centring with an EMA of its batch mean, all-reduced under DDP by lightly's
``center_mean``). Written here: the multi-crop plumbing, the schedules (teacher momentum, temperature
warm-up, weight decay) on the Trainer's step position so that they resume exactly, and the teacher head as a
second head loaded with the student's weights (the weight-normalised layer cannot be deep-copied).
"""

from __future__ import annotations

import warnings

import torch
from lightly.loss import DINOLoss
from lightly.models.modules import DINOProjectionHead
from lightly.models.utils import deactivate_requires_grad
from lightly.utils.scheduler import cosine_schedule
from torch import Tensor, nn

from ssl_siamese.views.augment import ViewAugmentation
from ssl_siamese.methods.base import SiameseModule
from ssl_siamese.methods.ema import EMATarget, ema_copy
from ssl_siamese.views.presets import default_local_size, dino_augmentations


class DINO(EMATarget, SiameseModule):
    """DINO with multi-crop: ``loss = mean over pairs (t, s), t != s, of H(P_t(x_t), P_s(x_s))`` where the
    teacher's ``P_t = softmax((g_t(x) - c) / teacher_temp)`` sees the 2 global views, the student's
    ``P_s = softmax(g_s(x) / student_temp)`` sees all ``2 + local_views`` views, and ``c`` is an EMA (momentum
    ``center_momentum``) of the teacher outputs' batch mean (global batch under DDP), updated after the loss.

    The teacher (``teacher``: backbone, flatten, DINO head) is an exponential moving average of the student
    (``backbone`` + ``projection_head``), never trained by gradient; its momentum rises from ``base_momentum``
    to 1.0 on a cosine over the run's optimizer steps, updated before each step's forward and restored on
    resume (as BYOL's target: ``update_target``, ``methods/ema.py``; the last momentum is the ``ema_momentum``
    buffer, logged as ``train/ema_momentum``); BatchNorm buffers are copied from the student. The teacher
    temperature warms up linearly per epoch from ``warmup_teacher_temp`` to ``teacher_temp`` over
    ``warmup_teacher_temp_epochs`` (lightly's schedule, the paper's ``np.linspace``). The exported backbone
    (``backbone``) is the student, as BYOL's online network; the teacher's is ``teacher[0]`` in the
    checkpoint (the paper evaluates the teacher).

    Views: global 0 and 1 at ``view_size`` (``augmentation`` / ``augmentation_view1``, default DINO's), then
    ``local_views`` local views at ``local_size`` from ``local_augmentation``, made in one batched call. The
    student sees the global views in one forward and the local views in another (they differ in size).
    ViT backbones must accept both sizes (timm's ``dynamic_img_size=True``).

    Args:
        output_dim: K, the head's output size (65536 in the paper; 2048 in lightly's CIFAR-10 benchmark).
        hidden_dim: hidden size of the head's MLP (2048).
        bottleneck_dim: the l2-normalised bottleneck before the last layer (256).
        batch_norm_head: BatchNorm in the head's hidden layers (off in the paper; on in lightly's ResNet
            CIFAR-10 benchmark).
        norm_last_layer: weight-normalise the last layer with its norm fixed at 1 (paper's default; more stable).
        freeze_last_layer_epochs: the last layer gets no update during these first epochs (1 in the paper).
        student_temp: student temperature (0.1).
        teacher_temp: teacher temperature after the warm-up (0.04 to 0.07 in the paper; 0.04 in main_dino.py).
        warmup_teacher_temp: teacher temperature at epoch 0 (0.04).
        warmup_teacher_temp_epochs: epochs of the linear warm-up (30 in the paper; 0: constant ``teacher_temp``).
        center_momentum: momentum of the teacher centre (0.9).
        base_momentum: teacher EMA momentum at the first step, cosine to 1.0 (0.996).
        local_views: number of local views (6 in lightly's ``DINOTransform``; 8 in main_dino.py; 0: two views).
        local_size: side of the local views; ``None``: 96/224 of ``view_size`` (``default_local_size``).
        global_crop_scale: crop area range of the global views ((0.4, 1.0) in the paper and lightly).
        local_crop_scale: crop area range of the local views ((0.05, 0.4)).
        local_augmentation: the local views' ``ViewAugmentation`` (``None``: DINO's preset at ``local_size``).
        weight_decay_end: weight decay at the last step, cosine from ``weight_decay`` (0.04 -> 0.4 in the paper
            for AdamW); ``None``: constant.
        optimizer, lr, weight_decay, warmup_epochs: as in ``SiameseModule``, here with the paper's AdamW,
            lr 5e-4 per 256 images, weight decay 0.04 and 10 warm-up epochs.
        **kwargs: the other shared options of ``SiameseModule``. Gradient clipping (3.0 in the paper) is the
            Trainer's ``gradient_clip_val``.
    """

    augmentation_preset_name = "byol"  # replaced by DINO's global views below unless ``augmentation`` is given
    hparams_not_saved = ("local_augmentation",)

    def __init__(self, output_dim: int = 65536, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 batch_norm_head: bool = False, norm_last_layer: bool = True, freeze_last_layer_epochs: int = 1,
                 student_temp: float = 0.1, teacher_temp: float = 0.07, warmup_teacher_temp: float = 0.04,
                 warmup_teacher_temp_epochs: int = 30, center_momentum: float = 0.9, base_momentum: float = 0.996,
                 local_views: int = 6, local_size: int | None = None,
                 global_crop_scale: tuple[float, float] = (0.4, 1.0),
                 local_crop_scale: tuple[float, float] = (0.05, 0.4),
                 local_augmentation: ViewAugmentation | None = None, weight_decay_end: float | None = 0.4,
                 optimizer: str = "adamw", lr: float = 5e-4, weight_decay: float = 0.04,
                 warmup_epochs: float = 10.0, **kwargs) -> None:
        super().__init__(optimizer=optimizer, lr=lr, weight_decay=weight_decay, warmup_epochs=warmup_epochs,
                         **kwargs)
        self.init_ema_target(base_momentum)
        if local_views < 0:
            raise ValueError(f"local_views must be >= 0 (0: only the two global views), got {local_views}.")
        if min(student_temp, teacher_temp, warmup_teacher_temp) <= 0:
            raise ValueError("DINO's temperatures must be positive, got "
                             f"student {student_temp}, teacher {teacher_temp}, warm-up {warmup_teacher_temp}.")
        size = self.hparams.view_size
        global0, global1, local = dino_augmentations(size, local_size or default_local_size(size), self.hparams.mean,
                                                     self.hparams.std, global_crop_scale, local_crop_scale)
        if kwargs.get("augmentation") is None:
            self.augmentation, self.augmentation_view1 = global0, kwargs.get("augmentation_view1") or global1
        self.local_augmentation = local_augmentation or local
        head = dict(input_dim=self.feature_dim, hidden_dim=hidden_dim, bottleneck_dim=bottleneck_dim,
                    output_dim=output_dim, batch_norm=batch_norm_head, norm_last_layer=norm_last_layer,
                    freeze_last_layer=freeze_last_layer_epochs)
        with warnings.catch_warnings():  # lightly's head uses torch.nn.utils.weight_norm, deprecated by torch
            warnings.filterwarnings("ignore", message=".*weight_norm.*", category=FutureWarning)
            self.projection_head = DINOProjectionHead(**head)
            teacher_head = DINOProjectionHead(**head)
        teacher_head.load_state_dict(self.projection_head.state_dict())
        deactivate_requires_grad(teacher_head)
        self.teacher = nn.Sequential(ema_copy(self.backbone), nn.Flatten(1), teacher_head)
        self.criterion = DINOLoss(output_dim, warmup_teacher_temp=warmup_teacher_temp, teacher_temp=teacher_temp,
                                  warmup_teacher_temp_epochs=warmup_teacher_temp_epochs,
                                  student_temp=student_temp, center_momentum=center_momentum)

    # ---- views ---------------------------------------------------------------------------------------
    def view_augmentations(self) -> list[ViewAugmentation]:
        """Global view 0, global view 1, then ``local_views`` times the local augmentation."""
        return super().view_augmentations() + [self.local_augmentation] * self.hparams.local_views

    def view_groups(self) -> list[tuple[ViewAugmentation, int]]:
        """The two global views one by one, then all local views in one batched call (one call per view for a
        local augmentation without ``views``, such as a kornia pipeline)."""
        groups = [(augment, 1) for augment in super().view_augmentations()]
        local, count = self.local_augmentation, self.hparams.local_views
        if not count:
            return groups
        return groups + ([(local, count)] if hasattr(local, "views") else [(local, 1)] * count)

    # ---- networks and schedules ----------------------------------------------------------------------
    def student(self) -> nn.Module:
        """The trained backbone and head laid out like ``teacher``."""
        return nn.Sequential(self.backbone, nn.Flatten(1), self.projection_head)

    def ema_networks(self) -> tuple[nn.Module, nn.Module]:
        """The student and its EMA, the teacher."""
        return self.student(), self.teacher

    def encoders(self) -> list[nn.Module]:
        """The student's backbone and the teacher's."""
        return [self.backbone, self.teacher[0]]

    def head_modules(self) -> list[nn.Module]:
        """The student's DINO head and the teacher's."""
        return [self.projection_head, self.teacher[2]]

    def teacher_temperature(self, epoch: int) -> float:
        """The teacher temperature of ``epoch``: lightly's linear warm-up schedule, then ``teacher_temp``."""
        schedule = self.criterion.teacher_temp_schedule
        return float(schedule[epoch]) if epoch < len(schedule) else float(self.hparams.teacher_temp)

    def scheduled_weight_decay(self) -> float:
        """This step's weight decay: cosine from ``weight_decay`` to ``weight_decay_end`` over the run."""
        end = self.hparams.weight_decay_end
        start = self.hparams.weight_decay
        return start if end is None else cosine_schedule(*self.schedule_position(), start, end)

    def shared_step(self, *views: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher on the 2 global views, student on all; returns the loss and the student's view-0 features."""
        if len(views) < 2:
            raise ValueError(f"DINO needs at least the two global views, got {len(views)} view(s).")
        self.update_target()
        features = [self.encode_views(views[0], views[1])]
        if len(views) > 2:
            features.append(self.backbone(torch.cat(views[2:])).flatten(1))
        student_out = self.projection_head(torch.cat(features)).float().chunk(len(views))
        with torch.no_grad():
            teacher_out = self.teacher(torch.cat(views[:2])).float().chunk(2)
        temperature = self.teacher_temperature(self.current_epoch)
        with torch.autocast(device_type=views[0].device.type, enabled=False):
            loss = self.criterion(list(teacher_out), list(student_out), teacher_temp=temperature)
        return loss, features[0].chunk(2)[0]

    def training_step(self, batch, batch_idx: int) -> dict[str, Tensor]:
        output = super().training_step(batch, batch_idx)
        self.log("train/teacher_temp", self.teacher_temperature(self.current_epoch), sync_dist=False)
        return output

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Freeze the last layer in the first epochs (its gradient dropped), and set this step's weight decay."""
        self.projection_head.cancel_last_layer_gradients(self.current_epoch)
        decay = self.scheduled_weight_decay()
        for group in optimizer.param_groups:
            if group.get("name") == "decay":
                group["weight_decay"] = decay
