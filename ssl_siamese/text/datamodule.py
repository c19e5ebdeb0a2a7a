"""``TextPairDataModule``: text pairs from a file or Debian's package descriptions, split by group, tokenized in the collate.

Example:
    >>> dm = TextPairDataModule(source="debian", max_pairs=4000, test_fraction=0.2)
    >>> dm.setup("fit"); print(dm.split.report)
    >>> dm.tokenizer = encoder.tokenizer          # TextSiamese.setup does this itself
    >>> batch = next(iter(dm.train_dataloader()))
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from ssl_siamese.text.debian import debian_description_pairs
from ssl_siamese.text.encoder import Tokenize
from ssl_siamese.text.pairs import PairCollate, TextPair, read_pairs
from ssl_siamese.text.split import LINKS, group_split


class TextPairDataModule(pl.LightningDataModule):
    """Pairs from ``source``: ``"debian"`` (:func:`debian_description_pairs`) or a ``.jsonl``/``.csv``/``.tsv`` path.

    Args:
        source: ``debian`` or a pair file (query, positive[, negative][, score][, group]).
        max_pairs: keep a seeded random subset of this many pairs (before the split); ``None``: all.
        test_fraction: held out for the retrieval evaluation (whole components, see :func:`group_split`).
        link_on: what keeps pairs together in the split: ``group`` and/or the normalised ``query``,
            ``positive``, ``negative`` texts.
        batch_size: pairs per batch (each query's negatives are the other positives of the batch).
        num_workers: DataLoader workers (they tokenize).
        apt_update: for ``debian``, run ``apt-get update -o Acquire::Languages=en`` when the descriptions are missing.
        seed: the subset and the split.
    """

    def __init__(self, source: str = "debian", max_pairs: int | None = None, test_fraction: float = 0.1,
                 link_on: list[str] | None = None, batch_size: int = 64, num_workers: int = 0,
                 apt_update: bool = False, seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.tokenizer: Tokenize | None = None
        self.pairs: list[TextPair] = []
        self.train_pairs: list[TextPair] = []
        self.test_pairs: list[TextPair] = []
        self.split = None

    def setup(self, stage: str | None = None) -> None:
        if self.split is not None:
            return
        hp = self.hparams
        pairs = debian_description_pairs(update=hp.apt_update) if hp.source == "debian" else read_pairs(hp.source)
        if hp.max_pairs is not None and hp.max_pairs < len(pairs):
            pairs = random.Random(hp.seed).sample(pairs, hp.max_pairs)
        self.pairs = pairs
        self.split = group_split(pairs, hp.test_fraction, seed=hp.seed, link_on=hp.link_on or LINKS)
        self.train_pairs = [pairs[i] for i in self.split.train]
        self.test_pairs = [pairs[i] for i in self.split.test]
        if len(self.train_pairs) < hp.batch_size:
            raise ValueError(f"{len(self.train_pairs)} training pairs are fewer than one batch of {hp.batch_size}; "
                             "use more pairs or a smaller --data.batch_size")
        if not self.test_pairs:
            raise ValueError("the split left no test pairs; raise --data.test_fraction or use more pairs")

    def training_texts(self) -> Iterator[str]:
        """Every text of the training pairs (what the built-in tokenizer is trained on)."""
        for pair in self.train_pairs:
            yield pair.query
            yield pair.positive
            if pair.negative is not None:
                yield pair.negative

    def train_dataloader(self) -> DataLoader:
        if self.tokenizer is None:
            raise RuntimeError("the datamodule has no tokenizer: set dm.tokenizer = encoder.tokenizer (TextSiamese "
                               "does so in its setup)")
        return DataLoader(self.train_pairs, batch_size=self.hparams.batch_size, shuffle=True, drop_last=True,
                          num_workers=self.hparams.num_workers, collate_fn=PairCollate(self.tokenizer),
                          persistent_workers=self.hparams.num_workers > 0)
