"""``timm/<model name>``: any timm model as a backbone, random init (needs the timm extra, imported on use).

Example:
    >>> vit, dim = timm_model("timm/vit_small_patch16_224", img_size=32, patch_size=4, pooling="mean")
    >>> vit(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 384])
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ssl_siamese.backbones.vit import TIMM_POOL, check_pooling


def timm_arguments(kwargs: dict[str, Any], pooling: str | None = None) -> dict[str, Any]:
    """``timm.create_model``'s keyword arguments for ``kwargs`` with our ``pooling`` as timm's ``global_pool``.

    Example:
        >>> timm_arguments({"img_size": 32, "pooling": "mean"})
        {'img_size': 32, 'global_pool': 'avg'}
    """
    kwargs = dict(kwargs)
    pooling = kwargs.pop("pooling", pooling)
    check_pooling(pooling, "a timm model")
    if pooling is not None:
        if kwargs.get("global_pool", TIMM_POOL[pooling]) != TIMM_POOL[pooling]:
            raise ValueError(f"pooling={pooling!r} and global_pool={kwargs['global_pool']!r} disagree: give one.")
        kwargs["global_pool"] = TIMM_POOL[pooling]
    return kwargs


def timm_model(name: str, pooling: str | None = None, **kwargs: Any) -> tuple[nn.Module, int]:
    """The row ``timm/<model name>`` of ``BACKBONES``: ``timm.create_model(<model name>, pretrained=False,
    num_classes=0, **kwargs)`` and its feature size.

    Raises:
        ValueError: timm is not installed, has no such model, or the model does not take ``kwargs``.
    """
    timm_name = name.split("/", 1)[1]
    try:
        import timm
    except ImportError as error:
        raise ValueError(f"Backbone timm/{timm_name} needs timm: pip install timm") from error
    kwargs = timm_arguments(kwargs, pooling)
    try:
        model = timm.create_model(timm_name, pretrained=False, num_classes=0, **kwargs)
    except RuntimeError as error:  # timm's "Unknown model (...)"
        raise ValueError(f"timm has no model {timm_name!r}; see timm.list_models('*{timm_name[:6]}*') "
                         "for the names it knows.") from error
    except (TypeError, AssertionError) as error:  # an argument the model does not take, or a bad value
        raise ValueError(f"timm's {timm_name!r} does not take the arguments {kwargs}: {error}") from error
    return model, int(model.num_features)
