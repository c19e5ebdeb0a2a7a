"""``TextSiamese``: one shared text encoder for queries and documents, trained with a pair loss.

Both sides of a pair go through the same encoder (Sentence-BERT's bi-encoder), so a corpus is embedded
once and searched by cosine similarity. Losses: ``infonce`` (in-batch negatives, queries -> documents, plus
hard negatives when the batch has them), ``symmetric`` (both directions), ``cosine`` (regression on the
pair ``score``) and ``contrastive`` (Hadsell's margin loss on cosine distance, ``score`` > 0.5 = same).
Pairs whose queries or positives are the same text are not each other's negatives
(``mask_duplicates``). AdamW with a linear warm-up over the first ``warmup`` fraction of steps, then linear decay to 0.

Example:
    >>> model = TextSiamese(encoder="builtin", loss="symmetric", temperature=0.05)
    >>> pl.Trainer(max_epochs=3).fit(model, datamodule=TextPairDataModule("debian"))
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor

from ssl_siamese.losses.metric import ContrastiveLoss
from ssl_siamese.text.encoder import build_text_encoder
from ssl_siamese.text.losses import CosineSimilarityLoss, InBatchNegativesLoss

LOSSES = ("infonce", "symmetric", "cosine", "contrastive")


def sparse_all_reduce_available() -> bool:
    """True in one process and under the gloo backend; False under NCCL and the others (no sparse all-reduce)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return True
    return torch.distributed.get_world_size() == 1 or torch.distributed.get_backend() == "gloo"


class TextSiamese(pl.LightningModule):
    """A text bi-encoder trained on pairs (see the module docstring for the losses).

    ``encoder``: ``"builtin"``, ``"hashed"``, a Hugging Face model name or folder, or a sentence-transformers
    folder (:func:`ssl_siamese.text.encoder.build_text_encoder`, the names of :mod:`ssl_siamese.text.registry`);
    ``pooling``, ``normalize`` and ``max_length`` apply to the Hugging Face case, ``kind``, ``dim``, ``vocab_size``,
    ``bigram_buckets``, ``layers`` and ``heads`` to the built-in one, ``dim``, ``buckets``, ``word_ngrams`` and
    ``char_ngrams`` to ``"hashed"`` (:class:`~ssl_siamese.text.hashed_bag.HashedBagEncoder`). ``lr`` is the
    optimizer's peak learning rate: AdamW's, or SparseAdam's (no weight decay) for an encoder with sparse gradients
    (``"hashed"``).
    """

    def __init__(self, encoder: str = "builtin", pooling: str = "mean", normalize: bool = False,
                 max_length: int = 128, kind: str = "bag", dim: int = 256, vocab_size: int = 8000,
                 bigram_buckets: int = 32768, layers: int = 2, heads: int = 4, local_files_only: bool = False,
                 buckets: int = 2 ** 18, word_ngrams: int = 2, char_ngrams: int = 3,
                 loss: str = "symmetric", temperature: float = 0.05, margin: float = 0.5,
                 gather_distributed: bool = True, mask_duplicates: bool = True, lr: float = 1e-3, weight_decay: float = 0.01,
                 warmup: float = 0.1) -> None:
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
        self.save_hyperparameters()
        self.encoder = build_text_encoder(encoder, pooling=pooling, normalize=normalize, max_length=max_length,
                                          kind=kind, dim=dim, vocab_size=vocab_size, bigram_buckets=bigram_buckets,
                                          layers=layers, heads=heads, local_files_only=local_files_only,
                                          buckets=buckets, word_ngrams=word_ngrams, char_ngrams=char_ngrams)
        if loss in ("infonce", "symmetric"):
            self.loss_fn = InBatchNegativesLoss(temperature, symmetric=loss == "symmetric",
                                                gather_distributed=gather_distributed)
        elif loss == "cosine":
            self.loss_fn = CosineSimilarityLoss()
        else:
            self.loss_fn = ContrastiveLoss(margin=margin, metric="cosine")

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        return self.encoder(features)

    def setup(self, stage: str) -> None:
        """Hand the encoder's tokenizer to a datamodule that has none (training the built-in one if needed); under
        DDP on a backend that cannot all-reduce sparse tensors (NCCL), give a sparse encoder dense gradients."""
        if self.encoder.sparse_gradients and not sparse_all_reduce_available():
            self.encoder.use_sparse_gradients(False)
            rank_zero_info("the hashed encoder's table gets dense gradients and Adam: the DDP backend "
                           f"({torch.distributed.get_backend()}) cannot all-reduce sparse ones (gloo can)")
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is None or getattr(datamodule, "tokenizer", "absent") is not None:
            return
        if not self.encoder.has_tokenizer:
            self.encoder.fit_tokenizer(datamodule.training_texts())
        datamodule.tokenizer = self.encoder.tokenizer

    def pair_loss(self, batch: dict[str, Any]) -> Tensor:
        """The loss of one collated batch (:class:`ssl_siamese.text.pairs.PairCollate`)."""
        queries, positives = self.encoder(batch["query"]), self.encoder(batch["positive"])
        if self.hparams.loss in ("cosine", "contrastive"):
            if "score" not in batch:
                raise ValueError(f"loss {self.hparams.loss!r} needs a score for every pair; the data has none "
                                 "(use --model.loss infonce or symmetric for unscored pairs)")
            if self.hparams.loss == "cosine":
                return self.loss_fn(queries, positives, batch["score"])
            return self.loss_fn(queries, positives, batch["score"] > 0.5)
        negatives = self.encoder(batch["negative"]) if "negative" in batch else None
        keys = batch.get("keys") if self.hparams.mask_duplicates else None
        return self.loss_fn(queries, positives, negatives, keys=keys)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss = self.pair_loss(batch)
        query = batch["query"]  # flat features with "offsets" (hashed bag), or padded "input_ids" (B, L)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(query.get("offsets", query["input_ids"])))
        return loss

    def configure_optimizers(self) -> Any:
        decay = [p for n, p in self.named_parameters() if p.ndim > 1 and "embedding" not in n]
        rest = [p for n, p in self.named_parameters() if not (p.ndim > 1 and "embedding" not in n)]
        if self.encoder.sparse_gradients:  # only the rows a batch uses are updated
            optimizer = torch.optim.SparseAdam(list(self.parameters()), lr=self.hparams.lr)
        elif getattr(self.encoder, "use_sparse_gradients", None) is not None:  # the hashed table, made dense (NCCL)
            optimizer = torch.optim.Adam(list(self.parameters()), lr=self.hparams.lr)
        else:
            optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": self.hparams.weight_decay},
                                           {"params": rest, "weight_decay": 0.0}], lr=self.hparams.lr)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = int(self.hparams.warmup * total)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return max(0.0, (total - step) / max(total - warmup, 1))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
