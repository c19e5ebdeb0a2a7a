"""Pair files (JSONL/CSV/TSV), the collate, the group/duplicate-keeping split and Debian's description format."""

from __future__ import annotations

import json
import random

import pytest
import torch

from ssl_siamese.text.debian import DebianDescriptionsMissing, parse_stanzas, split_description, translation_files
from ssl_siamese.text.pairs import PairCollate, TextPair, read_pairs
from ssl_siamese.text.split import group_split, normalise_text

ROWS = [{"query": "image viewer", "positive": "A fast image viewer.", "negative": "An audio player.", "score": 1,
         "group": "eog"},
        {"query": "audio player", "positive": "Plays music.", "negative": "Edits text.", "score": 0.5, "group": "mpv"}]


def test_read_pairs_from_jsonl_csv_and_tsv(tmp_path):
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS) + "\n\n")
    header = "query,positive,negative,score,group\n"
    (tmp_path / "p.csv").write_text(header + "".join(
        f'{r["query"]},"{r["positive"]}",{r["negative"]},{r["score"]},{r["group"]}\n' for r in ROWS))
    (tmp_path / "p.tsv").write_text(header.replace(",", "\t") + "".join(
        "\t".join(str(r[k]) for k in ("query", "positive", "negative", "score", "group")) + "\n" for r in ROWS))
    expected = [TextPair(r["query"], r["positive"], r["negative"], float(r["score"]), r["group"]) for r in ROWS]
    for name in ("p.jsonl", "p.csv", "p.tsv"):
        assert read_pairs(tmp_path / name) == expected


def test_read_pairs_says_what_is_wrong(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"query": "q"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: missing or empty positive"):
        read_pairs(bad)
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps({"query": "q", "positive": "p"}) + "\n")
    with pytest.raises(ValueError, match="1 of 2 records have a negative"):
        read_pairs(mixed)
    with pytest.raises(ValueError, match="unknown pair file type"):
        (tmp_path / "x.txt").write_text("q")
        read_pairs(tmp_path / "x.txt")
    with pytest.raises(FileNotFoundError):
        read_pairs(tmp_path / "absent.jsonl")


def test_collate_tokenizes_each_side_and_stacks_scores():
    def tokenize(texts):
        return {"input_ids": torch.tensor([[len(t)] for t in texts])}

    pairs = [TextPair(r["query"], r["positive"], r["negative"], float(r["score"])) for r in ROWS]
    batch = PairCollate(tokenize)(pairs)
    assert batch["query"]["input_ids"].flatten().tolist() == [12, 12]
    assert batch["negative"]["input_ids"].flatten().tolist() == [16, 11]
    assert batch["score"].tolist() == [1.0, 0.5]
    assert set(batch["keys"]) == {"query", "positive", "negative"}  # the loss finds duplicate texts by these
    for field in batch["keys"]:
        texts = [getattr(p, field) for p in pairs]
        assert (batch["keys"][field][0] == batch["keys"][field][1]).item() == (texts[0] == texts[1])


def _random_pairs(n: int, seed: int = 0) -> list[TextPair]:
    rng = random.Random(seed)
    docs = [f"document number {i}" for i in range(n // 3)]
    return [TextPair(query=f"query {i}", positive=rng.choice(docs) if rng.random() < 0.5 else f"Unique doc {i}!",
                     group=f"g{rng.randrange(n // 4)}") for i in range(n)]


def test_split_keeps_groups_and_normalised_duplicates_on_one_side():
    pairs = _random_pairs(600)
    pairs.append(TextPair("another query", "DOCUMENT   number 1.", group="lonely"))  # a copy after normalising
    split = group_split(pairs, test_fraction=0.2, seed=3)
    assert sorted(split.train + split.test) == list(range(len(pairs)))
    side = {i: "test" for i in split.test} | {i: "train" for i in split.train}
    by_key: dict[tuple[str, str], set[str]] = {}
    for i, pair in enumerate(pairs):
        by_key.setdefault(("group", pair.group), set()).add(side[i])
        by_key.setdefault(("text", normalise_text(pair.positive)), set()).add(side[i])
    assert all(len(sides) == 1 for sides in by_key.values())
    assert 0.05 < len(split.test) / len(pairs) < 0.5
    assert "0 on both sides" in split.report


def test_split_is_deterministic_and_independent_of_the_order():
    pairs = _random_pairs(300)
    first = group_split(pairs, 0.3, seed=1)
    order = list(range(len(pairs)))
    random.Random(5).shuffle(order)
    shuffled = group_split([pairs[i] for i in order], 0.3, seed=1)
    assert sorted(pairs[order[i]].query for i in shuffled.test) == sorted(pairs[i].query for i in first.test)
    assert group_split(pairs, 0.3, seed=2).test != first.test


def test_debian_description_format():
    stanzas = parse_stanzas("Package: 0ad-data\nDescription-md5: 26\nDescription-en: Strategy game (data files)\n"
                            " 0 A.D. is a game\n of ancient warfare.\n .\n This package has the data.\n\n"
                            "Package: other\nDescription-en: Short only\n")
    assert [s["Package"] for s in stanzas] == ["0ad-data", "other"]
    assert split_description(stanzas[0]["Description-en"]) == (
        "Strategy game (data files)", "0 A.D. is a game of ancient warfare.\nThis package has the data.")
    assert split_description(stanzas[1]["Description-en"]) == ("Short only", "")


def test_missing_debian_descriptions_say_the_apt_command(tmp_path):
    with pytest.raises(DebianDescriptionsMissing, match=r"apt-get update -o Acquire::Languages=en"):
        translation_files(tmp_path)
