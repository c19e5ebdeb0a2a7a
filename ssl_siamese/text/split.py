"""A deterministic train/test split of text pairs that keeps groups and duplicate texts on one side.

Pairs are linked when they share a group or a text (query, positive or negative) after normalisation
(Unicode NFKC, case-folded, punctuation and spacing collapsed); each connected component goes wholly to
one side, chosen by a seeded hash of the component, so the split does not depend on the order of the file.
Test queries then never have their document, a copy of it, or a sibling from the same group in training.

Example:
    >>> split = group_split(pairs, test_fraction=0.1, seed=0)
    >>> train = [pairs[i] for i in split.train]; print(split.report)
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from ssl_siamese.text.pairs import TextPair

LINKS = ("group", "query", "positive", "negative")


def normalise_text(text: str) -> str:
    """NFKC, case-folded, every run of non-alphanumeric characters one space, stripped."""
    return re.sub(r"[\W_]+", " ", unicodedata.normalize("NFKC", text).casefold()).strip()


@dataclass(frozen=True)
class Split:
    """Indices of the train and test pairs, the component id of each pair, and a short text report."""

    train: list[int]
    test: list[int]
    components: list[int]
    report: str


def _components(pairs: Sequence[TextPair], link_on: Sequence[str]) -> list[int]:
    parent = list(range(len(pairs)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[tuple[str, str], int] = {}
    for i, pair in enumerate(pairs):
        for field in link_on:
            value = getattr(pair, field)
            if value is None:
                continue
            key = ("group", value) if field == "group" else ("text", normalise_text(value))
            if key in first:
                parent[find(i)] = find(first[key])
            else:
                first[key] = i
    return [find(i) for i in range(len(pairs))]


def group_split(pairs: Sequence[TextPair], test_fraction: float = 0.1, seed: int = 0,
                link_on: Sequence[str] = LINKS) -> Split:
    """Split ``pairs`` so that no group and no normalised text of the fields ``link_on`` is on both sides.

    A component goes to test when a hash of (``seed``, its smallest normalised query) falls below
    ``test_fraction``; the sizes are therefore close to, not exactly, the fraction (the report says).
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    unknown = set(link_on) - set(LINKS)
    if unknown:
        raise ValueError(f"unknown link fields {sorted(unknown)}; choose from {', '.join(LINKS)}")
    components = _components(pairs, link_on)
    names: dict[int, str] = {}  # a component's smallest normalised query: the same whatever the file order
    for i, root in enumerate(components):
        query = normalise_text(pairs[i].query)
        names[root] = min(names.get(root, query), query)
    to_test = {}
    for root, name in names.items():
        digest = hashlib.sha1(f"{seed}\0{name}".encode()).digest()
        to_test[root] = int.from_bytes(digest[:8], "big") / 2 ** 64 < test_fraction
    test = [i for i, root in enumerate(components) if to_test[root]]
    train = [i for i, root in enumerate(components) if not to_test[root]]
    sizes = Counter(components)
    groups = {side: {pairs[i].group for i in idx if pairs[i].group is not None}
              for side, idx in (("train", train), ("test", test))}
    n_groups = len(groups["train"] | groups["test"])
    report = (f"split: {len(train)} train / {len(test)} test pairs ({len(test) / max(len(pairs), 1):.1%} test, "
              f"asked {test_fraction:.1%}); {len(sizes)} components linked by {', '.join(link_on)} "
              f"(largest {max(sizes.values(), default=0)} pairs, {sum(s > 1 for s in sizes.values())} with more "
              f"than one); {n_groups} groups, {len(groups['train'] & groups['test'])} on both sides")
    return Split(train=train, test=test, components=components, report=report)
