"""Supervised Siamese metric learning: the module, P x K data with held-out classes, and the recipe."""

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from ssl_siamese.data_pk import PKDataModule, near_duplicate_report
from ssl_siamese.export import export_backbone
from ssl_siamese.methods.siamese import SupervisedSiamese
from ssl_siamese.recipes.siamese import parse_classes, run_siamese

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fashion-mnist"


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
    with pytest.raises(ValueError, match="disjoint"):
        PKDataModule("synthetic", train_classes=range(8), eval_classes=range(7, 10))


def test_near_duplicate_report_finds_an_injected_duplicate():
    generator = torch.Generator().manual_seed(0)
    train = torch.randint(0, 256, (500, 1, 28, 28), dtype=torch.uint8, generator=generator)
    held_out = torch.randint(0, 256, (100, 1, 28, 28), dtype=torch.uint8, generator=generator)
    assert near_duplicate_report(train, held_out, threshold=2).duplicates_in_b == 0
    copy = (held_out[42].int() + torch.randint(-3, 4, (1, 28, 28), generator=generator)).clamp(0, 255)
    train[123] = copy.to(torch.uint8)  # a slightly noisy copy of an eval image leaks into training
    report = near_duplicate_report(train, held_out, threshold=2)
    assert report.duplicates_in_b == 1 and report.pairs[0][:2] == (123, 42) and report.pairs[0][3] < 3
    assert "1 of 100" in str(report)


def test_pretrained_backbone_initialises_the_model(tmp_path):
    source = tiny_model()
    path = export_backbone(source, tmp_path / "backbone.pt")
    model = SupervisedSiamese(pretrained=str(path), view_size=32)
    assert model.hparams.backbone == "tiny_cnn"
    for key, value in source.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value)


@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "train-images-idx3-ubyte.gz").is_file(), reason=f"no Fashion-MNIST at {DATA}")
def test_one_shot_on_unseen_fashion_mnist_classes_beats_chance(tmp_path):
    result = run_siamese("fashion_mnist", str(DATA), train_classes=range(7), eval_classes=range(7, 10),
                         backbone="tiny_cnn", loss="triplet", mining="semi_hard", epochs=1,
                         batches_per_epoch=900, download=False, out=tmp_path, progress=False)
    before, after = result["before"], result["after"]
    print(f"\nFashion-MNIST, train classes 0-6, unseen 7-9 ({result['steps']} steps of 7x8, "
          f"{result['train_seconds']:.0f} s): 3-way 1-shot {after['fewshot_1shot']:.4f} "
          f"± {after['fewshot_ci95']:.4f} (random init {before['fewshot_1shot']:.4f}), AUC {after['auc']:.4f}, "
          f"EER {after['eer']:.4f}, R@1 {after['recall@1']:.4f} (random init {before['recall@1']:.4f})")
    assert after["fewshot_1shot"] - after["fewshot_ci95"] > 1 / 3 + 0.1
    assert after["recall@1"] > before["recall@1"] + 0.02
    assert (tmp_path / "exported_models" / "backbone.pt").is_file()
