"""Embedding-collapse monitor: the spread of L2-normalised embeddings.

Example:
    >>> trainer = pl.Trainer(callbacks=[CollapseMonitor()])   # logs train/embedding_std
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from lightly.utils.debug import std_of_l2_normalized


class CollapseMonitor(pl.Callback):
    """Logs ``train/embedding_std``: per-dimension std of normalised embeddings times sqrt(dim).

    Uniformly spread embeddings give about 1.0; a collapse to one point gives 0 (the SimSiam paper's
    diagnostic, Fig. 2). Reads the ``embeddings`` that ``training_step`` returns; costs one reduction.
    """

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if not isinstance(outputs, dict) or outputs.get("embeddings") is None:
            return
        z = outputs["embeddings"].detach().float()
        std = std_of_l2_normalized(z) * z.shape[1] ** 0.5  # lightly's diagnostic, scaled so uniform is ~1
        pl_module.log("train/embedding_std", std, prog_bar=False)
