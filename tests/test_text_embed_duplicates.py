"""Texts through the embed recipe into an EmbeddingIndex, and the duplicate finder against brute force and
on a tiny corpus with known duplicates (through ``python -m ssl_siamese.recipes.duplicates``)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ssl_siamese.search.duplicates import find_duplicates
from ssl_siamese.search.embeddings import EmbeddingIndex
from ssl_siamese.recipes import duplicates, embed
from ssl_siamese.text.embed_texts import read_texts
from ssl_siamese.text.export import export_text_encoder, load_text_encoder
from ssl_siamese.text.hashed_bag import HashedBagEncoder

REPO = Path(__file__).resolve().parents[1]
CORPUS = ["GNU Image Manipulation Program", "image viewer for the GNOME desktop", "gnu image manipulation program",
          "command-line audio player", "", "Image viewer for the GNOME desktop", "library for parsing XML files",
          "Command-line   audio player", "GNU Image Manipulation Program", "fonts for mathematics"]
# Same words after lower-casing and collapsing spaces: the hashed features, hence the embeddings, are equal.
KNOWN = {(0, 2), (0, 8), (2, 8), (1, 5), (3, 7)}


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return export_text_encoder(HashedBagEncoder(dim=32, buckets=4096), tmp_path_factory.mktemp("m") / "encoder")


@pytest.mark.parametrize("seed", [0, 1])
def test_find_duplicates_equals_float64_brute_force(seed):
    generator = torch.Generator().manual_seed(seed)
    vectors = torch.randn(300, 8, generator=generator, dtype=torch.float64)
    vectors[150:170] = vectors[:20] + 0.05 * torch.randn(20, 8, generator=generator, dtype=torch.float64)
    vectors[5] = 0.0  # a zero vector is similar to nothing
    unit = torch.nn.functional.normalize(vectors, dim=1)
    cosine = unit @ unit.T
    threshold = 0.97
    expected = {(i, j) for i in range(300) for j in range(i + 1, 300) if cosine[i, j] >= threshold + 1e-5}
    borderline = {(i, j) for i in range(300) for j in range(i + 1, 300) if abs(cosine[i, j] - threshold) <= 1e-5}
    found = find_duplicates(vectors.float(), threshold, chunk_size=64, progress=False)
    pairs = {(i, j) for i, j, _ in found}
    assert expected <= pairs <= expected | borderline and len(expected) >= 20
    assert [s for _, _, s in found] == sorted((s for _, _, s in found), reverse=True)
    for i, j, score in found:
        assert i < j and score == pytest.approx(cosine[i, j].item(), abs=1e-5)


def test_embed_a_text_file_and_search_it(model_folder, tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS) + "\n", encoding="utf-8")
    out = tmp_path / "texts.npz"
    summary = embed.main(["--backbone", str(model_folder), "--data", str(corpus), "--out", str(out)])
    assert summary["num_texts"] == 9 and "Embedded 9 texts" in capsys.readouterr().out  # the blank line skipped
    index = EmbeddingIndex.load(out)
    with np.load(out) as saved:
        assert saved["lines"].tolist() == [1, 2, 3, 4, 6, 7, 8, 9, 10]
    encoder = load_text_encoder(model_folder)
    scores, indices = index.search(encoder.encode(["Library for parsing XML files"]), k=3)
    assert index.ids[indices[0, 0]] == "library for parsing XML files" and scores[0, 0] > 0.999
    assert scores[0, 1] < 0.999


def test_embed_jsonl_with_field_and_id_field(model_folder, tmp_path):
    records = [{"id": f"p{i}", "description": text} for i, text in enumerate(CORPUS) if text] + [{"id": "none"}]
    data = tmp_path / "corpus.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in records), encoding="utf-8")
    texts, ids, _ = read_texts(data, "description", "id")
    assert len(texts) == 9 and ids[:2] == ["p0", "p1"]
    out = tmp_path / "texts.npz"
    embed.main(["--backbone", str(model_folder), "--data", str(data), "--out", str(out), "--field", "description",
                "--id_field", "id"])
    assert EmbeddingIndex.load(out).ids == ids
    with pytest.raises(SystemExit, match="no record has a non-empty 'text'"):
        embed.main(["--backbone", str(model_folder), "--data", str(data), "--out", str(out)])


def test_duplicate_finder_lists_the_known_duplicates(model_folder, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(text for text in CORPUS if text) + "\n", encoding="utf-8")
    known = {tuple(sorted((i - (i > 4), j - (j > 4)))) for i, j in KNOWN}  # the blank line 5 is not in this file
    out = tmp_path / "pairs.tsv"
    done = subprocess.run([sys.executable, "-m", "ssl_siamese.recipes.duplicates", "--model", str(model_folder),
                           "--data", str(corpus), "--threshold", "0.999", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{len(known)} pairs with cosine >= 0.999 among 9 items" in done.stdout
    with out.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert {(int(r["i"]), int(r["j"])) for r in rows} == known
    assert all(r["id_i"].lower().split() == r["id_j"].lower().split() for r in rows)
    # The same pairs from the embed recipe's .npz (the route images take).
    npz = tmp_path / "texts.npz"
    embed.main(["--backbone", str(model_folder), "--data", str(corpus), "--out", str(npz)])
    summary = duplicates.run_duplicates(embeddings=npz, threshold=0.999, progress=False)
    assert {(i, j) for _, i, j, _, _ in summary["pairs"]} == known
