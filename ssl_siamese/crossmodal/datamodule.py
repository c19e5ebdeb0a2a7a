"""``IconTextDataModule``: icon image-text pairs (:mod:`ssl_siamese.crossmodal.icons`), split by icon name.

The split holds out whole icon names across all themes: a held-out name (its ``-rtl``/``-ltr`` variants
and spellings with other separators with it) never appears as a training pair in any theme, so the evaluation asks for concepts never seen
as a pair. The held-out icons are the evaluation gallery (:meth:`evaluation_set`). Training images get
a mild random resized crop (no flips: ``go-next`` mirrored is ``go-previous``); texts are tokenized in the
collate by the text tower's tokenizer, which the module sets (``dm.tokenizer``).

Example:
    >>> dm = IconTextDataModule(test_fraction=0.15, batch_size=128)
    >>> dm.setup("fit"); print(dm.report)
    >>> dm.tokenizer = text_encoder.tokenizer      # CrossModalCLIP.setup does this itself
    >>> images, tokens = next(iter(dm.train_dataloader()))
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from ssl_siamese.crossmodal.icons import DEFAULT_THEMES, IconSet, icon_text, load_icons
from ssl_siamese.text.encoder import Tokenize

MEAN, STD = 0.5, 0.25


def name_group(name: str) -> str:
    """What the split keeps together: the words of the icon name without a ``rtl``/``ltr`` suffix, so that
    ``go-next-rtl``, ``go_next`` and ``go-next`` (whose texts can be equal) stay on one side."""
    return re.sub(r" (rtl|ltr)$", "", icon_text(name, ""))


def split_by_name(names: Sequence[str], test_fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Train and test indices: a seeded ``test_fraction`` of the distinct name groups is held out whole."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    groups = sorted({name_group(n) for n in names})
    held_out = set(random.Random(seed).sample(groups, max(1, round(test_fraction * len(groups)))))
    test = [i for i, n in enumerate(names) if name_group(n) in held_out]
    train = [i for i, n in enumerate(names) if name_group(n) not in held_out]
    return train, test


def normalize_images(images: Tensor) -> Tensor:
    """uint8 ``(B, 3, H, W)`` -> float, centred and scaled (icons on white)."""
    return (images.float() / 255 - MEAN) / STD


class _Pairs(Dataset):
    def __init__(self, icons: IconSet, augment: bool) -> None:
        self.images = torch.from_numpy(np.ascontiguousarray(icons.images))
        self.texts = icons.texts
        size = self.images.shape[-1]
        self.transform = v2.RandomResizedCrop(size, scale=(0.6, 1.0), ratio=(0.85, 1.18), antialias=True) \
            if augment else None

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> tuple[Tensor, str]:
        image = self.images[i]
        return (self.transform(image) if self.transform else image), self.texts[i]


class _Collate:
    def __init__(self, tokenizer: Tokenize) -> None:
        self.tokenizer = tokenizer

    def __call__(self, batch: list[tuple[Tensor, str]]) -> tuple[Tensor, dict[str, Tensor]]:
        images, texts = zip(*batch)
        return normalize_images(torch.stack(images)), self.tokenizer(list(texts))


class IconTextDataModule(pl.LightningDataModule):
    """Icon-text pairs from Debian icon themes, split by icon name.

    Args:
        themes: Debian packages of PNG icon themes (or theme folders under ``root``).
        size: image side in pixels.
        cache_dir: where the decoded icons are cached (default: the library's cache, ``$SSL_SIAMESE_CACHE``).
        root: a folder of unpacked theme folders, read instead of the packages.
        download: fetch missing themes with ``apt-get download`` (else only installed ones are used).
        test_fraction: share of icon names held out (with all their icons, in every theme).
        batch_size: pairs per batch (each image's negatives are the other texts of the batch, and back).
        augment: random resized crops of the training images.
        num_workers: DataLoader workers.
        seed: the split.
    """

    def __init__(self, themes: list[str] | None = None, size: int = 32, cache_dir: str | None = None,
                 root: str | None = None, download: bool = True, test_fraction: float = 0.15,
                 batch_size: int = 128, augment: bool = True, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.tokenizer: Tokenize | None = None
        self.train_icons: IconSet | None = None
        self.test_icons: IconSet | None = None
        self.report = ""

    def setup(self, stage: str | None = None) -> None:
        if self.train_icons is not None:
            return
        hp = self.hparams
        icons = load_icons(hp.themes or DEFAULT_THEMES, hp.size, hp.cache_dir, hp.root, hp.download)
        train, test = split_by_name(icons.names, hp.test_fraction, hp.seed)
        self.train_icons, self.test_icons = icons.subset(train), icons.subset(test)
        if len(train) < hp.batch_size:
            raise ValueError(f"{len(train)} training icons are fewer than one batch of {hp.batch_size}; "
                             "lower --data.batch_size or --data.test_fraction")
        themes = sorted(set(icons.themes))
        self.report = (f"icons: {len(icons)} images of {len(themes)} themes ({', '.join(themes)}), "
                       f"{len({name_group(n) for n in icons.names})} distinct names; held out by name: "
                       f"{len(test)} icons, {len(set(self.test_icons.names))} names, "
                       f"{len(set(self.test_icons.texts))} texts; training: {len(train)} icons, "
                       f"{len(set(self.train_icons.texts))} texts")

    def training_texts(self) -> Iterator[str]:
        """The training texts (what the built-in tokenizer is trained on)."""
        assert self.train_icons is not None, "call setup() first"
        yield from self.train_icons.texts

    def evaluation_set(self) -> tuple[Tensor, list[str], list[int]]:
        """Held-out images (normalized), their distinct texts, and each image's text index."""
        assert self.test_icons is not None, "call setup() first"
        texts = list(dict.fromkeys(self.test_icons.texts))
        index = {text: i for i, text in enumerate(texts)}
        images = normalize_images(torch.from_numpy(np.ascontiguousarray(self.test_icons.images)))
        return images, texts, [index[t] for t in self.test_icons.texts]

    def train_dataloader(self) -> DataLoader:
        if self.tokenizer is None:
            raise RuntimeError("the datamodule has no tokenizer: set dm.tokenizer = text_encoder.tokenizer "
                               "(CrossModalCLIP does so in its setup)")
        hp = self.hparams
        return DataLoader(_Pairs(self.train_icons, hp.augment), batch_size=hp.batch_size, shuffle=True,
                          drop_last=True, num_workers=hp.num_workers, collate_fn=_Collate(self.tokenizer),
                          persistent_workers=hp.num_workers > 0)

