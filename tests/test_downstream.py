"""Downstream use of an exported backbone: embedding index, embed recipe, one-shot classifier, fine-tuning.

The index is checked against a brute-force float64 search; the recipe against a hand-written
preprocessing; the real-data tests use Fashion-MNIST found by conftest.py (skipped, saying where it
looked, when absent).
"""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ssl_siamese import SimCLR, export_backbone, load_backbone
from ssl_siamese import embeddings as embeddings_module
from ssl_siamese.backbones import build_backbone
from ssl_siamese.data import DATASETS, load_split
from ssl_siamese.search.embeddings import EmbeddingIndex, embed_images, preprocessing
from ssl_siamese.search.oneshot import UNKNOWN, OneShotClassifier
from ssl_siamese.recipes import embed as embed_recipe
from ssl_siamese.recipes.embed import run_embed
from ssl_siamese.recipes.finetune import build_init, run_finetune

from helpers import adwaita_theme, fashion_mnist_dir, needs_fashion_mnist

DATA = fashion_mnist_dir()
FASHION = DATASETS["fashion_mnist"]


def brute_force(gallery: torch.Tensor, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine top-k in float64, written independently of the index."""
    g, q = gallery.double(), queries.double()
    scores = (q @ g.T) / (q.norm(dim=1, keepdim=True) * g.norm(dim=1))
    order = np.argsort(-scores.numpy(), axis=1, kind="stable")[:, :k]
    return torch.from_numpy(np.take_along_axis(scores.numpy(), order, axis=1)), torch.from_numpy(order)


# --------------------------------------------------------------------------- EmbeddingIndex

def test_index_matches_brute_force_float64():
    generator = torch.Generator().manual_seed(0)
    gallery, queries = torch.randn(700, 48, generator=generator), torch.randn(37, 48, generator=generator)
    index = EmbeddingIndex(gallery[:400], chunk_size=8).add(gallery[400:])  # chunked queries, two adds
    scores, indices = index.search(queries, k=10)
    expected_scores, expected_indices = brute_force(gallery, queries, 10)
    assert indices.shape == (37, 10) and indices.dtype == torch.int64
    assert torch.equal(indices, expected_indices)
    torch.testing.assert_close(scores.double(), expected_scores, atol=1e-5, rtol=0)
    assert index.search(queries[:2], k=10_000)[1].shape == (2, 700)  # k capped at the index size


class FakeFaiss:
    """Stands in for faiss when it is not installed: an exact inner-product index in numpy."""

    class IndexFlatIP:
        def __init__(self, dim: int) -> None:
            self.vectors = np.empty((0, dim), dtype=np.float32)

        def add(self, vectors: np.ndarray) -> None:
            self.vectors = np.concatenate([self.vectors, vectors])

        def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
            scores = queries @ self.vectors.T
            order = np.argsort(-scores, axis=1)[:, :k]
            return np.take_along_axis(scores, order, axis=1), order


def test_index_uses_faiss_when_large(monkeypatch):
    if embeddings_module._import_faiss() is None:
        monkeypatch.setitem(sys.modules, "faiss", FakeFaiss)
    monkeypatch.setattr(embeddings_module, "FAISS_MIN_SIZE", 0)
    gallery, queries = torch.randn(300, 16), torch.randn(5, 16)
    scores, indices = EmbeddingIndex(gallery).search(queries, k=5)
    expected_scores, expected_indices = brute_force(gallery, queries, 5)
    assert torch.equal(indices, expected_indices)
    torch.testing.assert_close(scores.double(), expected_scores, atol=1e-5, rtol=0)


def test_index_save_load_round_trip(tmp_path):
    features = torch.randn(50, 8)
    index = EmbeddingIndex(features, labels=torch.arange(50) % 3, ids=[f"img_{i}.png" for i in range(50)])
    path = index.save(tmp_path / "gallery.index")  # any suffix: the name is kept as given
    loaded = EmbeddingIndex.load(path)
    assert path.name == "gallery.index" and len(loaded) == 50
    assert torch.equal(loaded.features, index.features) and torch.equal(loaded.labels, index.labels)
    assert loaded.ids == index.ids
    queries = torch.randn(4, 8)
    assert all(torch.equal(a, b) for a, b in zip(loaded.search(queries, 3), index.search(queries, 3)))
    with pytest.raises(ValueError, match="labels"):
        loaded.add(torch.randn(2, 8), ids=["a", "b"])  # labelled index: labels are required
    with pytest.raises(ValueError, match="dimension"):
        loaded.search(torch.randn(1, 9), 1)


# --------------------------------------------------------------------------- embed recipe

def _exported_tiny_cnn(tmp_path: Path, size: int) -> Path:
    torch.manual_seed(0)
    model = SimCLR(backbone="tiny_cnn", view_size=size, mean=FASHION.mean, std=FASHION.std)
    return export_backbone(model, tmp_path / "backbone.pt", data="test")


def test_embed_recipe_on_a_folder(tmp_path, capsys):
    backbone_path = _exported_tiny_cnn(tmp_path, size=16)
    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    written = {}
    for name in ("cats/a.png", "cats/b.png", "dogs/c.png", "dogs/sub/d.png", "dogs/e.png"):
        array = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(root / name)
        written[name] = array
    (root / "cats" / "broken.png").write_bytes(b"\x89PNG not really")
    (root / "dogs" / "notes.txt").write_text("not an image")

    summary = run_embed(backbone_path, root, tmp_path / "out" / "emb.npz", batch_size=2, progress=False)
    assert summary["skipped"] == 2 and summary["skipped_paths"] == ["cats/broken.png", "dogs/notes.txt"]  # as training
    assert "skipped 2 files that are not readable images" in capsys.readouterr().err
    with np.load(tmp_path / "out" / "emb.npz", allow_pickle=False) as data:
        paths, embeddings = data["paths"].tolist(), data["embeddings"]
        assert paths == sorted(written) and embeddings.shape == (5, 128) and embeddings.dtype == np.float32
        assert data["classes"].tolist() == ["cats", "dogs"] and data["labels"].tolist() == [0, 0, 1, 1, 1]

    backbone, transform, _ = load_backbone(backbone_path)
    uint8 = torch.from_numpy(np.stack([written[p] for p in paths])).permute(0, 3, 1, 2)
    mean, std = torch.tensor(FASHION.mean).view(1, 3, 1, 1), torch.tensor(FASHION.std).view(1, 3, 1, 1)
    torch.testing.assert_close(transform(uint8), (uint8.float() / 255 - mean) / std)
    with torch.no_grad():
        expected = backbone((uint8.float() / 255 - mean) / std)
    torch.testing.assert_close(torch.from_numpy(embeddings), expected, atol=1e-5, rtol=1e-4)


def test_embed_recipe_output_loads_as_an_index(tmp_path):
    backbone_path = _exported_tiny_cnn(tmp_path, size=16)
    rng = np.random.default_rng(1)
    for name in ("a/1.png", "a/2.png", "b/3.png", "b/4.png"):
        (tmp_path / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "images" / name)
    run_embed(backbone_path, tmp_path / "images", tmp_path / "emb.npz", progress=False)
    index = EmbeddingIndex.load(tmp_path / "emb.npz")
    with np.load(tmp_path / "emb.npz", allow_pickle=False) as data:
        raw = torch.from_numpy(data["embeddings"]).double()
    assert index.ids == ["a/1.png", "a/2.png", "b/3.png", "b/4.png"] and index.labels.tolist() == [0, 0, 1, 1]
    torch.testing.assert_close(index.features.double(), raw / raw.norm(dim=1, keepdim=True))
    _, nearest = index.search(raw.float(), k=1)
    assert nearest.flatten().tolist() == [0, 1, 2, 3]
    np.savez(tmp_path / "other.npz", vectors=raw.numpy())
    with pytest.raises(ValueError, match="no 'features'.*'embeddings'"):
        EmbeddingIndex.load(tmp_path / "other.npz")


def test_embed_recipe_errors_are_clear(tmp_path):
    with pytest.raises(SystemExit, match="No exported backbone"):
        embed_recipe.main(["--backbone", str(tmp_path / "missing.pt"), "--data", str(tmp_path)])
    backbone_path = _exported_tiny_cnn(tmp_path, size=16)
    with pytest.raises(SystemExit, match="does not exist"):
        embed_recipe.main(["--backbone", str(backbone_path), "--data", str(tmp_path / "nowhere")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="No image files"):
        embed_recipe.main(["--backbone", str(backbone_path), "--data", str(tmp_path / "empty")])


def test_embed_images_accepts_one_image_and_gray():
    backbone, _ = build_backbone("tiny_cnn")
    metadata = {"image_size": 20, "mean": FASHION.mean, "std": FASHION.std}
    one = embed_images(backbone, torch.zeros(1, 28, 28, dtype=torch.uint8), metadata, progress=False)
    assert one.shape == (1, 128) and one.device.type == "cpu"
    with pytest.raises(ValueError, match="mean"):
        embed_images(backbone, torch.zeros(2, 3, 8, 8, dtype=torch.uint8), {"image_size": 8})


# --------------------------------------------------------------------------- one-shot classifier

def test_one_shot_on_colours_is_exact():
    """Backbone = the mean colour, so similarities are known in closed form."""
    colour = nn.Flatten()  # (B, 3, 1, 1) -> (B, 3)
    metadata = {"image_size": 1, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}

    def pixels(*rgb):
        return torch.tensor(rgb, dtype=torch.uint8).view(-1, 3, 1, 1)

    classifier = OneShotClassifier(colour, metadata, threshold=0.5)
    classifier.register("red", pixels((255, 0, 0)))
    classifier.register("green", pixels((0, 200, 0), (0, 100, 0)))
    assert classifier.classes == ["red", "green"]
    results = classifier.classify(pixels((200, 10, 0), (0, 0, 255), (10, 250, 0)))
    assert [name for name, _ in results] == ["red", UNKNOWN, "green"]
    assert results[0][1] == pytest.approx(200 / np.hypot(200, 10), abs=1e-6)
    assert results[1][1] == pytest.approx(0.0, abs=1e-6)
    classifier.register("blue", pixels((0, 0, 255)))  # a new class is a new reference, no retraining
    assert classifier.classify(pixels((0, 0, 255)))[0] == ("blue", pytest.approx(1.0))
    # a second shot moves the prototype to the normalised mean of the normalised references
    classifier.register("red", pixels((255, 255, 0)))
    expected = F.normalize(torch.tensor([1.0, 0.0, 0.0]) + torch.tensor([1.0, 1.0, 0.0]) / 2 ** 0.5, dim=0)
    torch.testing.assert_close(classifier.prototypes()[0], expected)
    with pytest.raises(ValueError, match="reserved"):
        classifier.register(UNKNOWN, pixels((1, 2, 3)))


@needs_fashion_mnist
def test_one_shot_on_held_out_fashion_mnist_classes():
    """Random-init tiny_cnn, references from the train split, queries from the test split."""
    classes = {1: "Trouser", 5: "Sandal", 8: "Bag", 9: "Ankle boot"}  # chance = 0.25
    train = load_split("fashion_mnist", "train", DATA, download=False)
    test = load_split("fashion_mnist", "test", DATA, download=False)
    torch.manual_seed(0)
    backbone, _ = build_backbone("tiny_cnn")
    metadata = {"image_size": 28, "mean": FASHION.mean, "std": FASHION.std}
    classifier = OneShotClassifier(backbone, metadata)
    generator = torch.Generator().manual_seed(0)
    train_index = {c: torch.nonzero(train.labels == c).flatten() for c in classes}
    train_index = {c: i[torch.randperm(len(i), generator=generator)] for c, i in train_index.items()}
    queries = torch.cat([torch.nonzero(test.labels == c).flatten()[:100] for c in classes])
    truth = [classes[int(label)] for label in test.labels[queries]]

    def accuracy() -> float:
        predicted = [name for name, _ in classifier.classify(test.images[queries])]
        return float(np.mean([p == t for p, t in zip(predicted, truth)]))

    for c, name in classes.items():
        classifier.register(name, train.images[train_index[c][0]])
    one_shot = accuracy()
    for c, name in classes.items():
        assert classifier.register(name, train.images[train_index[c][1:5]]) == 5
    five_shot = accuracy()
    print(f"\n4-way Fashion-MNIST, random tiny_cnn: 1-shot {one_shot:.3f}, 5-shot {five_shot:.3f} (chance 0.25)")
    assert one_shot > 0.4 and five_shot > 0.5

    classifier.threshold = 0.9999  # nothing is that similar to a prototype of random features
    assert all(name == UNKNOWN for name, _ in classifier.classify(test.images[queries[:50]]))
    held_out = torch.cat([train_index[c][5:55] for c in classes])
    threshold = classifier.calibrate_threshold(train.images[held_out],
                                               [classes[int(y)] for y in train.labels[held_out]], accept_rate=0.8)
    accepted = np.mean([name != UNKNOWN for name, _ in classifier.classify(train.images[held_out])])
    assert classifier.threshold == threshold and accepted >= 0.79


# --------------------------------------------------------------------------- fine-tuning

@needs_fashion_mnist
def test_finetune_random_init_beats_chance(tmp_path):
    result = run_finetune("random", "fashion_mnist", DATA, arch="tiny_cnn", epochs=3, lr=0.1, train_subset=2000,
                          test_subset=500, out=tmp_path, log_to="none", download=False, progress=False)
    print(f"\nfine-tuned random tiny_cnn, 2k images, 3 epochs: test top-1 {result['top1']:.3f}")
    assert result["num_train"] == 2000 and result["num_test"] == 500
    assert result["top1"] > 0.4, result
    assert (tmp_path / "results.json").is_file()


@needs_fashion_mnist
def test_finetune_from_an_exported_backbone(tmp_path):
    path = _exported_tiny_cnn(tmp_path, size=28)
    result = run_finetune(path, "fashion_mnist", DATA, epochs=1, train_subset=256, test_subset=128,
                          out=tmp_path / "ft", log_to="none", download=False, progress=False)
    assert result["architecture"] == "tiny_cnn" and result["image_size"] == 28 and 0.0 <= result["top1"] <= 1.0


def test_finetune_imagenet_without_local_weights_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(ValueError, match="not available locally"):
        run_finetune("imagenet", "synthetic", arch="resnet18", out=tmp_path, log_to="none")


# --------------------------------------------------------------------------- issue 12: loaded backbone, any image

def adwaita_rgba_icon(min_side: int = 32) -> Path:
    """A real RGBA icon with transparent and partly transparent pixels; skip (saying where) when absent."""
    theme = adwaita_theme()
    for path in sorted(theme.rglob("*.png")):
        with Image.open(path) as image:
            if image.mode == "RGBA" and min(image.size) >= min_side:
                alpha = np.asarray(image)[..., 3]
                if (alpha == 0).any() and ((alpha > 0) & (alpha < 255)).any():
                    return path
    pytest.skip(f"no RGBA icon with transparency found under {theme} (Debian package adwaita-icon-theme)")


def float64_reference(image: np.ndarray, size: int, mean, std, background=(1.0, 1.0, 1.0)) -> torch.Tensor:
    """``(1, 3, size, size)`` float32 input of an ``(H, W, C)`` array in [0, 1]: alpha composited onto
    ``background`` in float64, then the resize and normalisation of ``ViewAugmentation.normalize``."""
    image = np.asarray(image, dtype=np.float64)
    if image.shape[2] in (2, 4):
        alpha = image[..., -1:]
        image = image[..., :-1] * alpha + np.asarray(background)[: image.shape[2] - 1] * (1 - alpha)
    image = np.broadcast_to(image, image.shape[:2] + (3,)) if image.shape[2] == 1 else image
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).unsqueeze(0)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    return ((x - torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1))
            / torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)).float()


def test_loaded_backbone_gives_plain_inference_features_and_can_be_unfrozen(tmp_path):
    path = _exported_tiny_cnn(tmp_path, size=16)
    backbone, transform, _ = load_backbone(path)
    images = torch.randint(0, 256, (3, 3, 20, 24), dtype=torch.uint8)
    features = backbone(transform(images))  # the README's line, no torch.no_grad around it
    assert not features.requires_grad and features.numpy().shape == (3, 128)
    assert not backbone.training and not any(p.requires_grad for p in backbone.parameters())
    backbone.requires_grad_(True).train()  # how the docstring says to fine-tune it
    backbone(transform(images)).sum().backward()
    assert all(p.grad is not None for p in backbone.parameters())
    trainable, _, _ = load_backbone(path, trainable=True)
    assert all(p.requires_grad for p in trainable.parameters())
    module, _, _ = build_init(str(path), "tiny_cnn", False, "fashion_mnist", None)  # the finetune recipe's model
    assert module.training and all(p.requires_grad for p in module.parameters())


def test_transform_takes_gray_alpha_rgb_and_rgba_against_a_float64_reference():
    from torchvision.io import ImageReadMode, read_image as torchvision_read_image

    from ssl_siamese.data.images import read_image

    icon = adwaita_rgba_icon()
    metadata = {"image_size": 24, "mean": (0.4, 0.5, 0.6), "std": (0.2, 0.25, 0.3)}
    transform = preprocessing(metadata)
    rgba = torchvision_read_image(str(icon), ImageReadMode.UNCHANGED)  # what the README user had: (4, H, W)
    assert rgba.shape[0] == 4
    array = rgba.permute(1, 2, 0).numpy() / 255.0
    size, mean, std = 24, metadata["mean"], metadata["std"]
    eight_bit = 1.0 / 255 / min(std)  # integer images are composited and resized in 8 bits, as training decodes files
    torch.testing.assert_close(transform(rgba), float64_reference(array, size, mean, std), atol=eight_bit, rtol=0)
    # the file read by the library (composited onto the same white, rounded to uint8) gives the same input
    torch.testing.assert_close(transform(read_image(icon)), transform(rgba), atol=0.6 / 255 / min(std), rtol=0)
    gray_alpha = np.stack([array[..., :3].mean(-1), array[..., 3]], -1)
    two = torch.from_numpy((gray_alpha * 255).round().astype(np.uint8)).permute(2, 0, 1)
    torch.testing.assert_close(transform(two), float64_reference(two.permute(1, 2, 0).numpy() / 255.0, size, mean,
                                                                 std), atol=eight_bit, rtol=0)
    for channels in (1, 3):
        image = rgba[:channels]
        torch.testing.assert_close(transform(image), float64_reference(image.permute(1, 2, 0).numpy() / 255.0,
                                                                       size, mean, std), atol=eight_bit, rtol=0)
    with pytest.raises(ValueError, match="channels"):
        transform(torch.zeros(1, 5, 8, 8, dtype=torch.uint8))


def test_images_are_scaled_by_dtype_uint8_uint16_float():
    """Item 7: a 16-bit image is not taken as [0, 1]; uint8 and uint16 of one picture give the same features."""
    torch.manual_seed(0)
    backbone, _ = build_backbone("tiny_cnn")
    backbone.eval()
    metadata = {"image_size": 28, "mean": FASHION.mean, "std": FASHION.std}
    rng = np.random.default_rng(0)
    uint8 = rng.integers(0, 256, (4, 3, 28, 28), dtype=np.uint8)
    uint16 = torch.from_numpy(uint8.astype(np.int32) * 257).to(torch.uint16)  # 16-bit: same picture, 0..65535
    with torch.no_grad():
        expected = torch.cat([backbone(float64_reference(image.transpose(1, 2, 0) / 255.0, 28, FASHION.mean,
                                                         FASHION.std)) for image in uint8])
    for images in (torch.from_numpy(uint8), uint16, torch.from_numpy(uint8 / 255.0),
                   torch.from_numpy(uint8).float() / 255):
        features = embed_images(backbone, images, metadata, progress=False)
        cosine = F.cosine_similarity(features.double(), expected.double())
        assert cosine.min() > 0.99999, (images.dtype, cosine)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        embed_images(backbone, torch.from_numpy(uint8).float(), metadata, progress=False)  # 0..255 floats
    with pytest.raises(ValueError, match="int32"):
        embed_images(backbone, torch.from_numpy(uint8).int(), metadata, progress=False)


def test_classify_takes_images_of_any_size_and_file_paths(tmp_path):
    from ssl_siamese.data.images import read_image

    colour = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())  # features = mean colour
    metadata = {"image_size": 4, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
    classifier = OneShotClassifier(colour, metadata)
    classifier.register("red", torch.tensor([255, 0, 0], dtype=torch.uint8).view(3, 1, 1).expand(3, 9, 7))
    classifier.register("blue", torch.tensor([0, 0, 255], dtype=torch.uint8).view(3, 1, 1).expand(3, 30, 40))
    reddish = torch.tensor([200, 30, 10], dtype=torch.uint8).view(3, 1, 1).expand(3, 12, 5)
    bluish = torch.tensor([10, 0, 150], dtype=torch.uint8).view(3, 1, 1).expand(3, 50, 64)
    icon = adwaita_rgba_icon()
    Image.fromarray(reddish.permute(1, 2, 0).numpy()).save(tmp_path / "reddish.png")
    Image.fromarray(bluish.permute(1, 2, 0).numpy()).convert("P").save(tmp_path / "bluish.gif")
    results = classifier.classify([reddish, bluish, icon])
    assert [name for name, _ in results[:2]] == ["red", "blue"]
    assert results[0][1] == pytest.approx(200 / np.linalg.norm([200, 30, 10]), abs=1e-5)
    by_path = classifier.classify([tmp_path / "reddish.png", str(tmp_path / "bluish.gif"), icon])
    assert [name for name, _ in by_path] == [name for name, _ in results]
    assert [s for _, s in by_path] == pytest.approx([s for _, s in results], abs=1e-3)
    assert classifier.classify(tmp_path / "reddish.png") == by_path[:1]  # one path
    assert classifier.classify(read_image(icon))[0][1] == pytest.approx(results[2][1], abs=1e-3)


# --------------------------------------------------------------------------- issue 12 item 8: the "unknown" threshold

def test_calibrated_threshold_is_the_quantile_of_the_score_classify_thresholds():
    """Colour backbone: the threshold is the ``false_reject_rate`` quantile of each held-out image's BEST
    similarity (what ``classify`` compares), not of its similarity to its own class; references are refused."""
    colour = nn.Flatten()
    metadata = {"image_size": 1, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
    classifier = OneShotClassifier(colour, metadata)
    classifier.register("red", torch.tensor([255, 0, 0], dtype=torch.uint8).view(1, 3, 1, 1))
    classifier.register("green", torch.tensor([0, 255, 0], dtype=torch.uint8).view(1, 3, 1, 1))
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 3)).astype(np.uint8)
    rgb[:, :2] = np.maximum(rgb[:, :2], 1)
    names = ["red" if r >= g else "green" for r, g, _ in rgb]
    names[:5] = ["green" if n == "red" else "red" for n in names[:5]]  # labelled by the weaker colour
    held_out = torch.from_numpy(rgb).view(40, 3, 1, 1)
    unit = rgb.astype(np.float64) / np.linalg.norm(rgb.astype(np.float64), axis=1, keepdims=True)
    best = np.maximum(unit[:, 0], unit[:, 1])  # cosine to the nearest of pure red and pure green
    threshold = classifier.calibrate_threshold(held_out, names, false_reject_rate=0.1)
    assert threshold == pytest.approx(np.quantile(best, 0.1), abs=1e-6)
    assert classifier.threshold == threshold and classifier.false_reject_rate == 0.1
    rejected = [name == UNKNOWN for name, _ in classifier.classify(held_out)]
    assert sum(rejected) == 4  # 10% of 40: exactly the images below the quantile
    assert classifier.calibrate_threshold(held_out, names, accept_rate=0.9) == pytest.approx(threshold)
    with pytest.raises(ValueError, match="reference"):
        classifier.calibrate_threshold(torch.tensor([255, 0, 0], dtype=torch.uint8).view(1, 3, 1, 1), ["red"])
    with pytest.raises(ValueError, match="false_reject_rate"):
        classifier.calibrate_threshold(held_out, names, false_reject_rate=1.5)


@needs_fashion_mnist
def test_calibrated_threshold_rejects_at_the_stated_rate_and_rejects_an_unregistered_class():
    """Fashion-MNIST, seeded random tiny_cnn: 4 registered classes (5 references each), calibrated on 100
    held-out training images per class at a 10% false-reject rate; measured on 250 test images per class."""
    known = {1: "Trouser", 2: "Pullover", 8: "Bag", 9: "Ankle boot"}
    unregistered = {5: "Sandal", 7: "Sneaker"}
    train = load_split("fashion_mnist", "train", DATA, download=False)
    test = load_split("fashion_mnist", "test", DATA, download=False)
    torch.manual_seed(0)
    backbone, _ = build_backbone("tiny_cnn")
    classifier = OneShotClassifier(backbone, {"image_size": 28, "mean": FASHION.mean, "std": FASHION.std})
    rows = {c: torch.nonzero(train.labels == c).flatten() for c in known}
    for c, name in known.items():
        classifier.register(name, train.images[rows[c][:5]])
    held_out = torch.cat([rows[c][5:105] for c in known])
    classifier.calibrate_threshold(train.images[held_out], [known[int(y)] for y in train.labels[held_out]],
                                   false_reject_rate=0.1)

    def rejected(classes) -> float:
        queries = torch.cat([torch.nonzero(test.labels == c).flatten()[:250] for c in classes])
        return float(np.mean([name == UNKNOWN for name, _ in classifier.classify(test.images[queries])]))

    known_rate, unknown_rate = rejected(known), rejected(unregistered)
    print(f"\nthreshold {classifier.threshold:.4f} for a 10% false-reject rate: test images of registered classes "
          f"rejected {known_rate:.3f}, of unregistered Sandal/Sneaker {unknown_rate:.3f}")
    assert abs(known_rate - 0.1) < 0.05  # binomial spread of 400 calibration + 1000 test images: ~0.017
    assert unknown_rate > known_rate + 0.2
