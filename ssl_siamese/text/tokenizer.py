"""A WordPiece tokenizer trained on the user's own corpus (Hugging Face ``tokenizers``), for the built-in encoder.

Example:
    >>> tokenizer = train_tokenizer(["first text", "second text"] * 100, vocab_size=2000)
    >>> batch = PaddedTokenizer(tokenizer, max_length=64)(["a text", "a longer text"])
    >>> batch["input_ids"].shape, batch["attention_mask"].shape    # (2, L), padded with id 0
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from torch import Tensor

PAD, UNK = "[PAD]", "[UNK]"  # ids 0 and 1


def train_tokenizer(texts: Iterable[str], vocab_size: int = 8000, lowercase: bool = True) -> Tokenizer:
    """A WordPiece tokenizer (BERT's normalisation and word splitting) with at most ``vocab_size`` tokens.

    ``[PAD]`` is id 0 and ``[UNK]`` id 1; the other ids follow the tokens' text. A checkpoint keeps its
    tokenizer (the built-in encoder's state dict), so a resumed run does not depend on retraining it.
    """
    tokenizer = Tokenizer(models.WordPiece(unk_token=UNK))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=[PAD, UNK], show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    # The trainer numbers tokens of equal frequency in a varying order: renumber them by their text, so the
    # same token set always gets the same ids. Ties can still change the set itself: tokenizers numbers its
    # "##" pieces in hash-map order and breaks equal merge counts by those numbers (huggingface/tokenizers
    # issue 1794, three trainings on 6,000 Debian descriptions gave two vocabularies); a checkpoint keeps the
    # tokenizer it trained with, so resuming and exporting do not depend on it.
    learned = sorted(set(tokenizer.get_vocab()) - {PAD, UNK})
    tokenizer.model = models.WordPiece({token: i for i, token in enumerate([PAD, UNK, *learned])}, unk_token=UNK)
    return tokenizer


class PaddedTokenizer:
    """Texts -> ``{"input_ids", "attention_mask"}`` ``(B, L)`` long tensors, truncated to ``max_length`` and
    padded with 0 to the longest text of the batch (at least one token per text). Picklable (DataLoader workers).
    """

    def __init__(self, tokenizer: Tokenizer, max_length: int = 128) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, texts: Sequence[str]) -> dict[str, Tensor]:
        ids = [encoding.ids[:self.max_length] or [1] for encoding in self.tokenizer.encode_batch(list(texts))]
        length = max((len(row) for row in ids), default=1)
        input_ids = torch.zeros(len(ids), length, dtype=torch.long)
        for i, row in enumerate(ids):
            input_ids[i, :len(row)] = torch.tensor(row)
        mask = torch.zeros_like(input_ids)
        for i, row in enumerate(ids):
            mask[i, :len(row)] = 1
        return {"input_ids": input_ids, "attention_mask": mask}
