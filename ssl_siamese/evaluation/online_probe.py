"""Online linear probe: a linear classifier on detached backbone features, trained alongside pretraining.

Why a class loss in self-supervised training? Only to monitor it. The classifier lives in this callback,
has its own optimizer, and sees features that are detached from the graph and arrive after the backward
pass, so no gradient from the labels ever reaches the backbone. It answers "are the features becoming
linearly separable?" every epoch, without the offline probe's separate run (solo-learn and lightly do
the same).

The features come from the training forward itself, without a second one: a forward hook on
``pl_module.backbone`` keeps the first output of each training batch, the features of
``cat([view0, view1])`` (``encode_views``), and the probe trains on the first ``B`` rows, the augmented
``view0``. A second forward would cost time and, in train mode, move the BatchNorm running statistics.
Unlabelled images (label < 0) are skipped. Validation scores the query loader (dataloader 1) using the
features that ``validation_step`` returns.

Under DDP the probe is one classifier trained on the global batch, as if it were part of the DDP model:
each rank sums the loss over its labelled rows, the gradients and the row counts are summed over ranks,
and every rank takes the same step with the gradient of the mean loss over all ranks' rows (the ranks'
copies start equal and stay equal). The logged accuracies count the rows of all ranks.

Example:
    >>> probe = OnlineLinearProbe(lr=0.1)          # num_classes from the datamodule
    >>> trainer = pl.Trainer(callbacks=[KNNEvaluation(), probe])   # logs probe/train_acc, probe/val_top1
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightly.utils.dist import world_size
from torch import Tensor, nn

PROBE_OPTIMIZERS = ("sgd", "adam")


def _sum_over_ranks(tensor: Tensor) -> Tensor:
    """``tensor`` summed over all ranks, in place; unchanged without a process group."""
    if world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


class OnlineLinearProbe(pl.Callback):
    """A linear classifier on detached backbone features, with its own optimizer and state.

    Args:
        num_classes: classes of the labels; ``None`` takes ``trainer.datamodule.num_classes``.
        optimizer: ``sgd`` (with ``momentum``) or ``adam``.
        lr, momentum, weight_decay: the probe's optimizer settings.

    The classifier starts at zero (no random numbers are drawn, so the run's RNG stream is untouched).
    Its weights and optimizer state are saved in and restored from Lightning checkpoints.
    """

    def __init__(self, num_classes: int | None = None, optimizer: str = "sgd", lr: float = 0.1,
                 momentum: float = 0.9, weight_decay: float = 0.0) -> None:
        if optimizer not in PROBE_OPTIMIZERS:
            raise ValueError(f"Unknown probe optimizer {optimizer!r}; choose one of {PROBE_OPTIMIZERS}.")
        self.num_classes = num_classes
        self.optimizer_name, self.lr, self.momentum, self.weight_decay = optimizer, lr, momentum, weight_decay
        self.classifier: nn.Linear | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._pending_state: dict[str, Any] | None = None
        self._hook: torch.utils.hooks.RemovableHandle | None = None
        self._features: Tensor | None = None
        # (correct, seen) as Python ints, not tensors: ddp_spawn sends this callback to its workers with
        # torch.multiprocessing, which would put a tensor in memory shared by every rank
        self._train_counts = [0, 0]
        self._val_counts = [0, 0]

    @property
    def state_key(self) -> str:
        return self._generate_state_key(optimizer=self.optimizer_name, lr=self.lr)

    # ---- the classifier ----------------------------------------------------------------------------
    def build(self, in_features: int, num_classes: int, device: torch.device | str = "cpu") -> None:
        """Create the zero-initialised classifier and its optimizer (restoring a loaded state, if any)."""
        self.classifier = nn.utils.skip_init(nn.Linear, in_features, num_classes, device=device)
        nn.init.zeros_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)
        params = self.classifier.parameters()
        if self.optimizer_name == "adam":
            self.optimizer = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        else:
            self.optimizer = torch.optim.SGD(params, lr=self.lr, momentum=self.momentum,
                                             weight_decay=self.weight_decay)
        if self._pending_state is not None:
            self.classifier.load_state_dict(self._pending_state["classifier"])
            self.optimizer.load_state_dict(self._pending_state["optimizer"])
            self._pending_state = None

    def train_step(self, features: Tensor, labels: Tensor) -> tuple[int, int]:
        """One optimizer step on the labelled rows of all ranks; returns this rank's ``(correct, seen)``.

        Every rank must call it at every step (it sums over ranks), even with no labelled row.
        """
        keep = (labels >= 0) & (labels < self.classifier.out_features)
        features, labels = features.detach()[keep].float(), labels[keep]
        seen = _sum_over_ranks(torch.tensor(float(len(labels)), device=features.device))
        if seen == 0:
            return 0, 0
        with torch.enable_grad():
            logits = self.classifier(features)
            loss = F.cross_entropy(logits, labels, reduction="sum")
            self.optimizer.zero_grad(set_to_none=False)
            loss.backward()
        for param in self.classifier.parameters():  # gradient of the mean loss over all ranks' rows
            _sum_over_ranks(param.grad).div_(seen)
        self.optimizer.step()
        return int((logits.argmax(1) == labels).sum()), len(labels)

    @torch.no_grad()
    def predict(self, features: Tensor) -> Tensor:
        """Predicted class of each row of ``features``."""
        return self.classifier(features.float()).argmax(1)

    # ---- Lightning hooks ---------------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        num_classes = self.num_classes or getattr(trainer.datamodule, "num_classes", None)
        if num_classes is None:
            raise ValueError("OnlineLinearProbe needs labels: pass num_classes or use a labelled datamodule.")
        if self.classifier is None:
            self.build(int(pl_module.feature_dim), int(num_classes), pl_module.device)
        else:
            self.classifier.to(pl_module.device)
        self._hook = pl_module.backbone.register_forward_hook(self._keep_first_output)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.on_exception(trainer, pl_module, None)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: Any) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _keep_first_output(self, module: nn.Module, inputs: Any, output: Tensor) -> None:
        if module.training and torch.is_grad_enabled() and self._features is None:
            self._features = output.detach().flatten(1)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._features = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        features, self._features = self._features, None
        if features is None:
            return
        labels = batch[1]
        correct, seen = self.train_step(features[: len(labels)], labels.to(features.device))
        self._train_counts = [self._train_counts[0] + correct, self._train_counts[1] + seen]

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        correct, seen = _sum_over_ranks(torch.tensor(self._train_counts, device=pl_module.device)).tolist()
        self._train_counts = [0, 0]
        if seen:
            pl_module.log("probe/train_acc", correct / seen, sync_dist=False)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._val_counts = [0, 0]

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.classifier is None or dataloader_idx != 1 or not isinstance(outputs, dict):
            return
        labels = outputs["labels"]
        keep = labels >= 0
        if keep.any():
            correct = (self.predict(outputs["features"][keep]) == labels[keep]).sum()
            self._val_counts = [self._val_counts[0] + int(correct), self._val_counts[1] + int(keep.sum())]

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        correct, seen = _sum_over_ranks(torch.tensor(self._val_counts, device=pl_module.device)).tolist()
        self._val_counts = [0, 0]
        if seen and not trainer.sanity_checking:
            pl_module.log("probe/val_top1", correct / seen, sync_dist=False)

    # ---- checkpointing -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self.classifier is None:
            return {}
        return {"classifier": self.classifier.state_dict(), "optimizer": self.optimizer.state_dict(),
                "train_counts": list(self._train_counts)}  # a run resumed mid-epoch logs the whole epoch

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        self._train_counts = [int(n) for n in state_dict.get("train_counts", (0, 0))]
        self._pending_state = state_dict
        if self.classifier is not None:
            self.build(self.classifier.in_features, self.classifier.out_features, self.classifier.weight.device)
