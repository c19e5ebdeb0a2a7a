"""The explorer page's data against independent references: float64 brute-force neighbours and duplicate pairs,
decoded thumbnails, the JSON inside the HTML, the packaged template, and the recipe's command-line checks.

The page itself runs in a real browser in ``test_explorer_browser.py``.
"""

from __future__ import annotations

import base64
import fnmatch
import io
import re
import shutil
import tarfile
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import needs_data_file
from PIL import Image

from ssl_siamese.evaluation.plots import pca_2d
from ssl_siamese.explorer import (Embeddings, explorer_data, load_embeddings, read_page_data, render_page,
                                  write_explorer)
from ssl_siamese.explorer.neighbours import near_duplicate_pairs, nearest_neighbours
from ssl_siamese.explorer.page import thumbnail_size
from ssl_siamese.explorer.projection import map_2d
from ssl_siamese.explorer.thumbnails import thumbnail_sheets

REPO = Path(__file__).resolve().parents[1]


def cosine64(features: np.ndarray) -> np.ndarray:
    unit = features.astype(np.float64) / np.linalg.norm(features.astype(np.float64), axis=1, keepdims=True)
    return unit @ unit.T


def features_with_copies(seed: int = 0) -> np.ndarray:
    """Random 16-d rows, where rows 1-7 copy row 0 (8 identical rows) and row 9 copies row 8."""
    features = np.random.default_rng(seed).normal(size=(120, 16)).astype(np.float32)
    features[1:8] = features[0]
    features[9] = features[8]
    return features


def decoded(text: str, dtype: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=np.dtype(dtype).newbyteorder("<"))


def test_neighbours_are_the_brute_force_ones_without_the_row_itself_even_among_copies():
    features = features_with_copies()
    indices, similarities = nearest_neighbours(features, k=5)
    cosine = cosine64(features)
    assert indices.shape == similarities.shape == (120, 5)
    for i in range(120):
        assert i not in indices[i]
        assert len(set(indices[i].tolist())) == 5
        others = np.delete(np.arange(120), i)
        best = np.sort(cosine[i, others])[::-1][:5]
        np.testing.assert_allclose(similarities[i], best, atol=1e-5)  # the k largest, best first
        np.testing.assert_allclose(cosine[i, indices[i]], similarities[i], atol=1e-5)  # each is what it says
    assert set(indices[0].tolist()) <= set(range(1, 8))  # copies of row 0 are its nearest
    assert indices[8, 0] == 9 and indices[9, 0] == 8


def test_neighbours_cap_k_at_the_other_rows():
    indices, similarities = nearest_neighbours(np.eye(3, dtype=np.float32), k=10)
    assert indices.shape == (3, 2) and sorted(indices[0].tolist()) == [1, 2]
    assert nearest_neighbours(np.ones((1, 4), dtype=np.float32), k=3)[0].shape == (1, 0)


@pytest.mark.parametrize("k", [2, 5])
def test_duplicate_pairs_are_every_pair_above_the_threshold_even_beyond_k(k):
    features = features_with_copies()
    features[20] = features[21] + 0.05  # a near copy (cosine ~0.999)
    indices, similarities = nearest_neighbours(features, k=k)
    pairs, total = near_duplicate_pairs(features, indices, similarities, threshold=0.99)
    cosine = cosine64(features)
    expected = {(i, j) for i in range(120) for j in range(i + 1, 120) if cosine[i, j] >= 0.99}
    assert len(expected) == 28 + 1 + 1 and total == len(expected)  # 8 copies: 28 pairs, more than k each
    assert set(zip(pairs.first.tolist(), pairs.second.tolist())) == expected
    assert np.all(pairs.first < pairs.second) and np.all(np.diff(pairs.similarity) <= 0)
    np.testing.assert_allclose(pairs.similarity, cosine[pairs.first, pairs.second], atol=1e-5)
    top, total = near_duplicate_pairs(features, indices, similarities, threshold=0.99, max_pairs=3)
    assert total == 30 and len(top.first) == 3 and tuple(top.first) == tuple(pairs.first[:3])


def test_thumbnail_sheets_hold_each_image_in_its_tile_and_grey_for_unreadable_files(tmp_path):
    rng = np.random.default_rng(0)
    files, images = [], []
    for i in range(6):
        image = np.kron(rng.integers(0, 256, size=(2, 2, 3)), np.ones((16, 16, 1))).astype(np.uint8)  # 4 blocks
        images.append(image)
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(image).save(files[-1])
    (tmp_path / "broken.png").write_bytes(b"not a png")
    files.insert(3, tmp_path / "broken.png")
    sheets, missing = thumbnail_sheets(files, size=32, quality=95, columns=2)  # 4 tiles a sheet: 2 sheets
    assert missing == [3] and len(sheets) == 2
    tiles = []
    for uri in sheets:
        assert uri.startswith("data:image/jpeg;base64,")
        sheet = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))
        tiles += [sheet[r * 32:(r + 1) * 32, c * 32:(c + 1) * 32] for r in range(sheet.shape[0] // 32) for c in range(2)]
    expected = images[:3] + [None] + images[3:]
    for tile, image in zip(tiles, expected):
        if image is None:
            assert abs(float(tile.mean()) - 200) < 3
        else:
            errors = [np.abs(tile.astype(int) - other).mean() for other in images]
            assert np.abs(tile.astype(int) - image).mean() == min(errors) < 8  # JPEG at quality 95
    assert thumbnail_size(5_000) == 64 and thumbnail_size(15_000) == 48 and thumbnail_size(50_000) == 32


def test_pca_map_is_the_shared_pca_of_unit_vectors_and_tsne_runs():
    features = torch.randn(30, 12)
    np.testing.assert_allclose(map_2d(features), pca_2d(torch.nn.functional.normalize(features, dim=1)).numpy())
    points = map_2d(features, "tsne")
    assert points.shape == (30, 2) and np.isfinite(points).all()
    with pytest.raises(ValueError, match="pca, tsne"):
        map_2d(features, "umap")


def test_page_holds_the_data_it_was_given_and_nothing_from_the_network(tmp_path):
    features = features_with_copies()
    paths = [f"class{i % 3}/img{i}.png" for i in range(120)]
    paths[5] = "odd/</script><b>name</b>.png"  # must not end the data block or become markup
    labels = np.arange(120) % 3
    summary = write_explorer(Embeddings(features, paths, labels, ["a", "b", "c"]), tmp_path / "page.html", k=4,
                             duplicate_threshold=0.999, title="<Test>")
    page = (tmp_path / "page.html").read_text()
    data = read_page_data(tmp_path / "page.html")
    assert summary["points"] == data["count"] == 120 and summary["duplicate_pairs"] == 29
    assert data["paths"] == paths and data["classes"] == ["a", "b", "c"] and data["k"] == 4
    assert decoded(data["labels"], "int32").tolist() == labels.tolist()
    indices, similarities = nearest_neighbours(features, k=4)
    assert decoded(data["neighbours"], "int32").reshape(120, 4).tolist() == indices.tolist()
    np.testing.assert_array_equal(decoded(data["similarities"], "float32").reshape(120, 4), similarities)
    np.testing.assert_array_equal(decoded(data["xy"], "float32").reshape(120, 2), map_2d(features))
    assert data["thumbnails"] is None  # no image folder given
    assert "<title>&lt;Test&gt;</title>" in page and page.count("</script>") == 2
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", page) and "@import" not in page
    assert not re.search(r"https?://", render_page({**data, "paths": [], "title": ""}))  # the template itself


def test_embed_recipe_file_loads_with_its_labels_and_classes(tmp_path):
    path = tmp_path / "e.npz"
    np.savez(path, embeddings=np.ones((2, 3), np.float32), paths=np.asarray(["cat/a.png", "dog/b.png"]),
             labels=np.asarray([0, 1]), classes=np.asarray(["cat", "dog"]))
    loaded = load_embeddings(path)
    assert loaded.paths == ["cat/a.png", "dog/b.png"] and loaded.classes == ["cat", "dog"]
    assert loaded.labels.tolist() == [0, 1] and loaded.features.shape == (2, 3)
    data = explorer_data(loaded, k=1, duplicate_threshold=None)
    assert data["duplicates"] is None and data["k"] == 1
    with pytest.raises(FileNotFoundError, match="recipes.embed"):
        load_embeddings(tmp_path / "absent.npz")
    np.savez(tmp_path / "other.npz", weights=np.ones(3))
    with pytest.raises(ValueError, match="no 'embeddings'"):
        load_embeddings(tmp_path / "other.npz")


def test_the_template_is_package_data_in_pyproject():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["ssl_siamese.explorer"]
    assert any(fnmatch.fnmatch("explorer.html", pattern) for pattern in patterns)
    assert (REPO / "ssl_siamese" / "explorer" / "explorer.html").is_file()


def test_recipe_refuses_unclear_sources(tmp_path, capsys):
    from ssl_siamese.recipes.explore import main

    for argv, message in ((["--out", "x.html"], "one of the two"),
                          (["--embeddings", "e.npz", "--backbone", "b.pt"], "one of the two"),
                          (["--backbone", "b.pt"], "--backbone needs --data"),
                          (["--embeddings", "e.npz", "--duplicates", "1.5"], "lies in"),
                          (["--embedings", "e.npz"], "did you mean --embeddings")):
        with pytest.raises(SystemExit) as caught:
            main(argv)
        assert message in capsys.readouterr().err + str(caught.value.code)  # a parse error, or a check after it
    with pytest.raises(SystemExit, match="No embeddings file"):
        main(["--embeddings", str(tmp_path / "absent.npz"), "--out", str(tmp_path / "x.html")])


def test_recipe_options_round_trip_through_print_config(tmp_path, capsys):
    from ssl_siamese.recipes.explore import _threshold, parse_args

    argv = ["--embeddings", "e.npz", "--images", "photos", "--k", "5", "--duplicates", "off", "--thumbnail", "0"]
    with pytest.raises(SystemExit):
        parse_args([*argv, "--print_config"])
    (tmp_path / "explore.yaml").write_text(capsys.readouterr().out)
    args = parse_args(["--config", str(tmp_path / "explore.yaml")])
    assert (args.embeddings, args.images, args.k, args.duplicates, args.thumbnail) == ("e.npz", "photos", 5, "off", 0)
    assert parse_args(["--embeddings", "e.npz"]).duplicates == "auto"
    assert [_threshold(value) for value in ("off", "auto", "0.97")] == [None, "auto", 0.97]  # what run_explore uses


CIFAR_JPG = "cifar10-jpg/cifar10-jpg.tar.gz"


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """400 real CIFAR-10 test images (40 a class) and 20 planted near duplicates of 20 of them: per class an exact
    copy and a re-encoding at JPEG quality 60, embedded through the embed recipe by a random tiny ConvNet."""
    from helpers import find_data_file

    from ssl_siamese import SimCLR, export_backbone
    from ssl_siamese.recipes.embed import run_embed

    folder = tmp_path_factory.mktemp("planted")
    with tarfile.open(find_data_file(CIFAR_JPG)) as tar:
        by_class: dict[str, list] = {}
        for member in tar.getmembers():
            if member.isfile() and member.name.startswith("test/"):
                by_class.setdefault(Path(member.name).parent.name, []).append(member)
        tar.extractall(folder, members=[m for ms in by_class.values() for m in sorted(ms, key=lambda m: m.name)[:40]],
                       filter="data")
    root, planted = folder / "test", []
    for directory in sorted(root.iterdir()):
        files = sorted(directory.iterdir())
        shutil.copy(files[0], directory / "planted_copy.jpg")
        Image.open(files[1]).save(directory / "planted_q60.jpg", quality=60)
        planted += [(f"{directory.name}/{files[0].name}", f"{directory.name}/planted_copy.jpg"),
                    (f"{directory.name}/{files[1].name}", f"{directory.name}/planted_q60.jpg")]
    torch.manual_seed(0)
    backbone = export_backbone(SimCLR(backbone="tiny_cnn", view_size=32), folder / "backbone.pt")
    run_embed(backbone, root, folder / "embeddings.npz", device="cpu", progress=False)
    embeddings = load_embeddings(folder / "embeddings.npz")
    index = {path: i for i, path in enumerate(embeddings.paths)}
    return embeddings, {tuple(sorted((index[a], index[b]))) for a, b in planted}


@needs_data_file(CIFAR_JPG)
def test_default_duplicate_threshold_finds_the_planted_pairs_where_a_fixed_098_floods(planted, tmp_path):
    embeddings, truth = planted
    data = explorer_data(embeddings, k=10)
    duplicates = data["duplicates"]
    threshold = duplicates["threshold"]
    listed = [(a, b) for a, b, s in zip(duplicates["first"], duplicates["second"], duplicates["similarity"])
              if s >= threshold]
    found = set(listed) & truth
    precision, recall = len(found) / max(len(listed), 1), len(found) / len(truth)
    cosine = cosine64(embeddings.features)
    old = {(i, j) for i, j in zip(*np.nonzero(np.triu(cosine >= 0.98, 1)))}
    old_precision = len(old & truth) / len(old)
    print(f"auto threshold {threshold:.6f}: {len(listed)} pairs, precision {precision:.3f}, recall {recall:.3f}; "
          f"cosine 0.98: {len(old)} pairs, precision {old_precision:.4f}")
    assert recall == 1.0 and precision >= 0.8, (precision, recall)
    assert len(old) > 20 * len(truth) and old_precision < 0.05  # the fixed rule floods with non-duplicates
    assert duplicates["total"] == len(listed) and "nearest neighbour" in duplicates["rule"]
    stored = np.asarray(duplicates["similarity"])  # stored below the threshold, for the page's slider
    assert stored.min() >= duplicates["floor"] and duplicates["floor"] < threshold and len(stored) > len(listed)
    exact = {(i, j) for i, j in zip(*np.nonzero(np.triu(cosine >= duplicates["floor"] - 1e-6, 1)))}
    assert {(a, b) for a, b in zip(duplicates["first"], duplicates["second"])} <= exact
    assert len(stored) >= len({p for p in exact if cosine[p] >= duplicates["floor"] + 1e-6})  # none left out
    capped = explorer_data(embeddings, k=10, max_pairs=len(listed) + 5)["duplicates"]
    assert len(capped["first"]) == len(listed) + 5 and capped["floor"] == capped["similarity"][-1]
