"""Cross-modal parts against independent references: the Recall@K (brute force) and its chance level
(simulation), the icon texts and the split by name, the data module (CLIP's loss: test_crossmodal_loss.py)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from ssl_siamese.crossmodal.datamodule import IconTextDataModule, name_group, split_by_name
from ssl_siamese.crossmodal.icons import IconSet, choose_icons, icon_text
from ssl_siamese.crossmodal.module import CrossModalCLIP
from ssl_siamese.crossmodal.retrieval import chance_recall, cross_modal_recall


def test_recall_matches_brute_force():
    g = torch.Generator().manual_seed(2)
    images, texts = torch.randn(30, 4, generator=g), torch.randn(9, 4, generator=g)
    owner = [i % 9 for i in range(30)]
    metrics = cross_modal_recall(images, texts, owner, ks=(1, 3, 5))
    cos = torch.nn.functional.cosine_similarity(images[:, None].double(), texts[None].double(), dim=2)
    for k in (1, 3, 5):
        t2i = np.mean([any(owner[j] == t for j in cos[:, t].argsort(descending=True)[:k].tolist()) for t in range(9)])
        i2t = np.mean([owner[j] in cos[j].argsort(descending=True)[:k].tolist() for j in range(30)])
        assert metrics[f"t2i_recall@{k}"] == pytest.approx(t2i)
        assert metrics[f"i2t_recall@{k}"] == pytest.approx(i2t)
    perfect = cross_modal_recall(texts[owner], texts, owner, ks=(1,))
    assert perfect == {"t2i_recall@1": 1.0, "i2t_recall@1": 1.0}
    with pytest.raises(ValueError, match="one index"):
        cross_modal_recall(images, texts, owner[:-1])


def test_chance_level_matches_random_rankings():
    owner = [0, 0, 0, 1, 2, 2, 3, 4, 5, 5, 6, 7]
    exact = chance_recall(owner, 8, ks=(1, 3))
    g = torch.Generator().manual_seed(3)
    runs = [cross_modal_recall(torch.randn(12, 16, generator=g), torch.randn(8, 16, generator=g), owner, ks=(1, 3))
            for _ in range(3000)]
    for key, value in exact.items():
        assert np.mean([run[key] for run in runs]) == pytest.approx(value, abs=0.01)
    assert exact["i2t_recall@3"] == pytest.approx(3 / 8)


def test_icon_text_and_choice_of_file():
    assert icon_text("audio-volume-high", "status") == "audio volume high status"
    assert icon_text("x-office_document", "mimes") == "x office document mimetypes"
    assert icon_text("format-text-bold", "legacy") == "format text bold"
    files = ["32x32/status/a.png", "48x48/status/a.png", "16x16/status/a.png", "actions/24/b.png",
             "actions/64/b.png", "base/22x22/places/c.png", "32x32/status/d-symbolic.png", "cursors/e.png"]
    chosen = choose_icons(files, 32)
    assert chosen == {"a": ("32x32/status/a.png", "status"), "b": ("actions/64/b.png", "actions"),
                      "c": ("base/22x22/places/c.png", "places")}


def test_split_holds_out_whole_names_across_themes():
    names = [f"icon-{i % 40}" + ("-rtl" if i % 7 == 0 else "") for i in range(400)] + ["Icon_3", "icon.3-ltr"]
    train, test = split_by_name(names, 0.25, seed=0)
    assert sorted(train + test) == list(range(402))
    train_groups, test_groups = {name_group(names[i]) for i in train}, {name_group(names[i]) for i in test}
    assert not train_groups & test_groups and len(test_groups) == 10
    assert name_group("Icon_3") == name_group("icon.3-ltr") == name_group("icon-3") == "icon 3"
    assert split_by_name(names, 0.25, seed=0) == (train, test)
    with pytest.raises(ValueError, match="test_fraction"):
        split_by_name(names, 1.0)


def _fake_themes(root) -> None:
    from PIL import Image
    rng = random.Random(0)
    for theme in ("alpha", "beta"):
        for i in range(30):
            folder = root / theme / "32x32" / ("status" if i % 2 else "actions")
            folder.mkdir(parents=True, exist_ok=True)
            color = tuple(rng.randrange(256) for _ in range(3)) + (255,)
            Image.new("RGBA", (48 if theme == "beta" else 32,) * 2, color).save(folder / f"thing-{i}-on.png")


def test_datamodule_from_theme_folders_batches_and_caches(tmp_path):
    _fake_themes(tmp_path / "themes")
    dm = IconTextDataModule(themes=["alpha", "beta"], root=str(tmp_path / "themes"), cache_dir=str(tmp_path / "c"),
                            test_fraction=0.2, batch_size=8)
    dm.setup("fit")
    assert len(dm.train_icons) == 48 and len(dm.test_icons) == 12 and "held out by name" in dm.report
    assert not set(dm.train_icons.names) & set(dm.test_icons.names)
    assert len(list((tmp_path / "c" / "icons").glob("*.npz"))) == 1
    model = CrossModalCLIP(vocab_size=200, text_dim=16, embed_dim=8)
    model.fit_tokenizer(dm.training_texts())
    dm.tokenizer = model.text_encoder.tokenizer
    images, tokens = next(iter(dm.train_dataloader()))
    assert images.shape == (8, 3, 32, 32) and images.dtype == torch.float32 and len(tokens["input_ids"]) == 8
    gallery, texts, owner = dm.evaluation_set()
    assert len(gallery) == 12 and len(texts) == 6 and sorted(owner) == sorted(list(range(6)) * 2)  # 2 themes
    loss = model.loss_fn(model.image_embeddings(images), model.text_embeddings(tokens))
    assert torch.isfinite(loss)
    assert model.encode_images(gallery).shape == (12, 8) and model.encode_texts(texts).norm(dim=1).allclose(
        torch.ones(6))


def test_missing_theme_says_how_to_get_it(tmp_path):
    from ssl_siamese.crossmodal.icons import IconThemesMissing, load_icons
    with pytest.raises(IconThemesMissing, match="root= must hold one folder per theme"):
        load_icons(["nope"], root=tmp_path, cache_dir=tmp_path)
    with pytest.raises(IconThemesMissing, match="apt-get install"):
        load_icons(["ssl-siamese-no-such-icon-theme"], cache_dir=tmp_path, download=False)


def test_icon_set_subset_keeps_rows_together():
    icons = IconSet(np.arange(4)[:, None, None, None].repeat(3, 1), ["a", "b", "c", "d"], ["na", "nb", "nc", "nd"],
                    ["s"] * 4, ["t1", "t1", "t2", "t2"])
    part = icons.subset([3, 1])
    assert part.texts == ["d", "b"] and part.names == ["nd", "nb"] and part.images[:, 0, 0, 0].tolist() == [3, 1]


def test_a_theme_given_as_a_path_says_to_pass_root_and_names(tmp_path):
    """``--data.themes /some/folder`` crashed in pathlib's glob; it is a user error that says what to pass."""
    from ssl_siamese.crossmodal.icons import IconThemesMissing, load_icons

    with pytest.raises(IconThemesMissing, match=r"not Debian package names .* root="):
        load_icons(themes=[str(tmp_path / "my-theme")], cache_dir=tmp_path)
