"""Views: the random augmentations that make a method's two (or more) views of a batch, on the model's device.

``augment.py`` holds ``ViewAugmentation`` (batched crop, flip, colour, blur, solarize), ``kornia_views.py`` any
kornia pipeline as views (``KorniaViews``),
``preprocess.py`` the deterministic evaluation view of a backbone (``Preprocess``, also what exports record), and
``presets.py`` every preset (SimCLR's, MoCo v2's, BYOL's, DINO's multi-crop, MAE's, metric learning's,
fine-tuning's). The names below are imported on first use.

Example:
    >>> from ssl_siamese.views import method_augmentations
    >>> view0, view1 = method_augmentations("simclr", 32, (0.5,) * 3, (0.25,) * 3)  # view1 None: the same as view0
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ssl_siamese._lazy import lazy_exports

_MODULES = {
    "ssl_siamese.views.augment": ("ViewAugmentation", "to_float_rgb", "grayscale"),
    "ssl_siamese.views.kornia_views": ("KorniaViews",),
    "ssl_siamese.views.preprocess": ("Preprocess", "preprocessing", "to_unit_rgb", "RESIZE"),
    "ssl_siamese.views.presets": ("PRESETS", "augmentation_preset", "method_augmentations", "byol_augmentations",
                                  "dino_augmentations", "default_local_size", "metric_learning_views",
                                  "mae_augmentation", "finetune_views"),
}

if TYPE_CHECKING:  # the same names, eagerly, for type checkers and IDEs
    from ssl_siamese.views.augment import ViewAugmentation, grayscale, to_float_rgb
    from ssl_siamese.views.kornia_views import KorniaViews
    from ssl_siamese.views.preprocess import RESIZE, Preprocess, preprocessing, to_unit_rgb
    from ssl_siamese.views.presets import (
        PRESETS,
        augmentation_preset,
        byol_augmentations,
        default_local_size,
        dino_augmentations,
        finetune_views,
        mae_augmentation,
        method_augmentations,
        metric_learning_views,
    )

__getattr__, __dir__ = lazy_exports(__name__, {name: module for module, names in _MODULES.items() for name in names})
__all__ = [name for names in _MODULES.values() for name in names]
