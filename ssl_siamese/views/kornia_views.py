"""Any ``kornia.augmentation`` pipeline as the views of any method, on the device like ``ViewAugmentation``.

``KorniaViews`` takes kornia augmentations (one module, e.g. an ``AugmentationSequential``, or a list that it
chains) that map float RGB images in [0, 1] of shape ``(B, 3, H, W)`` to views of ``size x size``; it
converts the uint8 batch, runs the pipeline and normalises with the dataset's mean and std. Evaluation
views are ``ViewAugmentation``'s (resize and normalise, no randomness), so kNN and probes see the same
images whatever the training views are. kornia draws its randomness from torch's global generator, which
the seed (``seed_everything``) fixes and our checkpoints save, so runs repeat and resume exactly.

Our batched ``ViewAugmentation`` stays the default: it is faster for the presets (``benchmarks/throughput.py
--quick`` prints ours against kornia's same pipeline); kornia is for what ours does not do (elastic and
affine warps, perspective, erasing, medical-imaging transforms...).

Example (Python):
    >>> import kornia.augmentation as K
    >>> views = KorniaViews([K.RandomResizedCrop((32, 32), scale=(0.2, 1.0)), K.RandomHorizontalFlip(),
    ...                      K.RandomElasticTransform(p=0.5)], size=32)
    >>> model = SimCLR(backbone="tiny_cnn", augmentation=views)  # doctest: +SKIP

Example (recipe YAML, ``--config``):
    model:
      augmentation:
        class_path: ssl_siamese.views.kornia_views.KorniaViews
        init_args:
          size: 32
          ops:
            - {class_path: kornia.augmentation.RandomResizedCrop, init_args: {size: [32, 32], scale: [0.2, 1.0]}}
            - {class_path: kornia.augmentation.RandomElasticTransform, init_args: {p: 0.5}}
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ssl_siamese.views.augment import ViewAugmentation, to_float_rgb
from ssl_siamese.extras import require


class KorniaViews(ViewAugmentation):
    """Training views from kornia augmentations; evaluation views and normalisation as ``ViewAugmentation``.

    Args:
        ops: one kornia augmentation module or a list of them, applied in order to float images in [0, 1].
            Their output must be ``size x size`` (start with a crop or resize to ``size``).
        size: the side of the views (the data's ``image_size``).
        mean, std: per-channel normalisation applied after the pipeline; ``None``: the model's ``mean`` and
            ``std`` (the dataset's, which the recipes link into the model), set when the model is built.
    """

    def __init__(self, ops: nn.Module | Sequence[nn.Module], size: int = 32,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither (then the model's are used)")
        super().__init__(size=size, **({} if mean is None else {"mean": mean, "std": std}))
        self.normalization_from_model = mean is None
        kornia_augmentation = require("kornia.augmentation", "KorniaViews")
        if isinstance(ops, nn.Module):
            self.pipeline = ops
        else:
            ops = list(ops)
            if not ops or not all(isinstance(op, nn.Module) for op in ops):
                raise ValueError("KorniaViews needs kornia augmentation modules, e.g. "
                                 "[K.RandomResizedCrop((32, 32)), K.RandomHorizontalFlip()]; got "
                                 f"{[type(op).__name__ for op in ops] or 'nothing'}")
            self.pipeline = kornia_augmentation.AugmentationSequential(*ops)

    def set_normalization(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Normalise with this ``mean`` and ``std`` (per channel) from now on."""
        self.mean.copy_(torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.std.copy_(torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.normalization_from_model = False

    def forward(self, images: Tensor, generator: torch.Generator | None = None,
                sizes: Tensor | None = None) -> Tensor:
        """One random view per image: uint8 ``(B, C, H, W)`` -> normalised float ``(B, 3, size, size)``."""
        if generator is not None:
            raise ValueError("kornia draws from torch's global generator: seed it (torch.manual_seed) instead "
                             "of passing a generator")
        if sizes is not None:
            raise ValueError("KorniaViews needs images of one size; streamed images of varying sizes "
                             "(--data.dataset stream) need ViewAugmentation, or a dataset decoded at one "
                             "size (--data.image_size)")
        views = self.pipeline(to_float_rgb(images))
        if views.shape[-2:] != (self.size, self.size):
            raise ValueError(f"the kornia pipeline made {tuple(views.shape[-2:])} views, the model expects "
                             f"{self.size} x {self.size}: start it with K.RandomResizedCrop(({self.size}, "
                             f"{self.size})) or K.Resize, or set size to the views' side")
        return (views - self.mean) / self.std

    def views(self, images: Tensor, count: int, generator: torch.Generator | None = None,
              sizes: Tensor | None = None) -> list[Tensor]:
        """``count`` views per image, one pipeline call each (kornia draws new parameters per call)."""
        if count < 1:
            raise ValueError(f"count must be a positive number of views, got {count}.")
        return [self(images, generator, sizes) for _ in range(count)]
