"""Supervised Siamese metric learning: the module, P x K data with held-out classes, and the recipe."""

import json

import pytest
import pytorch_lightning as pl
import torch

import ssl_siamese.data.memory as data_memory
from ssl_siamese.data import make_synthetic
from ssl_siamese.data.pk import PKDataModule, near_duplicate_report
from ssl_siamese.export import export_backbone
from ssl_siamese.methods.siamese import SupervisedSiamese, contrastive_pairs
from ssl_siamese.recipes.siamese import main, parse_classes, run_siamese

from helpers import fashion_mnist_dir, needs_fashion_mnist

DATA = fashion_mnist_dir()


def tiny_model(**kwargs) -> SupervisedSiamese:
    return SupervisedSiamese(backbone="tiny_cnn", view_size=32, mean=(0.5,) * 3, std=(0.25,) * 3, **kwargs)


@pytest.mark.parametrize("loss, mining", [("triplet", "batch_hard"), ("triplet", "semi_hard"),
                                          ("triplet", "batch_all"), ("contrastive", "batch_hard")])
def test_loss_decreases_over_a_few_steps(loss, mining):
    torch.manual_seed(0)
    model = tiny_model(loss=loss, mining=mining)
    labels = torch.arange(4).repeat_interleave(4)
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    images[:, 0] = (labels * 60).view(-1, 1, 1).to(torch.uint8)  # a learnable class cue in one channel
    view0, view1 = (model.augmentation.normalize(images) for _ in range(2))  # fixed views: a clean signal
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(15):
        loss_value, embeddings = model.shared_step(view0, view1, labels)
        optimizer.zero_grad()
        loss_value.backward()
        optimizer.step()
        losses.append(loss_value.item())
    assert embeddings.shape == (16, 128)
    assert losses[-1] < 0.7 * losses[0], losses


def test_pk_batches_reach_the_module(monkeypatch):
    dm = PKDataModule("synthetic", train_classes=range(6), eval_classes=range(6, 10), p=3, k=4,
                      batches_per_epoch=3)
    model = tiny_model(batch_size=dm.batch_size)
    seen = []

    def record(batch, batch_idx):
        (view0, view1), labels = batch
        seen.append((view0.shape[0], view1.shape[0], labels.bincount(minlength=10)))
        return SupervisedSiamese.training_step(model, batch, batch_idx)

    monkeypatch.setattr(model, "training_step", record)
    pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False).fit(model, datamodule=dm)
    assert len(seen) == 6
    for n0, n1, counts in seen:
        assert n0 == n1 == 12
        assert sorted(counts[counts > 0].tolist()) == [4, 4, 4] and counts[6:].sum() == 0


def test_held_out_split_has_no_class_overlap():
    dm = PKDataModule("synthetic", train_classes=parse_classes("0-6"), eval_classes=parse_classes("7,8-9"))
    dm.setup("fit")
    assert set(dm.train_data.labels.unique().tolist()) == set(range(7))
    assert set(dm.eval_data.labels.unique().tolist()) == {7, 8, 9}
    with pytest.raises(ValueError, match="share 7 class_7; they must be disjoint"):
        PKDataModule("synthetic", train_classes=range(8), eval_classes=range(7, 10)).setup()


def noisy_copy(image: torch.Tensor, generator: torch.Generator, noise: int = 3) -> torch.Tensor:
    return (image.int() + torch.randint(-noise, noise + 1, image.shape, generator=generator)).clamp(0, 255).byte()


def test_near_duplicate_report_finds_an_injected_duplicate():
    generator = torch.Generator().manual_seed(0)
    train = torch.randint(0, 256, (500, 1, 28, 28), dtype=torch.uint8, generator=generator)
    held_out = torch.randint(0, 256, (100, 1, 28, 28), dtype=torch.uint8, generator=generator)
    assert near_duplicate_report(train, held_out).duplicates_in_b == 0
    train[123] = noisy_copy(held_out[42], generator)  # a slightly noisy copy of an eval image leaks into training
    report = near_duplicate_report(train, held_out)
    assert report.duplicates_in_b == 1 and report.duplicates_in_a == [123]
    assert report.pairs[0][:2] == (123, 42) and report.pairs[0][3] < 3
    assert "1 of 100 eval images" in str(report)


def test_hash_matches_that_differ_in_pixels_are_not_near_duplicates():
    # Same average hash (each image's 8x8 blocks above / below its mean agree) but different pixels.
    base = torch.zeros(1, 1, 32, 32, dtype=torch.uint8)
    base[..., :16] = 200
    look_alike = base.clone()
    look_alike[..., :16] = 120  # same shape, other brightness: mean pixel difference 40
    report = near_duplicate_report(base, look_alike, threshold=0)
    assert report.hash_matches_in_b == 1 and report.duplicates_in_b == 0 and report.num_pairs == 0


def synthetic_with_leak(monkeypatch, copies: int) -> list[int]:
    """``load_split("synthetic", ...)`` whose train split holds noisy copies of test images of classes 7-9.

    Returns the train-split indices of the copies (images of classes 0-6 replaced by the copies).
    """
    generator = torch.Generator().manual_seed(0)
    train, test = make_synthetic(2048, seed=0), make_synthetic(512, seed=1)
    held_out = (test.labels >= 7).nonzero().flatten()[:copies]
    train_slots = (train.labels < 7).nonzero().flatten()[:copies]
    for slot, source in zip(train_slots, held_out):
        train.images[slot] = noisy_copy(test.images[source], generator)
    monkeypatch.setattr(data_memory, "load_split", lambda dataset, split, *args: train if split == "train" else test)
    return train_slots.tolist()


def test_data_module_drops_reports_or_fails_on_near_duplicates(monkeypatch):
    leaked = synthetic_with_leak(monkeypatch, copies=3)
    kept = PKDataModule("synthetic", train_classes=range(7), eval_classes=range(7, 10), near_duplicates="report")
    kept.setup("fit")
    assert kept.near_duplicates["train_copies"] == 3 and kept.near_duplicates["dropped_train_images"] == 0
    dropped = PKDataModule("synthetic", train_classes=range(7), eval_classes=range(7, 10))  # default: drop
    dropped.setup("fit")
    assert len(dropped.train_data) == len(kept.train_data) - 3 and len(dropped.eval_data) == len(kept.eval_data)
    assert dropped.near_duplicates["dropped_train_images"] == 3
    assert near_duplicate_report(dropped.train_data.images, dropped.eval_data.images).num_pairs == 0
    pairs = dropped.near_duplicates["pairs"]  # indices in the splits, so the images can be looked up
    assert {pair["train"] for pair in pairs} == set(leaked) and all(pair["pixel_difference"] < 3 for pair in pairs)
    with pytest.raises(ValueError, match="3 of .* eval images have a near-copy"):
        PKDataModule("synthetic", train_classes=range(7), eval_classes=range(7, 10),
                     near_duplicates="fail").setup()
    with pytest.raises(ValueError, match="report, drop, fail"):
        PKDataModule("synthetic", near_duplicates="ignore")


def test_recipe_writes_the_near_duplicates_it_dropped(monkeypatch, tmp_path):
    synthetic_with_leak(monkeypatch, copies=2)
    result = main(["--data.dataset", "synthetic", "--epochs", "0", "--episodes", "20", "--near_duplicates", "drop",
                   "--class_balanced", "false", "--log_to", "none", "--out", str(tmp_path)])
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["near_duplicates"]["dropped_train_images"] == 2
    assert result["near_duplicates"]["eval_images_with_copy"] == 2
    assert len(written["near_duplicates"]["pairs"]) == 2


def test_class_balanced_reaches_the_sampler():
    for balanced in (True, False):
        dm = PKDataModule("synthetic", train_classes=range(7), eval_classes=range(7, 10), class_balanced=balanced)
        assert dm.train_dataloader().batch_sampler.class_balanced is balanced


def test_contrastive_pairs_hold_each_image_with_its_other_view_and_balance_the_rest():
    for labels in [torch.tensor([0, 0, 1, 1, 2, 2, 2, 3]), torch.arange(5), torch.zeros(4, dtype=torch.long)]:
        i, j, same = contrastive_pairs(labels, seed=3)
        n = len(labels)
        assert torch.equal(i[:n], torch.arange(n)) and torch.equal(j[:n], torch.arange(n)) and same[:n].all()
        assert (same == (labels[i] == labels[j])).all() and (i[n:] != j[n:]).all()
        if len(labels.unique()) > 1:
            assert abs(int(same.sum()) - int((~same).sum())) <= 1  # as many positives as negatives


@pytest.mark.parametrize("labels", [None, torch.arange(8), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]),
                                    torch.zeros(8, dtype=torch.long)], ids=["none", "unique", "pk", "one-class"])
def test_contrastive_step_matches_a_float64_reference_on_any_batch(labels):
    torch.manual_seed(0)
    model = tiny_model(loss="contrastive", margin=0.8).double()
    view0, view1 = torch.randn(8, 3, 32, 32, dtype=torch.float64), torch.randn(8, 3, 32, 32, dtype=torch.float64)
    loss, embeddings = model.shared_step(view0, view1, labels)
    z = model.project(model.encode_views(view0, view1)).double()
    i, j, same = contrastive_pairs(torch.arange(8) if labels is None else labels, seed=0)
    terms = []
    for a, b, positive in zip(i.tolist(), j.tolist(), same.tolist()):
        d = (z[a] - z[8 + b]).pow(2).sum().sqrt().item()
        terms.append(d ** 2 if positive else max(0.8 - d, 0.0) ** 2)
    assert loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)  # the head's output is float32
    assert embeddings.shape == (8, 128)


def test_checkpoint_loads_after_the_pretrained_file_is_gone(tmp_path):
    backbone_file = export_backbone(tiny_model(), tmp_path / "ssl" / "backbone.pt")
    dm = PKDataModule("synthetic", train_classes=range(6), eval_classes=range(6, 10), p=3, k=4,
                      batches_per_epoch=1)
    model = SupervisedSiamese(pretrained=str(backbone_file), view_size=32, batch_size=dm.batch_size)
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=dm)
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    backbone_file.unlink()
    restored = SupervisedSiamese.load_from_checkpoint(tmp_path / "model.ckpt")
    assert "pretrained" not in restored.hparams
    assert (restored.hparams.backbone, restored.hparams.feature_dim) == ("tiny_cnn", model.feature_dim)
    for key, value in model.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key


def test_pretrained_backbone_initialises_the_model(tmp_path):
    source = tiny_model()
    path = export_backbone(source, tmp_path / "backbone.pt")
    model = SupervisedSiamese(pretrained=str(path), view_size=32)
    assert model.hparams.backbone == "tiny_cnn"
    for key, value in source.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value)


@pytest.mark.slow
@needs_fashion_mnist
def test_training_improves_one_shot_on_unseen_fashion_mnist_classes(tmp_path):
    result = run_siamese("fashion_mnist", str(DATA), train_classes=range(7), eval_classes=range(7, 10),
                         backbone="tiny_cnn", loss="triplet", mining="semi_hard", epochs=1,
                         batches_per_epoch=450, download=False, out=tmp_path, progress=False, log_to="none")
    before, after = result["before"], result["after"]
    duplicates = result["near_duplicates"]
    print(f"\nFashion-MNIST, train classes 0-6, unseen 7-9 ({result['steps']} steps of 7x8, "
          f"{result['train_seconds']:.0f} s), before -> after training:\n"
          f"  3-way 1-shot {before['fewshot_1shot']:.4f} ± {before['fewshot_ci95']:.4f} -> "
          f"{after['fewshot_1shot']:.4f} ± {after['fewshot_ci95']:.4f}\n"
          f"  AUC {before['auc']:.4f} -> {after['auc']:.4f}, EER {before['eer']:.4f} -> {after['eer']:.4f}, "
          f"R@1 {before['recall@1']:.4f} -> {after['recall@1']:.4f}\n"
          f"  near-copies {duplicates['eval_images_with_copy']} "
          f"(hash alone: {duplicates['hash_matches_in_eval']})")
    # Random init already beats chance (0.57 for 3-way), so the test is the gain from training: measured
    # 0.571 ± 0.010 -> 0.641 ± 0.009 (AUC 0.704 -> 0.728, R@1 0.901 -> 0.954; 0.629 with one torch thread);
    # the two 95% intervals must lie more than 0.02 apart. 450 steps, not fewer: at 200-300 steps seed 0 still
    # passes but seed 1's AUC falls below its random init; at 450 seed 1 passes too (0.581 -> 0.648, AUC
    # 0.718 -> 0.733; 900 steps gave 0.634 on seed 0). Measured 2026-12-07.
    assert after["fewshot_1shot"] - after["fewshot_ci95"] > before["fewshot_1shot"] + before["fewshot_ci95"] + 0.02
    assert after["fewshot_1shot"] - after["fewshot_ci95"] > 1 / 3 + 0.1
    assert after["recall@1"] > before["recall@1"] + 0.02 and after["auc"] > before["auc"]
    # The hash alone matches most eval images to some training image; the pixel check confirms none.
    assert duplicates["hash_matches_in_eval"] > 1000 and duplicates["eval_images_with_copy"] <= 2
    assert (tmp_path / "exported_models" / "backbone.pt").is_file()
