"""Two gloo ranks on CPU compute the same loss, gradients and MoCo queue as one process on the whole batch.

Each rank holds half of a fixed batch (rank 0 the first half, rank 1 the second) and calls the method's
``shared_step`` on ``[view0_r, view1_r]``; gradients are averaged over ranks as DDP does. The reference is
one process (no process group) on the concatenated batch in the same sample order.

BatchNorm: in training mode each rank normalises with its own batch statistics, which a single process
on the whole batch cannot reproduce. ``nn.SyncBatchNorm`` would fix that, but it raises on CPU tensors
("SyncBatchNorm expected input tensor to be on GPU ..."), so the models run with BatchNorm in eval mode:
BN is then a fixed per-sample affine map and the comparison isolates what this test is about, the
cross-rank loss logic (NT-Xent's gathered negatives and its gradient, MoCo's gathered queue). On GPUs use
``Trainer(sync_batchnorm=True)`` to get the single-process BN statistics too.

NT-Xent gradient scale: lightly's gather sums the gradients of every rank's loss w.r.t. each rank's
embeddings (all-reduce in backward) and DDP then averages over ranks, which gives exactly the gradient of
the mean of the per-rank losses, i.e. of the single-process loss. No factor of world_size is missing.
"""

from __future__ import annotations


import pytest
import torch
import torch.distributed as dist

from ssl_siamese.evaluation.knn import KNNEvaluation
from ssl_siamese.evaluation.online_probe import OnlineLinearProbe
from ssl_siamese.methods import MoCo, SimCLR, SimSiam

from helpers import run_gloo_ranks

WORLD_SIZE = 2
PER_RANK = 4
STEPS = 3
METHODS = {
    "simclr": (SimCLR, {"projection_dim": 16, "hidden_dim": 32}),
    # 2 * 8 keys per step do not divide 24: the queue wraps around in the middle of a step's keys.
    "moco": (MoCo, {"projection_dim": 16, "hidden_dim": 32, "queue_size": 24}),
    "simsiam": (SimSiam, {"projection_dim": 32, "predictor_hidden_dim": 8}),
}


def fixed_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``STEPS`` global batches of two views, ``WORLD_SIZE * PER_RANK`` samples each."""
    g = torch.Generator().manual_seed(123)
    n = WORLD_SIZE * PER_RANK
    return [(torch.randn(n, 3, 16, 16, generator=g), torch.randn(n, 3, 16, 16, generator=g))
            for _ in range(STEPS)]


def build(name: str) -> torch.nn.Module:
    cls, kwargs = METHODS[name]
    torch.manual_seed(0)
    model = cls(backbone="tiny_cnn", lr=0.5, batch_size=PER_RANK, **kwargs)
    return model.eval()  # BatchNorm with fixed statistics: see the module docstring


def run_steps(name: str, rank: int = 0, world_size: int = 1) -> dict[str, list[torch.Tensor]]:
    """Train ``STEPS`` SGD steps on this rank's shard; record loss, averaged grads and the MoCo queue."""
    model = build(name)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5, momentum=0.9)
    record: dict[str, list] = {"loss": [], "grads": [], "queue": []}
    for view0, view1 in fixed_batches():
        shard = slice(rank * len(view0) // world_size, (rank + 1) * len(view0) // world_size)
        optimizer.zero_grad()
        loss, _ = model.shared_step(view0[shard], view1[shard])
        loss.backward()
        loss = loss.detach()
        if world_size > 1:  # what DDP does: average the gradients (and here the logged loss) over ranks
            for tensor in [loss] + [p.grad for p in model.parameters() if p.grad is not None]:
                dist.all_reduce(tensor)
                tensor /= world_size
        record["loss"].append(loss.clone())
        record["grads"].append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        if name == "moco":
            record["queue"].append(model.queue.keys.clone())
        optimizer.step()
    return record


def probe_steps(rank: int = 0, world_size: int = 1) -> list[torch.Tensor]:
    """The online probe's weights after each of 4 steps on this rank's shard of fixed features.

    Unlabelled rows (-1) are spread unevenly: rank 1 has fewer labelled rows than rank 0, and in the
    last step none, so a plain average of per-rank mean losses would weigh the rows wrongly.
    """
    g = torch.Generator().manual_seed(7)
    probe = OnlineLinearProbe(num_classes=3, lr=0.5)
    probe.build(6, 3)
    weights = []
    for step in range(4):
        features = torch.randn(WORLD_SIZE * PER_RANK, 6, generator=g)
        labels = torch.randint(0, 3, (WORLD_SIZE * PER_RANK,), generator=g)
        if step > 0:
            labels[PER_RANK + 1:] = -1  # rank 1: one labelled row
        if step == 3:
            labels[PER_RANK:] = -1      # rank 1: none
        shard = slice(rank * len(labels) // world_size, (rank + 1) * len(labels) // world_size)
        probe.train_step(features[shard], labels[shard])
        weights.append(torch.cat([probe.classifier.weight.detach().flatten(), probe.classifier.bias.detach()]))
    return weights


def shuffle_bn_model() -> MoCo:
    """MoCo with shuffling BN and BatchNorm in training mode (batch statistics), so the shuffle matters."""
    cls, kwargs = METHODS["moco"]
    torch.manual_seed(0)
    return cls(backbone="tiny_cnn", lr=0.5, batch_size=PER_RANK, shuffle_bn=True, **kwargs).train()


def all_views() -> torch.Tensor:
    """The first batch as the ranks hold it, in rank order: ``[v0 | v1 of rank 0, v0 | v1 of rank 1]``."""
    view0, view1 = fixed_batches()[0]
    return torch.cat([torch.cat([view0[r * PER_RANK:(r + 1) * PER_RANK], view1[r * PER_RANK:(r + 1) * PER_RANK]])
                      for r in range(WORLD_SIZE)])


def shuffle_bn_keys(rank: int) -> torch.Tensor:
    """This rank's MoCo keys with ``shuffle_bn`` (the permutation drawn after ``manual_seed(11)``)."""
    model = shuffle_bn_model()
    views = all_views().chunk(WORLD_SIZE)[rank]
    torch.manual_seed(11)
    return model.keys(views)


def rank_record(rank: int, world_size: int) -> dict:
    record = {name: run_steps(name, rank, world_size) for name in METHODS}
    record["probe"] = probe_steps(rank, world_size)
    record["shuffle_bn_keys"] = shuffle_bn_keys(rank)
    return record


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[list[dict], dict]:
    out_dir = tmp_path_factory.mktemp("ddp")
    ranks = run_gloo_ranks(rank_record, WORLD_SIZE, out_dir)
    assert not dist.is_initialized()
    reference = {name: run_steps(name) for name in METHODS}
    reference["probe"] = probe_steps()
    return ranks, reference


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.parametrize("name", list(METHODS))
def test_two_ranks_match_one_process(runs, name):
    ranks, reference = runs
    ref = reference[name]
    for step in range(STEPS):
        ref_grads = ref["grads"][step]
        assert ref_grads, "no gradients recorded"
        scale = max(g.abs().max().item() for g in ref_grads.values())
        for record in ranks:
            loss = record[name]["loss"][step]
            assert torch.allclose(loss, ref["loss"][step], rtol=1e-5, atol=1e-6), (step, loss, ref["loss"][step])
            diff = max_abs_diff(record[name]["grads"][step], ref_grads)
            print(f"{name} step {step}: |loss diff| {abs(loss - ref['loss'][step]).item():.2e}, "
                  f"max |grad diff| {diff:.2e} (max |grad| {scale:.2e})")
            assert diff <= 1e-5 * max(scale, 1.0), (step, diff, scale)


def test_moco_queue_identical_on_all_ranks_and_single_process(runs):
    ranks, reference = runs
    for step in range(STEPS):
        rank0, rank1 = (record["moco"]["queue"][step] for record in ranks)
        assert torch.equal(rank0, rank1), f"ranks' queues differ after step {step}"
        single = reference["moco"]["queue"][step]
        assert torch.allclose(rank0, single, atol=1e-5), (
            f"queue differs from the single-process queue after step {step}: "
            f"max diff {(rank0 - single).abs().max().item():.2e}")


def test_online_probe_is_one_classifier_trained_on_the_global_batch(runs):
    ranks, reference = runs
    for step, single in enumerate(reference["probe"]):
        rank0, rank1 = (record["probe"][step] for record in ranks)
        assert torch.equal(rank0, rank1), f"the ranks' probes differ after step {step}"
        assert torch.allclose(rank0, single, atol=1e-6), (
            f"step {step}: max diff to one process {(rank0 - single).abs().max().item():.2e}")


def test_moco_shuffle_bn_computes_keys_on_the_shuffled_global_batch(runs):
    """Reference written out: permute the global batch, split it over the ranks, encode each part with its
    own batch statistics, undo the permutation; each rank must hold its own rows of the result."""
    ranks, _ = runs
    model, views = shuffle_bn_model(), all_views()
    torch.manual_seed(11)
    permutation = torch.randperm(len(views))  # what rank 0 draws and broadcasts
    with torch.no_grad():
        shuffled_keys = torch.cat([model.key_encoder(views[part]) for part in permutation.chunk(WORLD_SIZE)])
        plain_keys = torch.cat([model.key_encoder(part) for part in views.chunk(WORLD_SIZE)])
    keys = torch.empty_like(shuffled_keys)
    keys[permutation] = shuffled_keys
    for rank, record in enumerate(ranks):
        expected = keys.chunk(WORLD_SIZE)[rank]
        assert torch.allclose(record["shuffle_bn_keys"], expected, atol=1e-5), f"rank {rank}"
        assert not torch.allclose(record["shuffle_bn_keys"], plain_keys.chunk(WORLD_SIZE)[rank], atol=1e-3), (
            "with batch statistics, shuffled keys must differ from per-rank keys")


class RecordRank(__import__("pytorch_lightning").Callback):
    """Writes what this rank trained on (image checksums per step) and its learning rate to a file."""

    def __init__(self, folder) -> None:
        self.folder = folder

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        images = batch[0][0] if isinstance(batch[0], list) else batch[0]
        with open(f"{self.folder}/rank{trainer.global_rank}.txt", "a") as file:
            file.write(f"{trainer.current_epoch} {images.shape[0]}\n")

    def on_fit_end(self, trainer, pl_module) -> None:
        knn, probe = (next(c for c in trainer.callbacks if isinstance(c, cls)) for cls in (KNNEvaluation,
                                                                                          OnlineLinearProbe))
        torch.save({"lr": trainer.optimizers[0].param_groups[0]["initial_lr"],
                    "knn": [row[1] for row in knn.history],
                    "probe_val_top1": float(trainer.callback_metrics["probe/val_top1"]),
                    "probe_weight": probe.classifier.weight.detach().clone()},
                   f"{self.folder}/rank{trainer.global_rank}.pt")


def test_lightning_ddp_two_processes_shard_the_data_and_scale_the_lr(tmp_path):
    """The real Trainer path: DDP with 2 gloo processes on CPU, our resumable loader, kNN gathered."""
    import pytorch_lightning as pl

    from ssl_siamese import SSLDataModule

    model = SimCLR(backbone="tiny_cnn", lr=0.2, projection_dim=16, hidden_dim=32)
    data = SSLDataModule("synthetic", batch_size=16, train_subset=64, knn_bank_subset=64, val_subset=30)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[RecordRank(str(tmp_path)), KNNEvaluation(k=5), OnlineLinearProbe()])
    trainer.fit(model, datamodule=data)
    steps = [(tmp_path / f"rank{r}.txt").read_text().split("\n")[:-1] for r in range(2)]
    assert steps[0] == steps[1] == ["0 16", "0 16"], "64 images, 2 ranks, 16 per step: 2 steps each"
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert results[0]["lr"] == results[1]["lr"] == pytest.approx(0.2 * 16 * 2 / 256)
    assert len(results[0]["knn"]) == 1 and results[0]["knn"] == results[1]["knn"], "kNN on all ranks' features"
    assert results[0]["probe_val_top1"] == results[1]["probe_val_top1"], "probe accuracy over all ranks' queries"
    assert torch.equal(results[0]["probe_weight"], results[1]["probe_weight"]), "one probe, not one per rank"
    assert results[0]["probe_weight"].abs().sum() > 0, "the probe trained"


class RecordLabels(__import__("pytorch_lightning").Callback):
    """Writes the labels of each training batch this rank sees to a file."""

    def __init__(self, folder) -> None:
        self.folder = folder

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        with open(f"{self.folder}/rank{trainer.global_rank}.txt", "a") as file:
            file.write(" ".join(map(str, batch[1].tolist())) + "\n")


def test_supervised_siamese_ddp_ranks_train_on_their_own_pk_batches(tmp_path):
    """2 gloo processes: each rank gets its own share of one P x K draw, not a DistributedSampler's remake."""
    import pytorch_lightning as pl

    from ssl_siamese.data.pk import PKDataModule
    from ssl_siamese.methods.siamese import SupervisedSiamese
    from ssl_siamese.data.samplers import PKBatchSampler

    model = SupervisedSiamese(backbone="tiny_cnn", view_size=32, mean=(0.5,) * 3, std=(0.25,) * 3)
    data = PKDataModule("synthetic", train_classes=range(6), eval_classes=range(6, 10), p=3, k=4,
                        batches_per_epoch=2)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[RecordLabels(str(tmp_path))])
    trainer.fit(model, datamodule=data)
    seen = [[list(map(int, line.split())) for line in (tmp_path / f"rank{r}.txt").read_text().splitlines()]
            for r in range(2)]
    data.setup("fit")
    expected = []
    for rank in range(2):
        sampler = PKBatchSampler(data.train_data.labels, p=3, k=4, num_batches=2, rank=rank, world_size=2)
        sampler.set_epoch(0)
        expected.append([data.train_data.labels[batch].tolist() for batch in sampler])
    assert seen == expected
    assert seen[0] != seen[1], "the ranks train on different batches"
