"""Method mechanics: weight sharing, stop-gradient, momentum encoder, queue update order."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ssl_siamese import DINO, MoCo, SimCLR, SimSiam
from ssl_siamese.views.augment import ViewAugmentation
from ssl_siamese.backbones import build_backbone

SMALL = dict(backbone="tiny_cnn", view_size=16)


def make(method, **kwargs):
    torch.manual_seed(0)
    if method is SimSiam:
        kwargs.setdefault("projection_dim", 32)
    if method is MoCo:
        kwargs.setdefault("queue_size", 64)
    return method(**SMALL, **kwargs)


def views(batch=8, size=16):
    torch.manual_seed(1)
    return (torch.randn(batch, 3, size, size, requires_grad=True),
            torch.randn(batch, 3, size, size, requires_grad=True))


@pytest.mark.parametrize("method", [SimCLR, MoCo, SimSiam])
def test_both_views_go_through_one_backbone_forward(method):
    model = make(method)
    calls = []
    model.backbone.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[0]))
    view0, view1 = views()
    loss, embeddings = model.shared_step(view0, view1)
    loss.backward()
    assert calls == [16], "the two views must share one forward of the concatenated batch"
    assert embeddings.shape[0] == 8 and torch.isfinite(loss)
    for view in (view0, view1):  # gradients from both views reach the one backbone
        assert view.grad is not None and view.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.backbone.parameters())


def test_moco_key_encoder_gets_no_gradient():
    model = make(MoCo)
    loss, _ = model.shared_step(*views())
    loss.backward()
    assert all(not p.requires_grad and p.grad is None for p in model.key_encoder.parameters())
    assert all(p.grad is not None for p in model.projection_head.parameters())


def test_moco_momentum_update_is_the_ema_formula():
    model = make(MoCo)
    with torch.no_grad():
        for p in model.query_encoder().parameters():
            p.add_(torch.randn_like(p))
        for b in model.query_encoder().buffers():
            if b.dtype.is_floating_point:
                b.add_(torch.rand_like(b))
    query = [p.clone() for p in model.query_encoder().parameters()]
    key = [p.clone() for p in model.key_encoder.parameters()]
    model.update_target(0.9)
    for new, k, q in zip(model.key_encoder.parameters(), key, query):
        torch.testing.assert_close(new, 0.9 * k + 0.1 * q)
    for key_buffer, query_buffer in zip(model.key_encoder.buffers(), model.query_encoder().buffers()):
        assert torch.equal(key_buffer, query_buffer), "BatchNorm buffers are copied, not left stale"


def test_moco_negatives_exclude_this_steps_keys():
    model = make(MoCo)
    before = model.queue.keys.clone()
    seen = {}
    original = model.criterion.forward

    def spy(query, positive_key, negative_keys):
        seen.setdefault("negatives", []).append(negative_keys.clone())
        return original(query, positive_key, negative_keys)

    model.criterion.forward = spy
    model.shared_step(*views())
    assert len(seen["negatives"]) == 2
    for negatives in seen["negatives"]:  # both losses see the queue as it was before the step
        assert torch.equal(negatives, before)
    assert model.queue.pointer.item() == 16  # then both views' keys are enqueued
    assert not torch.equal(model.queue.keys[:16], before[:16])


def test_moco_cosine_momentum_schedule_reaches_one():
    model = make(MoCo, momentum_cosine=True)
    schedule = [model.momentum_at(step, 100) for step in range(100)]
    assert schedule[0] == pytest.approx(0.99) and schedule[-1] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(schedule, schedule[1:]))
    assert make(MoCo).momentum_at(50, 100) == pytest.approx(0.99)  # constant by default


def test_methods_save_their_own_arguments_through_the_base_call():
    """``SiameseModule``'s one ``save_hyperparameters`` keeps each method's own arguments (checkpoints rebuild the
    model from them) and leaves out modules and the method's ``hparams_not_saved``."""
    moco = make(MoCo, momentum_cosine=True)
    assert moco.hparams.momentum_cosine is True and moco.hparams.queue_size == 64
    assert moco.hparams.backbone == "tiny_cnn"
    augmentation = ViewAugmentation(16)
    dino = DINO(**SMALL, output_dim=32, hidden_dim=24, bottleneck_dim=8, local_views=3,
                augmentation=augmentation, local_augmentation=augmentation)
    assert dino.hparams.local_views == 3 and dino.hparams.optimizer == "adamw"  # DINO's default, given to the base
    assert not {"augmentation", "augmentation_view1", "local_augmentation"} & set(dino.hparams)


def test_simsiam_stop_gradient_on_target():
    """With an identity predictor the loss is -cos(z0, sg z1)/2 - cos(z1, sg z0)/2, so dL/dz0 is
    exactly half the gradient that -cos(z0, z1) would give without the stop-gradient."""
    model = make(SimSiam)
    model.prediction_head = nn.Identity()
    captured = {}

    def keep(module, inputs, output):
        output.retain_grad()
        captured["z"] = output

    model.projection_head.register_forward_hook(keep)
    loss, _ = model.shared_step(*views())
    loss.backward()
    z = captured["z"].detach().clone().requires_grad_(True)
    z0, z1 = z.chunk(2)
    (-F.cosine_similarity(z0, z1).mean()).backward()
    torch.testing.assert_close(captured["z"].grad, 0.5 * z.grad)


def test_backbone_module_and_unknown_name():
    module, dim = build_backbone(nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()),
                                 feature_dim=4)
    assert dim == 4
    model = SimCLR(backbone=module, feature_dim=4, view_size=16)
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 4)
    with pytest.raises(ValueError, match="Valid names"):
        SimCLR(backbone="resnet1000")


@pytest.mark.parametrize(("devices_batch", "accumulate"), [(64, 1), (128, 2)])
def test_learning_rate_scales_with_the_datamodule_batch(devices_batch, accumulate):
    """lr is per 256 images of the global batch: the datamodule's batch (not the model's default) x accumulation."""
    import pytorch_lightning as pl

    from ssl_siamese import SSLDataModule

    model = SimCLR(backbone="tiny_cnn", lr=0.3, batch_size=512)
    data = SSLDataModule("synthetic", batch_size=devices_batch)
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         accumulate_grad_batches=accumulate)
    trainer.fit(model, datamodule=data)
    assert trainer.optimizers[0].param_groups[0]["initial_lr"] == pytest.approx(
        0.3 * devices_batch * accumulate / 256)


def test_timm_backbones_through_a_stand_in_timm(monkeypatch):
    """timm is optional (not installed in CI): a stand-in module checks the calls and the error path."""
    import sys
    import types

    def create_model(name, pretrained, num_classes):
        if name != "tiny_vit":
            raise RuntimeError(f"Unknown model ({name})")
        assert pretrained is False and num_classes == 0  # no download, no classifier head
        model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 24))
        model.num_features = 24
        return model

    monkeypatch.setitem(sys.modules, "timm", types.SimpleNamespace(create_model=create_model))
    module, dim = build_backbone("timm/tiny_vit", cifar_stem=True)
    assert dim == 24 and module(torch.zeros(2, 3, 8, 8)).shape == (2, 24)
    with pytest.raises(ValueError, match="timm has no model 'nope'"):
        build_backbone("timm/nope")


def _batchnorm_kinds(module: nn.Module) -> set[str]:
    return {type(m).__name__ for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}


@pytest.mark.parametrize("method", [SimCLR, MoCo, SimSiam])
def test_sync_batchnorm_heads_converts_the_heads_only(method):
    from types import SimpleNamespace

    plain, synced = make(method), make(method, sync_batchnorm_heads=True)
    synced._trainer = SimpleNamespace(world_size=2, strategy=SimpleNamespace(root_device=torch.device("cuda")))
    synced.setup("fit")
    synced._trainer = None
    # MoCo v2's head is Linear-ReLU-Linear (no BatchNorm): nothing to convert; SimCLR's and SimSiam's have BN
    expected = set() if method is MoCo else {"SyncBatchNorm"}
    assert [_batchnorm_kinds(head) for head in synced.head_modules()] == [expected] * len(synced.head_modules())
    assert _batchnorm_kinds(synced.backbone) == {"BatchNorm2d"}
    if method is MoCo:  # the EMA copy of the head is a head too; the backbone copy is not
        assert synced.head_modules()[1] is synced.key_encoder[2]
    assert synced.state_dict().keys() == plain.state_dict().keys(), "checkpoints stay interchangeable"
    # without a process group SyncBatchNorm is plain BatchNorm: the same loss
    torch.manual_seed(2)
    plain_loss, _ = plain.shared_step(*views())
    torch.manual_seed(2)
    synced_loss, _ = synced.shared_step(*views())
    assert torch.allclose(plain_loss, synced_loss, atol=1e-6)


def test_sync_batchnorm_heads_on_cpu_ddp_is_a_clear_error_and_a_no_op_on_one_device():
    from types import SimpleNamespace

    model = make(SimCLR, sync_batchnorm_heads=True)
    model._trainer = SimpleNamespace(world_size=1, strategy=SimpleNamespace(root_device=torch.device("cpu")))
    model.setup("fit")
    assert _batchnorm_kinds(model.projection_head) == {"BatchNorm1d"}, "one device: nothing to synchronise"
    model._trainer = SimpleNamespace(world_size=2, strategy=SimpleNamespace(root_device=torch.device("cpu")))
    with pytest.raises(ValueError, match="needs GPUs"):
        model.setup("fit")
    model._trainer = None


def test_compile_option_compiles_the_encoders_in_place():
    from types import SimpleNamespace

    model = make(MoCo, compile=True)
    keys = list(model.state_dict())
    model._trainer = SimpleNamespace(world_size=1, strategy=SimpleNamespace(root_device=torch.device("cpu")))
    model.setup("fit")
    model._trainer = None
    assert [encoder._compiled_call_impl is not None for encoder in model.encoders()] == [True, True]
    assert list(model.state_dict()) == keys, "checkpoints and exports keep the plain parameter names"


@pytest.mark.parametrize("method", [SimCLR, MoCo, SimSiam])
def test_compiled_encoders_give_the_same_loss_and_gradients(method):
    plain, compiled = make(method), make(method)
    compiled.compile_encoders(backend="eager")  # dynamo's tracing without inductor's slow CPU code generation
    results = []
    for model in (plain, compiled):
        torch.manual_seed(3)
        loss, _ = model.shared_step(*views())
        loss.backward()
        results.append((loss.detach(), next(model.backbone.parameters()).grad.clone()))
    assert torch.allclose(results[0][0], results[1][0], atol=1e-6)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-6)


def test_moco_shuffle_bn_is_a_no_op_on_one_process():
    plain, shuffled = make(MoCo).train(), make(MoCo, shuffle_bn=True).train()
    views = torch.randn(8, 3, 16, 16)
    torch.manual_seed(5)
    keys = shuffled.keys(views)
    after = torch.rand(1)
    torch.manual_seed(5)
    assert torch.equal(keys, plain.keys(views))
    assert torch.equal(after, torch.rand(1)), "no random numbers drawn without a process group"


NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


def biases_and_norm_parameters(model: nn.Module) -> set[int]:
    """ids of every ``bias`` and every parameter of a normalisation layer, found by layer type and name."""
    return {id(param) for module in model.modules() for name, param in module.named_parameters(recurse=False)
            if name == "bias" or isinstance(module, NORM_LAYERS)}


def configured_optimizer(model) -> torch.optim.Optimizer:
    from types import SimpleNamespace

    model._trainer = SimpleNamespace(world_size=1, accumulate_grad_batches=1, estimated_stepping_batches=10,
                                     max_epochs=1, datamodule=None)
    try:
        (optimizer,), _ = model.configure_optimizers()
    finally:
        model._trainer = None
    return optimizer


@pytest.mark.parametrize("backbone", ["tiny_cnn", "resnet18"])
@pytest.mark.parametrize("method", [SimCLR, MoCo, SimSiam])
def test_weight_decay_groups_leave_out_biases_and_norm_parameters(method, backbone):
    kwargs = {"projection_dim": 32} if method is SimSiam else {"queue_size": 64} if method is MoCo else {}
    model = method(backbone=backbone, view_size=16, optimizer="lars", weight_decay=1e-4, **kwargs)
    groups = {group["name"]: group for group in configured_optimizer(model).param_groups}
    assert set(groups) == {"decay", "no_decay"}
    assert groups["decay"]["weight_decay"] == 1e-4 and groups["no_decay"]["weight_decay"] == 0.0
    decay = {id(p) for p in groups["decay"]["params"]}
    no_decay = {id(p) for p in groups["no_decay"]["params"]}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert not decay & no_decay and decay | no_decay == trainable  # MoCo's frozen key encoder in neither
    assert no_decay == biases_and_norm_parameters(model) & trainable
    for head in model.head_modules():  # the heads' BatchNorm and biases too, not only the backbone's
        if any(p.requires_grad for p in head.parameters()):
            assert {id(p) for p in head.parameters()} & no_decay
            assert {id(p) for p in head.parameters()} & decay
    assert any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.backbone.modules())


@pytest.mark.parametrize("optimizer", ["sgd", "lars"])
def test_a_step_decays_and_scales_weights_only(optimizer):
    """One step from zero momentum: a bias moves by -lr * grad; a weight by SGD's or LARS's formula."""
    model = make(SimCLR, optimizer=optimizer, weight_decay=0.01, lr=0.256)  # lr 0.256 x 512 / 256 = 0.512
    opt = configured_optimizer(model)
    lr = opt.param_groups[0]["lr"]
    weight, bias = model.backbone.features[0].weight, model.projection_head.layers[1].bias
    assert isinstance(model.projection_head.layers[1], nn.BatchNorm1d)
    torch.manual_seed(2)
    with torch.no_grad():
        bias.normal_()  # BatchNorm biases start at zero, where neither decay nor LARS would show
    for param in model.parameters():
        param.grad = torch.randn_like(param) if param.requires_grad else None
    before = {name: p.detach().clone() for name, p in (("weight", weight), ("bias", bias))}
    grads = {"weight": weight.grad.clone(), "bias": bias.grad.clone()}
    opt.step()
    torch.testing.assert_close(bias.detach(), before["bias"] - lr * grads["bias"])
    step = grads["weight"] + 0.01 * before["weight"]
    if optimizer == "lars":  # You et al. 2017, eq. 6, with lightly's trust coefficient 0.001
        p_norm, g_norm = before["weight"].norm(), grads["weight"].norm()
        step = step * 0.001 * p_norm / (g_norm + 0.01 * p_norm + 1e-8)
    torch.testing.assert_close(weight.detach(), before["weight"] - lr * step)


def test_moco_queue_larger_than_the_training_set_warns_through_the_recipe(tmp_path, monkeypatch):
    """4,096 keys on 320 images (the issue's 322, in batches of 32): the warning gives both numbers and a fix."""
    import warnings

    from ssl_siamese.cli import main

    monkeypatch.setenv("WANDB_MODE", "offline")
    args = ["--model.backbone", "tiny_cnn", "--data.dataset", "synthetic", "--data.batch_size", "32",
            "--data.train_subset", "322", "--model.queue_size", "4096", "--trainer.max_steps", "1",
            "--trainer.limit_val_batches", "0", "--trainer.accelerator", "cpu", "--knn_at_start", "false",
            "--trainer.enable_progress_bar", "false", "--log_to", "none", "--out", str(tmp_path)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(MoCo, "moco", args)
    messages = [str(w.message) for w in caught if str(w.message).startswith("MoCo's queue_size")]
    assert len(messages) == 1, messages
    assert "queue_size 4096" in messages[0] and "320 training images" in messages[0]
    assert "--model.queue_size to at most 320 (e.g. 256)" in messages[0]


@pytest.mark.parametrize(("queue_size", "batches", "warns"), [(256, 10, False), (320, 10, False), (384, 10, True),
                                                              (4096, 1000, False)])
def test_moco_queue_size_check_compares_with_the_images_of_an_epoch(queue_size, batches, warns):
    import warnings
    from types import SimpleNamespace

    model = make(MoCo, queue_size=queue_size, batch_size=32)
    model._trainer = SimpleNamespace(num_training_batches=batches, world_size=1, fast_dev_run=False, datamodule=None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.check_queue_size()
    model._trainer = None
    assert any(str(w.message).startswith("MoCo's queue_size") for w in caught) == warns
