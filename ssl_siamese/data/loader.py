"""The training loader: batches of an in-memory uint8 dataset, in a fixed order per epoch, resumable mid-epoch.

The images are already decoded into one ``(N, C, H, W)`` uint8 tensor, so a batch is a single indexing
operation (no per-image ``__getitem__``, no collate, no worker processes). The order of epoch ``e`` is a
permutation drawn from ``seed + e`` and sharded over ranks like ``DistributedSampler``; it does not touch
the global RNG. Lightning saves ``state_dict()`` in every checkpoint (epoch and batches already trained);
after ``load_state_dict`` the next pass over that epoch starts at the first batch not yet trained, so a run
killed mid-epoch and resumed sees exactly the batches the uninterrupted run would have seen.

Example:
    >>> loader = ResumableBatchLoader(images, labels, batch_size=256, seed=0)
    >>> loader.set_epoch(3)
    >>> for uint8_images, labels in loader: ...
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor


def take_batch(images: Tensor, labels: Tensor, index: Tensor, pin_memory: bool = False) -> tuple[Tensor, Tensor]:
    """``(images[index], labels[index])`` in one indexing operation each; pinned for an asynchronous copy."""
    images, labels = images[index], labels[index]
    if pin_memory:
        images, labels = images.pin_memory(), labels.pin_memory()
    return images, labels


class ResumableBatchLoader:
    """Shuffled batches of ``(images, labels)`` tensors, with Lightning's stateful-loader interface.

    Args:
        images, labels: the whole split, ``(N, ...)`` and ``(N,)``.
        batch_size: images per batch on this rank.
        shuffle: a new permutation each epoch (``seed + epoch``); otherwise the stored order.
        drop_last: drop the last incomplete batch of the rank's shard.
        seed: base seed of the permutations; the same on every rank.
        rank, world_size: this process's shard (every rank gets ``ceil(N / world_size)`` items, padded
            by repeating the start of the permutation, as ``DistributedSampler`` does).
        batches_done: returns how many batches of the current epoch the trainer has finished; it is what
            ``state_dict`` records (the loader itself runs ahead of training by Lightning's prefetch).
        pin_memory: pin each batch for a faster, asynchronous copy to the GPU.
    """

    def __init__(self, images: Tensor, labels: Tensor, batch_size: int, shuffle: bool = True,
                 drop_last: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1,
                 batches_done: Callable[[], int] | None = None, pin_memory: bool = False) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.batches_done, self.pin_memory = batches_done, pin_memory
        self.epoch = 0
        self._resume: tuple[int, int] | None = None  # (epoch, first batch) set by load_state_dict
        self.sampler = self  # Lightning calls ``loader.sampler.set_epoch(epoch)`` at each epoch start

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _shard_size(self) -> int:
        return math.ceil(len(self.images) / self.world_size)

    def __len__(self) -> int:
        per_rank = self._shard_size()
        return per_rank // self.batch_size if self.drop_last else math.ceil(per_rank / self.batch_size)

    def order(self, epoch: int) -> Tensor:
        """The indices this rank visits in ``epoch``, in order."""
        n = len(self.images)
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(n, generator=generator)
        else:
            order = torch.arange(n)
        total = self._shard_size() * self.world_size
        if total > n:
            order = torch.cat([order, order[: total - n]])
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order = self.order(self.epoch)
        start = 0
        if self._resume is not None and self._resume[0] == self.epoch:
            start = self._resume[1]
        self._resume = None
        for b in range(start, len(self)):
            yield take_batch(self.images, self.labels, order[b * self.batch_size : (b + 1) * self.batch_size],
                             self.pin_memory)

    def state_dict(self) -> dict[str, Any]:
        done = self.batches_done() if self.batches_done is not None else 0
        return {"epoch": self.epoch, "batches_done": int(done), "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"The checkpoint's data order was drawn with seed {state['seed']}, this run's "
                             f"with {self.seed}; resume with --data.seed {state['seed']}.")
        self._resume = (int(state["epoch"]), int(state["batches_done"]))
        self.epoch = self._resume[0]  # the resumed run continues this epoch


def estimated_stepping_batches(trainer: Any) -> int:
    """``trainer.estimated_stepping_batches``, for ``configure_optimizers``, without losing a resumed loader state.

    Lightning builds the training loader (and prefetches its first batch) to count the steps, before it
    restores a checkpoint; the loader states saved in the checkpoint are then never loaded, and a run resumed
    mid-epoch starts the epoch's batches over (Lightning issue #20550). So the loader built for counting is
    dropped again: ``fit`` builds it anew after the restore, loads its state, then iterates, as it does
    when nothing asked for the count first.
    """
    fit_loop = getattr(trainer, "fit_loop", None)
    if fit_loop is not None and not hasattr(fit_loop, "_combined_loader"):  # a Lightning without this internal
        fit_loop = None
    built_before = fit_loop is None or fit_loop._combined_loader is not None  # noqa: SLF001 - see the docstring
    steps = trainer.estimated_stepping_batches
    if not built_before and fit_loop._combined_loader is not None:  # noqa: SLF001
        if fit_loop._data_fetcher is not None:  # noqa: SLF001 - it holds the prefetched batch
            fit_loop._data_fetcher.teardown()  # noqa: SLF001
            fit_loop._data_fetcher = None  # noqa: SLF001
        fit_loop._combined_loader = None  # noqa: SLF001
    return int(steps) if steps != float("inf") else steps


def finish_epoch_boundary_restart(trainer: Any) -> None:
    """Let the epoch after a checkpoint saved on an epoch's last batch start like any other; for ``on_train_start``.

    Resumed from a checkpoint written at the end of an epoch's last training batch (a step checkpoint, taken
    before that epoch's validation), Lightning 2.6 counts the epoch as done but keeps treating the run as
    restarted mid-epoch, so the NEXT epoch skips ``on_train_epoch_start`` and its progress counters; they
    then lag by one, and a checkpoint saved later in that epoch resumes at the epoch's start instead of
    where it was (the loader's saved position ignored, its batches trained twice). Clearing the fit loop's
    restart stage once that epoch is counted done lets the next one start normally.
    """
    fit_loop = trainer.fit_loop
    if not hasattr(fit_loop, "reset_restart_stage"):  # older Lightning, without restart stages: nothing to clear
        return
    progress = fit_loop.epoch_progress.current
    if fit_loop.restarted_mid_epoch and progress.processed == progress.ready:
        fit_loop.reset_restart_stage()


class IndexedBatchLoader:
    """``(images[index], labels[index])`` for each list of indices a batch sampler yields.

    The loader for label-aware batches (``PKBatchSampler``): like ``ResumableBatchLoader``, one indexing
    operation per batch of in-memory uint8 tensors, and not a ``DataLoader``, so Lightning leaves a
    rank-aware batch sampler as it is under DDP instead of trying to re-build it around a
    ``DistributedSampler``. ``set_epoch`` (called by Lightning through ``loader.sampler``) reaches the
    batch sampler. Resumable mid-epoch like ``ResumableBatchLoader`` (``batches_done``, ``state_dict``): the
    resumed pass still draws the batches already trained, and drops them, so a seeded batch sampler's
    random stream gives the rest of the epoch exactly as the uninterrupted run had it.

    Example:
        >>> loader = IndexedBatchLoader(images, labels, PKBatchSampler(labels, p=8, k=4))
        >>> for uint8_images, labels in loader: ...   # 8 classes x 4 images
    """

    def __init__(self, images: Tensor, labels: Tensor, batch_sampler: Any, pin_memory: bool = False,
                 batches_done: Callable[[], int] | None = None) -> None:
        self.images, self.labels, self.batch_sampler, self.pin_memory = images, labels, batch_sampler, pin_memory
        self.batches_done = batches_done
        self.epoch = 0
        self._resume: tuple[int, int] | None = None  # (epoch, first batch) set by load_state_dict
        self.sampler = self  # Lightning calls ``loader.sampler.set_epoch(epoch)`` at each epoch start

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if callable(getattr(self.batch_sampler, "set_epoch", None)):
            self.batch_sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        start = self._resume[1] if self._resume is not None and self._resume[0] == self.epoch else 0
        self._resume = None
        for b, index in enumerate(self.batch_sampler):
            if b >= start:
                yield take_batch(self.images, self.labels, torch.as_tensor(index, dtype=torch.long),
                                 self.pin_memory)

    def state_dict(self) -> dict[str, Any]:
        done = self.batches_done() if self.batches_done is not None else 0
        return {"epoch": self.epoch, "batches_done": int(done)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume = (int(state["epoch"]), int(state["batches_done"]))
        self.set_epoch(self._resume[0])  # the resumed run continues this epoch
