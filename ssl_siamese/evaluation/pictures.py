"""Pictures of the embedding during training: a PCA scatter of the queries and a nearest-neighbour grid.

Like ``KNNEvaluation`` it reads what ``validation_step`` returns (loader 0: bank, loader 1: queries,
through ``ValidationFeatures``), but keeps only the first ``max_queries`` queries and ``max_bank`` bank
items, on the CPU. Every
``every_n_epochs`` validations, and once more at the end of fit if the last one was not drawn, it logs
``pictures/embedding_pca`` and ``pictures/neighbours`` through ``log_figure`` (W&B when present, and
PNGs in ``<trainer.default_root_dir>/pictures``, one file per drawing: ``embedding_pca_epoch003.png`` and
``neighbours_epoch003.png`` after 3 training epochs, ``..._epoch000.png`` before training). The grid needs the raw images, taken from
``trainer.datamodule.query_data.images`` / ``bank_data.images`` by position, so it is drawn only when
the datamodule has them and on a single process (a distributed sampler reorders the positions).
With W&B it also logs ``pictures/embeddings``, a Table of the first ``table_rows`` queries (thumbnail, label,
PCA, nearest neighbours, the embedding as columns for W&B's 2D Projection panel; see ``wandb_media``).

Example:
    >>> trainer = pl.Trainer(callbacks=[KNNEvaluation(), EmbeddingPictures(every_n_epochs=10)])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from ssl_siamese.evaluation.features import BANK, QUERIES, ValidationFeatures
from ssl_siamese.evaluation.plots import (
    embedding_projection_figure,
    log_figure,
    neighbour_grid_figure,
)
from ssl_siamese.evaluation.wandb_media import embedding_table, log_table, wandb_loggers


class EmbeddingPictures(pl.Callback):
    """Log a PCA projection of query features and a grid of queries with their nearest bank images.

    Args:
        every_n_epochs: draw after every n-th validation (and at the end of fit).
        max_queries, max_bank: how many query / bank features to keep (the first ones, in loader order).
        grid_queries, neighbours: rows and neighbours per row of the grid.
        table_rows: queries in the W&B embeddings Table (0: no table).
    """

    def __init__(self, every_n_epochs: int = 10, max_queries: int = 2000, max_bank: int = 10000,
                 grid_queries: int = 8, neighbours: int = 8, table_rows: int = 500) -> None:
        self.every_n_epochs, self.table_rows = every_n_epochs, table_rows
        self.grid_queries, self.neighbours = grid_queries, neighbours
        self.saved: list[Path] = []
        self.features = ValidationFeatures({BANK: max_bank, QUERIES: max_queries}, cpu=True)
        self._collected: dict[str, Tensor] | None = None
        self._collected_epoch = 0  # training epochs completed when the features were collected
        self._drawn = True

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.features.reset()

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if not trainer.sanity_checking:
            self.features.add(outputs, dataloader_idx)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        (bank, bank_labels), (query, query_labels) = self.features.take(BANK), self.features.take(QUERIES)
        self.features.reset()
        if trainer.sanity_checking or len(query) == 0:
            return
        self._collected = {"query": query, "query_labels": query_labels, "bank": bank, "bank_labels": bank_labels}
        # validation inside fit closes epoch current_epoch (0-based); trainer.validate comes after it
        self._collected_epoch = trainer.current_epoch + (1 if trainer.state.fn == "fit" else 0)
        self._drawn = False
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0 or trainer.state.fn != "fit":
            self.draw(trainer)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._drawn:
            self.draw(trainer)

    def draw(self, trainer: pl.Trainer) -> None:
        """Log the pictures of the last collected features (rank zero only)."""
        self._drawn = True
        if self._collected is None or not trainer.is_global_zero:
            return
        data = self._collected
        datamodule = getattr(trainer, "datamodule", None)
        query_data, bank_data = (getattr(datamodule, name, None) for name in ("query_data", "bank_data"))
        class_names = list(getattr(query_data, "classes", None) or []) or None
        out_dir = Path(trainer.default_root_dir) / "pictures"
        epoch = self._collected_epoch
        projection = embedding_projection_figure(data["query"], data["query_labels"], class_names,
                                                 title=f"Query features (PCA) after {epoch} epochs")
        self.saved.append(log_figure(trainer, "pictures/embedding_pca", projection, out_dir,
                                     filename=f"embedding_pca_epoch{epoch:03d}.png"))
        can_grid = (len(data["bank"]) > 0 and trainer.world_size == 1
                    and getattr(query_data, "images", None) is not None
                    and getattr(bank_data, "images", None) is not None)
        if can_grid:
            self.saved.append(log_figure(trainer, "pictures/neighbours",
                                         self._grid(data, query_data, bank_data, class_names), out_dir,
                                         filename=f"neighbours_epoch{epoch:03d}.png"))
        if self.table_rows > 0 and wandb_loggers(trainer):
            rows = min(self.table_rows, len(data["query"]))
            images = query_data.images[:rows] if can_grid else None  # positions hold on one process only
            log_table(trainer, "pictures/embeddings", embedding_table(
                data["query"][:rows], data["query_labels"][:rows], images, class_names))

    def _grid(self, data: dict[str, Tensor], query_data: Any, bank_data: Any,
              class_names: list[str] | None) -> Any:
        """Evenly spaced queries and their most cosine-similar bank items."""
        count = min(self.grid_queries, len(data["query"]))
        rows = torch.linspace(0, len(data["query"]) - 1, count).long()
        similarity = F.normalize(data["query"][rows], dim=1) @ F.normalize(data["bank"], dim=1).T
        nearest = similarity.topk(min(self.neighbours, len(data["bank"])), dim=1).indices
        return neighbour_grid_figure(query_data.images[rows], bank_data.images[nearest],
                                     data["query_labels"][rows], data["bank_labels"][nearest], class_names)
