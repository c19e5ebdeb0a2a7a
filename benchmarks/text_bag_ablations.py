"""What moves the hashed bag on Debian's descriptions: one change at a time, BM25 and the hybrid in the same run.

The recipe (``benchmarks/text_retrieval.py``) is the reference; this script trains the same model
(:class:`~ssl_siamese.text.hashed_bag.HashedBagEncoder`, symmetric in-batch InfoNCE with duplicate texts
masked, SparseAdam, 5% warm-up then linear decay) in a plain loop, so that a variant is a flag and costs
a few CPU minutes, and prints where the errors are: queries only BM25 gets right, only the bag, neither,
and how many of the bag's misses rank a sibling (a package of the same source) first.

    python benchmarks/text_bag_ablations.py                          # the recipe's model, 4 epochs
    python benchmarks/text_bag_ablations.py --sibling_negatives 0.5  # one variant (see --help)
    python benchmarks/text_bag_ablations.py --quick                  # 3,000 pairs, seconds

Variants: ``--idf`` (features weighted by count x IDF), ``--feature_dropout P``, ``--word_share S`` (word
and character features pooled apart, mixed S : 1-S), ``--mlp H`` (a residual MLP after pooling),
``--heads K`` (K bags of ``--dim`` trained side by side, concatenated), ``--sibling_negatives P`` (each
query also gets a hard negative: with probability P a sibling's description), ``--group_batches F`` (a
fraction F of the batches made of whole source packages), ``--ict P`` (inverse-cloze pairs: a sentence of a
training description as the query, for a fraction P of the descriptions).
"""

from __future__ import annotations

import argparse
import random
import re
import time

import numpy as np
import torch
import torch.nn.functional as F

from ssl_siamese.evaluation.ranking import ranking_metrics
from ssl_siamese.recipes.text_siamese import evaluation_set
from ssl_siamese.text.datamodule import TextPairDataModule
from ssl_siamese.text.hashed_bag import HashedBagEncoder
from ssl_siamese.text.losses import InBatchNegativesLoss, text_keys
from ssl_siamese.text.pairs import TextPair
from ssl_siamese.text.retrieval import bm25_search, dense_search, reciprocal_rank_fusion

SENTENCE = re.compile(r"(?<=[.!?])\s+")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="3,000 pairs, 20%% held out, dim 64, 2 epochs")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch_size", type=int, default=1024)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--temperature", type=float, default=0.05)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--buckets", type=int, default=65536)
    p.add_argument("--seed", type=int, default=0, help="initialisation and batch order (not the split)")
    p.add_argument("--split_seed", type=int, default=0)
    p.add_argument("--idf", action="store_true")
    p.add_argument("--feature_dropout", type=float, default=0.0)
    p.add_argument("--word_share", type=float, default=None)
    p.add_argument("--mlp", type=int, default=0)
    p.add_argument("--heads", type=int, default=1)
    p.add_argument("--sibling_negatives", type=float, default=0.0)
    p.add_argument("--group_batches", type=float, default=0.0)
    p.add_argument("--ict", type=float, default=0.0)
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.batch_size, args.dim, args.buckets = 2, 128, 64, 16384
    return args


class Bag(torch.nn.Module):
    """The hashed bag with the variants' pooling: K heads, IDF weights, feature dropout, word/char mix, MLP."""

    def __init__(self, args: argparse.Namespace, idf: torch.Tensor | None = None) -> None:
        super().__init__()
        self.args, self.idf = args, idf
        self.encoder = HashedBagEncoder(dim=args.dim * args.heads, buckets=args.buckets)
        self.mlp = None
        if args.mlp:
            self.mlp = torch.nn.Sequential(torch.nn.Linear(args.dim, args.mlp), torch.nn.GELU(),
                                           torch.nn.Linear(args.mlp, args.dim))
            torch.nn.init.zeros_(self.mlp[2].weight)
            torch.nn.init.zeros_(self.mlp[2].bias)

    def pool(self, features: dict[str, torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
        return self.encoder({**features, "weights": weights})

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(B, heads, dim)``, each head L2-normalised."""
        a, ids, weights = self.args, features["input_ids"], features["weights"]
        if self.idf is not None:
            weights = weights * self.idf[ids]
        if a.feature_dropout and self.training:
            weights = weights * (torch.rand(len(ids)) >= a.feature_dropout)
        if a.word_share is None:
            pooled = self.pool(features, weights)
        else:
            words = (ids < a.buckets).float()
            pooled = sum(share * F.normalize(self.pool(features, weights * part), dim=1)
                         for part, share in ((words, a.word_share), (1 - words, 1 - a.word_share)))
        heads = pooled.view(len(pooled), a.heads, a.dim)
        if self.mlp is not None:
            heads = 4 * F.normalize(heads, dim=-1)
            heads = heads + self.mlp(heads)
        return F.normalize(heads, dim=-1)

    def embed(self, texts: list[str]) -> torch.Tensor:
        self.eval()
        with torch.no_grad():
            out = torch.cat([self(self.encoder.tokenizer(texts[i:i + 2048])).flatten(1)
                             for i in range(0, len(texts), 2048)])
        self.train()
        return out


def inverse_cloze(pairs: list[TextPair], fraction: float, rng: random.Random) -> list[TextPair]:
    """A sentence of the description as the query; the description without it (90%) or whole as the positive."""
    out = []
    for pair in pairs:
        sentences = [s for s in SENTENCE.split(pair.positive.replace("\n", " ")) if len(s.split()) >= 4]
        if rng.random() >= fraction or len(sentences) < 2:
            continue
        k = rng.randrange(len(sentences))
        rest = " ".join(sentences[:k] + sentences[k + 1:]) if rng.random() < 0.9 else pair.positive
        out.append(TextPair(sentences[k], rest, group=pair.group))
    return out


def batches(pairs: list[TextPair], args: argparse.Namespace, rng: random.Random) -> list[list[int]]:
    """Shuffled batches; with ``group_batches`` some are cut from the pairs ordered by source package."""
    size, order = args.batch_size, list(range(len(pairs)))
    rng.shuffle(order)
    chunk = [order[i:i + size] for i in range(0, len(order) - size + 1, size)]
    if not args.group_batches:
        return chunk
    groups: dict[str | None, list[int]] = {}
    for i, pair in enumerate(pairs):
        groups.setdefault(pair.group, []).append(i)
    members = list(groups.values())
    rng.shuffle(members)
    packed = [i for group in members for i in group]
    grouped = [packed[i:i + size] for i in range(0, len(packed) - size + 1, size)]
    rng.shuffle(grouped)
    grouped = grouped[:int(len(chunk) * args.group_batches)]
    used = {i for b in grouped for i in b}
    rest = [i for i in order if i not in used]
    mixed = grouped + [rest[i:i + size] for i in range(0, len(rest) - size + 1, size)]
    rng.shuffle(mixed)
    return mixed


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    args = parse(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    rng = random.Random(args.seed)
    dm = TextPairDataModule("debian", max_pairs=3000 if args.quick else None,
                            test_fraction=0.2 if args.quick else 0.06, batch_size=args.batch_size, seed=args.split_seed)
    dm.setup("fit")
    train = dm.train_pairs
    queries, documents, relevant = evaluation_set(dm.test_pairs)
    model = Bag(args, None)
    probe = model.encoder.tokenizer
    if args.idf:
        counts = np.zeros(probe.num_rows)
        texts = [t for p in train for t in (p.query, p.positive)]
        for ids, _ in probe.features(texts):
            counts[ids] += 1
        model.idf = torch.tensor(np.log((len(texts) + 1) / (counts + 1)) + 1, dtype=torch.float32)
    loss_fn = InBatchNegativesLoss(args.temperature, symmetric=True)
    sparse = torch.optim.SparseAdam([model.encoder.embedding.weight], lr=args.lr)
    dense = torch.optim.AdamW(model.mlp.parameters(), lr=args.lr / 5) if model.mlp is not None else None
    bm25 = bm25_search(queries, documents, k=100)
    siblings: dict[str | None, list[int]] = {}
    for i, pair in enumerate(train):
        siblings.setdefault(pair.group, []).append(i)

    def evaluate() -> dict[str, dict[str, float]]:
        ranked = dense_search(model.embed(queries), model.embed(documents), k=100)
        return {"bm25": ranking_metrics(bm25, relevant), "dense": ranking_metrics(ranked, relevant),
                "hybrid_rrf": ranking_metrics(reciprocal_rank_fusion([ranked, bm25], k=100), relevant),
                "ranked": ranked}

    rows = {"dense_at_init": evaluate()["dense"]}
    steps = args.epochs * int(len(train) * (1 + 0.7 * args.ict)) // args.batch_size
    warmup, step, started, started_cpu = max(int(0.05 * steps), 1), 0, time.perf_counter(), time.process_time()
    for epoch in range(args.epochs):
        pairs = train + inverse_cloze(train, args.ict, rng) if args.ict else train
        for batch in batches(pairs, args, rng):
            lr = args.lr * ((step + 1) / warmup if step < warmup else max(0.02, (steps - step) / (steps - warmup)))
            for optimizer in filter(None, (sparse, dense)):
                for group in optimizer.param_groups:
                    group["lr"] = lr
            qs, ps = [pairs[i].query for i in batch], [pairs[i].positive for i in batch]
            keys = {"query": text_keys(qs), "positive": text_keys(ps)}
            q, p = model(probe(qs)), model(probe(ps))
            n = None
            if args.sibling_negatives:
                negatives = []
                for i in batch:
                    near = [j for j in siblings.get(pairs[i].group, []) if train[j].positive != pairs[i].positive]
                    pick = rng.choice(near) if near and rng.random() < args.sibling_negatives else rng.randrange(len(train))
                    negatives.append(train[pick].positive)
                n, keys["negative"] = model(probe(negatives)), text_keys(negatives)
            loss = sum(loss_fn(q[:, h], p[:, h], None if n is None else n[:, h], keys=keys) for h in range(args.heads))
            for optimizer in filter(None, (sparse, dense)):
                optimizer.zero_grad()
            loss.backward()
            for optimizer in filter(None, (sparse, dense)):
                optimizer.step()
            step += 1
        print(f"epoch {epoch}: loss {loss.item():.3f}, {time.perf_counter() - started:.0f} s", flush=True)
    fit_cpu = time.process_time() - started_cpu
    final = evaluate()
    rows.update({name: final[name] for name in ("bm25", "dense", "hybrid_rrf")})
    bag_right = [final["ranked"][i, 0].item() in relevant[i] for i in range(len(queries))]
    bm25_right = [bm25[i, 0].item() in relevant[i] for i in range(len(queries))]
    group_of = {p.positive: p.group for p in dm.test_pairs}
    query_group = {p.query: p.group for p in dm.test_pairs}
    sibling_misses = sum(1 for i, right in enumerate(bag_right) if not right and
                         group_of[documents[final["ranked"][i, 0].item()]] == query_group[queries[i]])
    print("| method | R@1 | R@10 | MRR@10 | nDCG@10 |\n|---|---|---|---|---|")
    for name, values in rows.items():
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values.values()) + " |")
    both = sum(a and b for a, b in zip(bag_right, bm25_right))
    only_bag = sum(a and not b for a, b in zip(bag_right, bm25_right))
    only_bm25 = sum(b and not a for a, b in zip(bag_right, bm25_right))
    print(f"top-1 right: both {both}, bag only {only_bag}, BM25 only {only_bm25}, neither "
          f"{len(queries) - both - only_bag - only_bm25} of {len(queries)} (either: "
          f"{(both + only_bag + only_bm25) / len(queries):.3f}); the bag's misses with a sibling first: "
          f"{sibling_misses}; training {fit_cpu:.0f} s CPU")
    return rows


if __name__ == "__main__":
    main()
