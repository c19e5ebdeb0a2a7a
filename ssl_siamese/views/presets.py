"""Every view preset of ssl_siamese in one place: the methods' default views, metric learning's, MAE's and
fine-tuning's, each a function of the view size and the data's normalisation.

Symmetric presets (``PRESETS``: ``simclr``, ``moco_v2``, ``simsiam``) give both views the same augmentation;
``byol`` gives BYOL's asymmetric pair (also the setting of the Barlow Twins and VICReg papers); DINO adds
multi-crop (two global views and a local augmentation for the smaller views, ``dino_augmentations``). A method
names its preset in ``augmentation_preset_name``; ``method_augmentations`` turns the name into its views. Blur
only at ``size >= 64`` in every preset: on 32-pixel images a Gaussian blur wipes out the little detail there is.

Example:
    >>> view0, view1 = method_augmentations("byol", 32, (0.5,) * 3, (0.25,) * 3)
    >>> view0.solarize_prob, view1.solarize_prob
    (0.0, 0.2)
"""

from __future__ import annotations

from collections.abc import Sequence

from ssl_siamese.views.augment import ViewAugmentation


def _blur(size: int, prob: float) -> float:
    """``prob`` for views of ``size >= 64`` pixels, else 0 (no blur on small images)."""
    return prob if size >= 64 else 0.0


def simclr_views(size: int, mean: Sequence[float], std: Sequence[float]) -> ViewAugmentation:
    """SimCLR (CIFAR) views: crop (0.08, 1), jitter 0.4/0.4/0.4/0.1 p=0.8, gray 0.2, blur if size >= 64."""
    return ViewAugmentation(size, crop_scale=(0.08, 1.0), blur_prob=_blur(size, 0.5), mean=mean, std=std)


def moco_v2_views(size: int, mean: Sequence[float], std: Sequence[float]) -> ViewAugmentation:
    """MoCo v2 views: crop (0.2, 1), jitter 0.4/0.4/0.4/0.1 p=0.8, gray 0.2, blur if size >= 64."""
    return ViewAugmentation(size, crop_scale=(0.2, 1.0), blur_prob=_blur(size, 0.5), mean=mean, std=std)


def simsiam_views(size: int, mean: Sequence[float], std: Sequence[float]) -> ViewAugmentation:
    """SimSiam views: crop (0.2, 1), jitter 0.4/0.4/0.4/0.1 p=0.8, gray 0.2, blur if size >= 64 (MoCo v2's)."""
    return moco_v2_views(size, mean, std)


SYMMETRIC = {"simclr": simclr_views, "moco_v2": moco_v2_views, "simsiam": simsiam_views}
PRESETS = tuple(SYMMETRIC)
ASYMMETRIC_PRESETS = ("byol",)


def augmentation_preset(name: str, size: int, mean: Sequence[float], std: Sequence[float]) -> ViewAugmentation:
    """The symmetric preset ``name`` in ``PRESETS``, e.g. ``augmentation_preset("simclr", 32, mean, std)``."""
    if name not in SYMMETRIC:
        raise ValueError(f"Unknown augmentation preset {name!r}; valid names: {', '.join(PRESETS)}.")
    return SYMMETRIC[name](size, mean, std)


def byol_augmentations(size: int, mean: Sequence[float], std: Sequence[float]
                       ) -> tuple[ViewAugmentation, ViewAugmentation]:
    """BYOL's asymmetric views (paper, table 6): crop (0.08, 1), flip, jitter 0.4/0.4/0.2/0.1 p=0.8, gray 0.2;
    view 0 blurred always and never solarized, view 1 blurred with p=0.1 and solarized with p=0.2.

    Blur only at ``size >= 64``, as in the symmetric presets (and solo-learn's CIFAR setting for BYOL).
    The solarization asymmetry holds at every size.
    """
    common = dict(size=size, crop_scale=(0.08, 1.0), jitter_prob=0.8, brightness=0.4, contrast=0.4,
                  saturation=0.2, hue=0.1, grayscale_prob=0.2, mean=mean, std=std)
    return (ViewAugmentation(**common, blur_prob=_blur(size, 1.0), solarize_prob=0.0),
            ViewAugmentation(**common, blur_prob=_blur(size, 0.1), solarize_prob=0.2))


def default_local_size(global_size: int) -> int:
    """DINO's local view side for a global one: 96/224 of it, to a multiple of 8 (224 -> 96, 32 -> 16, 128 -> 56)."""
    return max(8, 8 * round(global_size * 96 / 224 / 8))


def dino_augmentations(global_size: int, local_size: int, mean: Sequence[float], std: Sequence[float],
                       global_crop_scale: tuple[float, float] = (0.4, 1.0),
                       local_crop_scale: tuple[float, float] = (0.05, 0.4)
                       ) -> tuple[ViewAugmentation, ViewAugmentation, ViewAugmentation]:
    """DINO's multi-crop views (paper, appendix; lightly's ``DINOTransform``): ``(global 0, global 1, local)``.

    All: flip 0.5, jitter 0.4/0.4/0.2/0.1 p=0.8, gray 0.2; global crops ``global_crop_scale`` (0.4, 1) at
    ``global_size``, blurred always (view 0) or with p=0.1 and solarized with p=0.2 (view 1); local crops
    ``local_crop_scale`` (0.05, 0.4) at ``local_size``, blurred with p=0.5. Blur only when ``global_size >= 64``,
    as in the other presets (lightly's CIFAR-10 benchmark turns DINO's blur off too).

    Example:
        >>> g0, g1, local = dino_augmentations(224, 96, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        >>> local.size, local.crop_scale, g1.solarize_prob
        (96, (0.05, 0.4), 0.2)
    """
    common = dict(crop_ratio=(3 / 4, 4 / 3), hflip_prob=0.5, jitter_prob=0.8, brightness=0.4, contrast=0.4,
                  saturation=0.2, hue=0.1, grayscale_prob=0.2, mean=mean, std=std)
    return (ViewAugmentation(global_size, global_crop_scale, blur_prob=_blur(global_size, 1.0), **common),
            ViewAugmentation(global_size, global_crop_scale, blur_prob=_blur(global_size, 0.1), solarize_prob=0.2,
                             **common),
            ViewAugmentation(local_size, local_crop_scale, blur_prob=_blur(global_size, 0.5), **common))


def method_augmentations(name: str, size: int, mean: Sequence[float], std: Sequence[float]
                         ) -> tuple[ViewAugmentation, ViewAugmentation | None]:
    """``(view 0, view 1)`` of the preset ``name``; view 1 is ``None`` for a symmetric preset (same as view 0)."""
    if name == "byol":
        return byol_augmentations(size, mean, std)
    if name not in SYMMETRIC:
        raise ValueError(f"Unknown augmentation preset {name!r}; valid names: "
                         f"{', '.join(PRESETS + ASYMMETRIC_PRESETS)}.")
    return augmentation_preset(name, size, mean, std), None


def metric_learning_views(size: int, mean: Sequence[float], std: Sequence[float]) -> ViewAugmentation:
    """SupervisedSiamese's views, milder than SimCLR's: labels already give the positives, so crops keep >= 50% of
    the image, and colours keep their saturation and hue."""
    return ViewAugmentation(size, crop_scale=(0.5, 1.0), saturation=0.0, hue=0.0, grayscale_prob=0.0,
                            mean=mean, std=std)


def mae_augmentation(size: int, mean: Sequence[float], std: Sequence[float]) -> ViewAugmentation:
    """MAE's one view: random resized crop of scale (0.2, 1.0) and a horizontal flip, nothing else
    (the paper's appendix A.1 and its ``main_pretrain.py``)."""
    return ViewAugmentation(size=size, crop_scale=(0.2, 1.0), hflip_prob=0.5, jitter_prob=0.0, grayscale_prob=0.0,
                            blur_prob=0.0, solarize_prob=0.0, mean=mean, std=std)


def finetune_views(size: int, mean: Sequence[float], std: Sequence[float]) -> ViewAugmentation:
    """Fine-tuning's training views: crop (0.5, 1) and flip, no colour changes (``recipes/finetune.py``)."""
    return ViewAugmentation(size, crop_scale=(0.5, 1.0), jitter_prob=0.0, grayscale_prob=0.0, mean=mean, std=std)
