"""BYOL, Barlow Twins and VICReg: losses against float64 formulas, the EMA target, per-view augmentations,
AdamW and gradient clipping through a Trainer, two gloo ranks against one process, and learning through the
recipe command on real Fashion-MNIST.

References are written from the papers (Barlow Twins eq. 1-2 with batch-standardised embeddings; VICReg
eq. 1-6 with the official code's halved variance term, which lightly follows; BYOL eq. 2 and its cosine
momentum schedule), in float64 and without lightly's code. The EMA target's test runs MoCo and DINO too.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, TensorDataset

from ssl_siamese.methods import BYOL, DINO, BarlowTwins, MoCo, SimCLR, VICReg
from ssl_siamese.methods.ema import ema_copy, ema_momentum, update_ema

from helpers import fashion_mnist_dir, needs_fashion_mnist, recipe_knn, run_gloo_ranks

REPO = Path(__file__).resolve().parents[1]
SMALL = {"projection_dim": 16, "hidden_dim": 32}


def embeddings(n: int = 24, d: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two correlated (n, d) float32 batches; some dimensions of small variance (VICReg's hinge is active)."""
    g = torch.Generator().manual_seed(seed)
    z0 = torch.randn(n, d, generator=g) * torch.linspace(0.1, 2.0, d) + 0.5
    z1 = 0.7 * z0 + 0.3 * torch.randn(n, d, generator=g)
    return z0, z1


# ---- losses against the papers' formulas ---------------------------------------------------------------
def barlow_twins_reference(z0: torch.Tensor, z1: torch.Tensor, lam: float) -> float:
    """Eq. 1-2 of the paper: C_ij = sum_b za_bi zb_bj / N with each dimension standardised over the batch
    (by the official code's ``BatchNorm1d(affine=False)``: biased variance + 1e-5)."""
    a, b = z0.double(), z1.double()
    a = (a - a.mean(0)) / (a.var(0, unbiased=False) + 1e-5).sqrt()
    b = (b - b.mean(0)) / (b.var(0, unbiased=False) + 1e-5).sqrt()
    n, d = a.shape
    c = [[sum(a[k, i].item() * b[k, j].item() for k in range(n)) / n for j in range(d)] for i in range(d)]
    return sum((1 - c[i][i]) ** 2 for i in range(d)) + lam * sum(c[i][j] ** 2 for i in range(d) for j in range(d)
                                                                  if i != j)


def vicreg_reference(z0: torch.Tensor, z1: torch.Tensor, lam: float = 25.0, mu: float = 25.0,
                     nu: float = 1.0, eps: float = 1e-4) -> float:
    """s(Z, Z') = mean squared distance; v = mean_j relu(1 - sqrt(Var_j + eps)) (unbiased), halved over the two
    branches as in the official code; c = sum of squared off-diagonal covariances / d."""
    a, b = z0.double(), z1.double()
    n, d = a.shape
    invariance = ((a - b) ** 2).sum().item() / (n * d)

    def variance(z):
        return sum(max(0.0, 1.0 - math.sqrt(z[:, j].var().item() + eps)) for j in range(d)) / d

    def covariance(z):
        centred = z - z.mean(0)
        cov = centred.T @ centred / (n - 1)
        return sum(cov[i, j].item() ** 2 for i in range(d) for j in range(d) if i != j) / d

    return lam * invariance + mu * (variance(a) + variance(b)) / 2 + nu * (covariance(a) + covariance(b))


def test_barlow_twins_loss_matches_the_paper():
    model = BarlowTwins(backbone="tiny_cnn", **SMALL)
    assert model.criterion.lambda_param == 5e-3
    z0, z1 = embeddings()
    assert model.criterion(z0, z1).item() == pytest.approx(barlow_twins_reference(z0, z1, 5e-3), rel=1e-4)


def test_vicreg_loss_matches_the_paper():
    model = VICReg(backbone="tiny_cnn", **SMALL)
    z0, z1 = embeddings(seed=1)
    reference = vicreg_reference(z0, z1)
    assert vicreg_reference(z0, z1, 0.0, 1.0, 0.0) > 0.05, "the variance hinge should be active here"
    assert model.criterion(z0, z1).item() == pytest.approx(reference, rel=1e-5)
    weighted = VICReg(backbone="tiny_cnn", invariance_weight=3.0, variance_weight=2.0, covariance_weight=0.5,
                      **SMALL)
    assert weighted.criterion(z0, z1).item() == pytest.approx(vicreg_reference(z0, z1, 3.0, 2.0, 0.5), rel=1e-5)


def test_paper_defaults():
    def defaults(cls):
        return {k: p.default for k, p in inspect.signature(cls).parameters.items()}
    assert {k: defaults(BarlowTwins)[k] for k in ("projection_dim", "hidden_dim", "lambda_param")} == {
        "projection_dim": 8192, "hidden_dim": 8192, "lambda_param": 5e-3}
    assert {k: defaults(VICReg)[k] for k in ("projection_dim", "hidden_dim", "num_layers", "invariance_weight",
                                             "variance_weight", "covariance_weight")} == {
        "projection_dim": 8192, "hidden_dim": 8192, "num_layers": 3, "invariance_weight": 25.0,
        "variance_weight": 25.0, "covariance_weight": 1.0}
    assert {k: defaults(BYOL)[k] for k in ("projection_dim", "hidden_dim", "base_momentum")} == {
        "projection_dim": 256, "hidden_dim": 4096, "base_momentum": 0.99}
    projector = BarlowTwins(backbone="tiny_cnn", projection_dim=24, hidden_dim=40).projection_head
    assert [m.out_features for m in projector.modules() if isinstance(m, torch.nn.Linear)] == [40, 40, 24]


def test_byol_loss_is_the_symmetric_negative_cosine_to_the_target():
    torch.manual_seed(0)
    model = BYOL(backbone="tiny_cnn", **SMALL)
    with torch.no_grad():  # a target different from the online network
        for p in model.target_encoder.parameters():
            p.add_(0.1 * torch.randn_like(p))
    views = torch.randn(2, 6, 3, 16, 16)
    loss, _ = model.shared_step(views[0], views[1])  # outside a Trainer the momentum is 1.0: target kept
    both = torch.cat([views[0], views[1]])
    with torch.no_grad():
        p = model.prediction_head(model.projection_head(model.backbone(both).flatten(1))).double()
        t = model.target_encoder(both).double()
    p0, p1, t0, t1 = *p.chunk(2), *t.chunk(2)

    def cos(x, y):
        return ((x * y).sum(1) / (x.norm(dim=1) * y.norm(dim=1))).mean()
    assert loss.item() == pytest.approx(-0.5 * (cos(p0, t1) + cos(p1, t0)).item(), abs=1e-5)


# ---- the EMA target ------------------------------------------------------------------------------------
@pytest.mark.parametrize("base", [0.99, 0.996])
def test_momentum_schedule_is_the_cosine_from_base_to_one(base):
    total = 101
    for step in (0, 1, 17, 50, 99, 100, 140):
        reference = 1 - (1 - base) * (math.cos(math.pi * min(step, total - 1) / (total - 1)) + 1) / 2
        assert ema_momentum(step, total, base) == pytest.approx(reference, abs=1e-12), step
    assert ema_momentum(0, total, base) == base and ema_momentum(total - 1, total, base) == 1.0
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        BYOL(backbone="tiny_cnn", base_momentum=1.5, **SMALL)


def test_update_ema_is_the_formula_and_copies_buffers():
    torch.manual_seed(0)
    online = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    target = ema_copy(online)
    assert not any(p.requires_grad for p in target.parameters())
    online.train()(torch.randn(8, 4))  # move the running statistics
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
    before = [p.detach().double().clone() for p in target.parameters()]
    for m in (0.9, 0.5):
        update_ema(online, target, m)
        for p_target, p_before, p_online in zip(target.parameters(), before, online.parameters()):
            torch.testing.assert_close(p_target.double(), m * p_before + (1 - m) * p_online.double())
        before = [p.detach().double().clone() for p in target.parameters()]
    for b_target, b_online in zip(target.buffers(), online.buffers()):
        assert torch.equal(b_target, b_online)


def test_no_gradient_reaches_the_target():
    model = BYOL(backbone="tiny_cnn", **SMALL)
    loss, _ = model.shared_step(torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16))
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in model.target_encoder.parameters())
    assert all(p.grad is not None for p in model.prediction_head.parameters())
    assert all(p.grad is not None for p in model.backbone.parameters())
    trained = {id(p) for group in model.parameter_groups() for p in group["params"]}
    assert not trained & {id(p) for p in model.target_encoder.parameters()}


def uint8_loader(n: int = 32, batch: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 16, 16), dtype=torch.uint8, generator=g)
    return DataLoader(TensorDataset(images, torch.zeros(n, dtype=torch.long)), batch_size=batch)


def quiet_trainer(**kwargs) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, **kwargs)


class RecordEMA(pl.Callback):
    """Per step: the momentum the method remembered, and how far its target (``ema_networks()``) is from the
    float64 EMA formula ``m * target + (1 - m) * online`` of the networks as they were before the step."""

    def __init__(self) -> None:
        self.momenta: list[float] = []
        self.errors: list[float] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        online, target = module.ema_networks()
        self.online = [p.detach().double().clone() for p in online.parameters()]
        self.target = [p.detach().double().clone() for p in target.parameters()]

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        m = module.ema_momentum.item()
        self.momenta.append(m)
        self.errors.append(max((t.double() - (m * t0 + (1 - m) * o)).abs().max().item() for t, t0, o
                               in zip(module.ema_networks()[1].parameters(), self.target, self.online)))


def test_byol_trainer_steps_follow_the_schedule_with_adamw_and_clipping():
    torch.manual_seed(0)
    model = BYOL(backbone="tiny_cnn", backbone_kwargs={"width": 8}, optimizer="adamw", lr=0.01, weight_decay=0.05,
                 batch_size=8, base_momentum=0.9, view_size=16, mean=(0.5,) * 3, std=(0.25,) * 3, **SMALL)
    record = RecordEMA()
    trainer = quiet_trainer(max_epochs=2, callbacks=[record], gradient_clip_val=0.5)
    trainer.fit(model, uint8_loader())
    total = 8
    assert record.momenta == pytest.approx([ema_momentum(s, total, 0.9) for s in range(total)], abs=1e-6)
    assert record.momenta[0] == pytest.approx(0.9) and record.momenta[-1] == 1.0
    assert max(record.errors) < 1e-6
    assert trainer.callback_metrics["train/ema_momentum"].item() == 1.0 and "ema_momentum" in model.state_dict()
    optimizer = trainer.optimizers[0]
    assert isinstance(optimizer, torch.optim.AdamW)
    decay = {group["name"]: group["weight_decay"] for group in optimizer.param_groups}
    assert decay == {"decay": 0.05, "no_decay": 0.0}
    assert all(p.ndim <= 1 for group in optimizer.param_groups if group["name"] == "no_decay" for p in group["params"])


def cosine_from_09(step: int) -> float:
    """BYOL's schedule from 0.9 to 1.0 over 6 steps."""
    return 1 - 0.1 * (math.cos(math.pi * step / 5) + 1) / 2


EMA_METHODS = {  # (method, options, the momentum of each of the 6 steps); BYOL: the test above
    "moco": (MoCo, {"queue_size": 8, "momentum_ema": 0.9}, lambda step: 0.9),
    "moco_cosine": (MoCo, {"queue_size": 8, "momentum_ema": 0.9, "momentum_cosine": True}, cosine_from_09),
    "dino": (DINO, {"output_dim": 32, "hidden_dim": 24, "bottleneck_dim": 8, "local_views": 2, "local_size": 8,
                    "base_momentum": 0.9}, cosine_from_09),
}


@pytest.mark.parametrize("name", list(EMA_METHODS))
def test_ema_targets_follow_their_schedule_through_a_trainer(name):
    """MoCo's key encoder and DINO's teacher, as BYOL's target, through the one ``EMATarget``: before each step's
    forward the target moves by the EMA formula with the scheduled momentum (``update_ema``, tested above, also
    copies the buffers) and the momentum is logged; MoCo keeps its checkpoint keys (no ``ema_momentum`` in its
    state_dict), BYOL and DINO keep their ``ema_momentum``."""
    method, options, schedule = EMA_METHODS[name]
    torch.manual_seed(0)
    model = method(backbone="tiny_cnn", backbone_kwargs={"width": 8}, view_size=16, batch_size=4,
                   mean=(0.5,) * 3, std=(0.25,) * 3, **options)
    record = RecordEMA()
    trainer = quiet_trainer(max_epochs=2, callbacks=[record])
    trainer.fit(model, uint8_loader(n=12, batch=4))
    assert record.momenta == pytest.approx([schedule(step) for step in range(6)], abs=1e-7)
    assert max(record.errors) < 1e-6
    assert trainer.callback_metrics["train/ema_momentum"].item() == pytest.approx(record.momenta[-1])
    assert ("ema_momentum" in model.state_dict()) == (method is not MoCo)


def test_gradient_clipping_bounds_the_first_sgd_step():
    """SGD without momentum or weight decay moves the weights by lr x the clipped gradient: norm lr x clip."""
    torch.manual_seed(0)
    model = BarlowTwins(backbone="tiny_cnn", backbone_kwargs={"width": 8}, optimizer="sgd", lr=0.256, momentum=0.0,
                        weight_decay=0.0, batch_size=8, view_size=16, mean=(0.5,) * 3, std=(0.25,) * 3, **SMALL)
    before = [p.detach().clone() for p in model.parameters()]
    after = []
    first_step = pl.callbacks.LambdaCallback(on_train_batch_end=lambda trainer, module, *args: after.append(
        [p.detach().clone() for p in module.parameters()]) if not after else None)
    quiet_trainer(max_epochs=1, gradient_clip_val=1e-3, callbacks=[first_step]).fit(model, uint8_loader())
    moved = torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(after[0], before)))
    lr = 0.256 * 8 / 256
    assert moved.item() == pytest.approx(lr * 1e-3, rel=1e-3)


# ---- views ---------------------------------------------------------------------------------------------
def training_views(model, images: torch.Tensor, seed: int = 3) -> list[torch.Tensor]:
    model._trainer = SimpleNamespace(training=True)  # noqa: SLF001 - only ``trainer.training`` is read
    torch.manual_seed(seed)
    views, _ = model.on_after_batch_transfer((images, torch.zeros(len(images))), 0)
    model._trainer = None  # noqa: SLF001
    return views


def test_views_draw_per_view_augmentations_in_order():
    images = torch.randint(0, 256, (6, 3, 20, 20), dtype=torch.uint8)
    simclr = SimCLR(backbone="tiny_cnn", view_size=20)
    torch.manual_seed(3)
    expected = [simclr.augmentation(images) for _ in range(2)]  # the 2-view path as before: same RNG draws
    assert all(torch.equal(a, b) for a, b in zip(training_views(simclr, images), expected))

    byol = BYOL(backbone="tiny_cnn", view_size=20, **SMALL)
    first, second = byol.view_augmentations()
    assert (first.solarize_prob, second.solarize_prob) == (0.0, 0.2)
    assert (first.saturation, first.grayscale_prob, first.crop_scale) == (0.2, 0.2, (0.08, 1.0))
    assert (first.blur_prob, second.blur_prob) == (0.0, 0.0)  # no blur on small images
    big = BYOL(backbone="tiny_cnn", view_size=96, **SMALL).view_augmentations()
    assert (big[0].blur_prob, big[1].blur_prob) == (1.0, 0.1)
    torch.manual_seed(3)
    expected = [first(images), second(images)]
    assert all(torch.equal(a, b) for a, b in zip(training_views(byol, images), expected))

    given = SimCLR(backbone="tiny_cnn", view_size=20).augmentation
    symmetric = BYOL(backbone="tiny_cnn", augmentation=given, **SMALL).view_augmentations()
    assert symmetric[0] is given and symmetric[1] is given
    assert VICReg(backbone="tiny_cnn", **SMALL).view_augmentations()[1].solarize_prob == 0.2


# ---- two gloo ranks against one process ----------------------------------------------------------------
WORLD_SIZE, PER_RANK, STEPS = 2, 4, 3
DDP_METHODS = {"barlow_twins": BarlowTwins, "vicreg": VICReg, "byol": BYOL}


def fixed_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(123)
    n = WORLD_SIZE * PER_RANK
    return [(torch.randn(n, 3, 16, 16, generator=g), torch.randn(n, 3, 16, 16, generator=g)) for _ in range(STEPS)]


def run_steps(name: str, rank: int = 0, world_size: int = 1, states: list[dict] | None = None) -> dict[str, list]:
    """SGD steps on this rank's shard, gradients (and the logged loss) averaged over ranks as DDP does.

    BatchNorm in eval mode (fixed statistics), as in test_distributed.py: the comparison isolates the loss's
    use of the global batch. BYOL's momentum follows the schedule over ``STEPS`` steps. ``states``: start
    each step from these weights (the ranks' own), so the single process computes the same step: the tiny
    network's gradients are so sensitive (1e-8 on the weights moves them by 6e-5) that two trajectories
    apart by float rounding differ in their gradients after a step.
    """
    torch.manual_seed(0)
    options = {"byol": {"base_momentum": 0.5, **SMALL},
               "barlow_twins": {"projection_dim": 6, "hidden_dim": 32}}.get(name, SMALL)  # C of full rank
    model = DDP_METHODS[name](backbone="tiny_cnn", batch_size=PER_RANK, **options)
    model.eval()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.005, momentum=0.9)
    record: dict[str, list] = {"loss": [], "grads": [], "target": [], "states": []}
    for step, (view0, view1) in enumerate(fixed_batches()):
        if states is not None:
            model.load_state_dict(states[step])
        record["states"].append({k: v.clone() for k, v in model.state_dict().items()})
        model.schedule_position = lambda step=step: (step, STEPS)
        shard = slice(rank * PER_RANK, (rank + 1) * PER_RANK) if world_size > 1 else slice(None)
        optimizer.zero_grad()
        loss, _ = model.shared_step(view0[shard], view1[shard])
        loss.backward()
        loss = loss.detach()
        if world_size > 1:
            for tensor in [loss] + [p.grad for p in model.parameters() if p.grad is not None]:
                dist.all_reduce(tensor)
                tensor /= world_size
        record["loss"].append(loss.clone())
        record["grads"].append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        optimizer.step()
        if name == "byol":
            record["target"].append({n: t.clone() for n, t in model.target_encoder.state_dict().items()})
    return record


def rank_records(rank: int, world_size: int) -> dict:
    return {name: run_steps(name, rank, world_size) for name in DDP_METHODS}


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory) -> tuple[list[dict], dict]:
    out_dir = tmp_path_factory.mktemp("ddp_byol_barlow_vicreg")
    ranks = run_gloo_ranks(rank_records, WORLD_SIZE, out_dir)
    same_start = {name: run_steps(name, states=ranks[0][name]["states"]) for name in DDP_METHODS}
    return ranks, {**same_start, "byol_trajectory": run_steps("byol")}


@pytest.mark.parametrize("name", list(DDP_METHODS))
def test_two_ranks_equal_one_process_on_the_whole_batch(ddp_runs, name):
    ranks, reference = ddp_runs
    for step in range(STEPS):
        ref_grads = reference[name]["grads"][step]
        scale = max(g.abs().max().item() for g in ref_grads.values())
        for record in ranks:
            torch.testing.assert_close(record[name]["loss"][step], reference[name]["loss"][step],
                                       rtol=1e-5, atol=1e-6)
            assert record[name]["grads"][step].keys() == ref_grads.keys()
            diff = max((record[name]["grads"][step][k] - ref_grads[k]).abs().max().item() for k in ref_grads)
            # float32 sums in another order on 2 ranks: up to 1.7e-5 of the largest gradient seen (Barlow Twins,
            # clean-clone CI run); a per-rank instead of global-batch loss differs by the gradients' own size
            assert diff <= 1e-4 * max(scale, 1.0), (name, step, diff, scale)


def test_barlow_twins_rank_loss_is_the_global_batch_loss(ddp_runs):
    """Each rank's own loss (before averaging) is already the global one: the batch is standardised globally."""
    ranks, reference = ddp_runs
    assert ranks[0]["barlow_twins"]["loss"] == ranks[1]["barlow_twins"]["loss"]


def test_byol_target_identical_on_both_ranks(ddp_runs):
    ranks, reference = ddp_runs
    for step in range(STEPS):
        rank0, rank1 = (r["byol"]["target"][step] for r in ranks)
        single = reference["byol_trajectory"]["target"][step]
        assert all(torch.equal(rank0[k], rank1[k]) for k in rank0), f"the ranks' targets differ after step {step}"
        for k in rank0:
            torch.testing.assert_close(rank0[k], single[k], atol=1e-6, rtol=1e-5)
    moved = [k for k in ranks[0]["byol"]["target"][-1] if k.endswith("weight")
             and not torch.equal(ranks[0]["byol"]["target"][-1][k], ranks[0]["byol"]["target"][0][k])]
    assert moved, "the target never moved"


# ---- learning on real data through the recipe command --------------------------------------------------
# the quickstart's views for 28-pixel gray images (recipes/quickstart.yaml): BYOL's 0.08 crops are too harsh here
QUICKSTART_VIEWS = ["--model.augmentation", "ssl_siamese.views.augment.ViewAugmentation", "--model.augmentation.size", "28",
                    "--model.augmentation.crop_scale", "[0.2, 1.0]", "--model.augmentation.mean", "[0.286, 0.286, 0.286]",
                    "--model.augmentation.std", "[0.353, 0.353, 0.353]"]


@needs_fashion_mnist
def test_vicreg_recipe_learns_on_fashion_mnist(tmp_path):
    """``python -m ssl_siamese.recipes.vicreg`` in-process (helpers.recipe_knn), tiny_cnn, 4096 images, 2 epochs (64 steps): 0.534 -> 0.617 kNN
    top-1 (8192 images, 128 steps: 0.534 -> 0.620, so the extra steps bought no margin; raw pixels 0.735)."""
    args = ["--model.backbone", "tiny_cnn",
            "--data.dataset", "fashion_mnist", "--data.data_dir", str(fashion_mnist_dir()), "--data.download", "false",
            "--data.batch_size", "128", "--data.train_subset", "4096", "--data.knn_bank_subset", "2000",
            "--data.val_subset", "1000", "--trainer.max_epochs", "2", "--trainer.accelerator", "cpu",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--model.hidden_dim", "512", "--model.projection_dim", "512", "--model.lr", "0.2",
            "--model.warmup_epochs", "0.5", "--online_probe", "false", "--pictures_every_n_epochs", "0",
            "--log_to", "none", "--out", str(tmp_path), *QUICKSTART_VIEWS]
    at_init, trained, pixels = recipe_knn("vicreg", args)
    line = f"kNN top-1: {at_init:.4f} at start -> {trained:.4f} (raw pixels {pixels:.4f})"
    print(f"\nVICReg on Fashion-MNIST (tiny_cnn, 4096 images, 2 epochs): {line}")
    assert trained > at_init + 0.05, line
