"""Exports other tools load: the safetensors folder in torchvision, timm and ssl_siamese; ONNX in onnxruntime;
TorchScript and torch.export; the model card's snippets run as written; push_to_hub builds what it would upload.

Measured (CPU, torch 2.14, onnxruntime 1.32, float32): the largest |onnxruntime - PyTorch| feature difference
is 9e-9 for tiny_cnn, 3e-7 for timm's test_resnet and 2.0e-7 for the ResNet-18 pretrained by the recipe, on real
Fashion-MNIST test images; the tests allow 1e-4. (torchvision, timm, TorchScript and torch.export: exactly equal
or within 1e-5.)
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torchvision
from helpers import REPO, fashion_mnist_dir, needs_fashion_mnist
from test_export import UserNet
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ssl_siamese import SimCLR, SimSiam, export_backbone, load_backbone
from ssl_siamese.cli import main as cli_main
from ssl_siamese.data import read_idx
from ssl_siamese.export import export_pretrained
from ssl_siamese.export.hub import hub_files, push_to_hub
from ssl_siamese.export.pretrained_folder import header_metadata, metadata_from_header
from ssl_siamese.recipes import export as export_recipe

README = REPO / "README.md"
ONNX_TOLERANCE = 1e-4  # float32 graphs: measured differences are 1e-7 to 1e-6


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing here may download (timm would try the Hub otherwise)


def trained_bn(model: nn.Module, size: int) -> nn.Module:
    """``model`` with non-trivial BatchNorm running statistics, in eval mode."""
    torch.manual_seed(0)
    with torch.no_grad():
        model.train()
        model.backbone(torch.randn(8, 3, size, size) * 2 + 0.5)
    return model.eval()


def python_blocks(card: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", card, flags=re.S)


def run_block(code: str, folder: Path, monkeypatch) -> dict:
    """Execute one snippet of a model card from inside the exported folder, as its reader would."""
    monkeypatch.chdir(folder)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own generated snippet
    return namespace


def test_header_values_round_trip_and_stay_readable_strings():
    metadata = {"format": "ssl_siamese.backbone/1", "architecture": "tiny_cnn", "data": "123", "epochs": 3,
                "mean": [0.5, 0.25, 0.125], "cifar_stem": False, "metrics": {"knn_top1": 0.8125}, "note": None}
    header = header_metadata(metadata)
    assert all(isinstance(value, str) for value in header.values())
    assert header["format"] == "pt" and header["export_format"] == "ssl_siamese.backbone/1"  # Hugging Face's key
    assert header["data"] == "123" and header["epochs"] == "3" and json.loads(header["mean"]) == metadata["mean"]
    assert metadata_from_header(header) == metadata  # "123" stays a string, 3 stays an int


def test_torchvision_loads_the_safetensors_strictly(tmp_path, monkeypatch):
    """The CIFAR stem variant (the plain stem: the end-to-end test below, through timm's ResNet-18)."""
    model = trained_bn(SimCLR(backbone="resnet18", cifar_stem=True, view_size=32), 32)
    folder = export_pretrained(model, tmp_path / "backbone", data="synthetic", epochs=2)
    plain = torchvision.models.resnet18()  # written out by hand, as a user would
    plain.fc = nn.Identity()
    plain.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    plain.maxpool = nn.Identity()
    plain.load_state_dict(load_file(folder / "model.safetensors"), strict=True)
    images = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(plain.eval()(images), model(images), rtol=0, atol=0)
    card = (folder / "README.md").read_text()
    namespace = run_block(next(code for code in python_blocks(card) if "torchvision" in code), folder, monkeypatch)  # the model card's snippet, as written
    torch.testing.assert_close(namespace["features"], model(namespace["images"]), rtol=0, atol=0)


def test_timm_loads_the_safetensors_with_its_own_keys(tmp_path):
    model = trained_bn(SimSiam(backbone="timm/test_resnet", view_size=32, mean=(0.3,) * 3, std=(0.4,) * 3), 32)
    folder = export_pretrained(model, tmp_path / "backbone", data="synthetic", metrics={"knn_top1": 0.5})
    weights = folder / "model.safetensors"
    reference = timm.create_model("test_resnet", pretrained=False, num_classes=0).state_dict()
    assert set(load_file(weights)) == set(reference)  # exactly timm's own state_dict keys
    images = torch.randn(3, 3, 32, 32)
    by_file = timm.create_model("test_resnet", pretrained=True, num_classes=0,
                                pretrained_cfg_overlay=dict(file=str(weights))).eval()
    by_folder = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()  # config.json is timm's
    for loaded in (by_file, by_folder):  # timm loads non-strictly: compare every tensor, not just the outputs
        for key, value in model.backbone.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key
        torch.testing.assert_close(loaded(images), model(images), rtol=0, atol=0)
    cfg = by_folder.pretrained_cfg
    assert tuple(cfg["input_size"]) == (3, 32, 32) and list(cfg["mean"]) == [0.3] * 3 and cfg["num_classes"] == 0
    assert json.loads((folder / "config.json").read_text())["ssl_siamese"]["metrics"] == {"knn_top1": 0.5}


def test_load_backbone_reads_the_folder_its_file_and_the_pt_alike(tmp_path):
    model = trained_bn(SimCLR(backbone="tiny_cnn", view_size=28), 28)
    pt = export_backbone(model, tmp_path / "backbone.pt", data="fashion_mnist", epochs=4, steps=40)
    folder = export_pretrained(model, tmp_path / "backbone", data="fashion_mnist", epochs=4, steps=40,
                               metrics={"knn_top1": 0.71, "probe_top1": None})
    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:  # the header, read by hand
        header = handle.metadata()
    assert header["architecture"] == "tiny_cnn" and header["method"] == "SimCLR" and header["feature_dim"] == "128"
    assert header["torch_version"] == str(torch.__version__) and header["library"] == "ssl_siamese"
    images = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    expected = model(model.augmentation.normalize(images))
    loaded = [load_backbone(path) for path in (folder, folder / "model.safetensors", pt)]
    for backbone, transform, metadata in loaded:
        assert not backbone.training and metadata["epochs"] == 4 and metadata["image_size"] == 28
        torch.testing.assert_close(backbone(transform(images)), expected, rtol=0, atol=0)
    assert loaded[0].metadata["metrics"] == {"knn_top1": 0.71}  # unknown metrics are left out
    assert {k: v for k, v in loaded[0].metadata.items() if k != "metrics"} == loaded[2].metadata


def test_wrong_files_are_clear_errors(tmp_path):
    folder = export_pretrained(SimCLR(backbone="tiny_cnn", view_size=28), tmp_path / "backbone")
    weights = folder / "model.safetensors"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"holds no model.safetensors"):
        load_backbone(empty)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_backbone(truncated)
    foreign = tmp_path / "foreign.safetensors"  # what another tool writes: tensors, no metadata of ours
    save_file(load_file(weights), foreign)
    with pytest.raises(ValueError, match=r"without ssl_siamese metadata .*load_state_dict\(safetensors"):
        load_backbone(foreign)
    with safe_open(str(weights), framework="pt") as handle:
        header = handle.metadata()
    save_file(load_file(weights), weights, metadata={**header, "architecture": "resnet18"})
    with pytest.raises(ValueError, match="do not fit architecture 'resnet18'"):
        load_backbone(folder)
    user = export_pretrained(SimCLR(backbone=UserNet()), tmp_path / "user")
    with pytest.raises(ValueError, match=r"user module \(UserNet\).*safetensors.torch.load_file"):
        load_backbone(user)
    UserNet().load_state_dict(load_file(user / "model.safetensors"), strict=True)  # what the message says to do
    assert "MyBackbone()" in (user / "README.md").read_text()


def test_onnx_has_a_dynamic_batch_and_matches_pytorch(tmp_path):
    import onnx
    import onnxruntime

    model = trained_bn(SimCLR(backbone="tiny_cnn", view_size=28), 28)
    pt = export_backbone(model, tmp_path / "backbone.pt", data="fashion_mnist")
    result = export_recipe.main(["--ckpt", str(pt), "--format", "onnx", "--out", str(tmp_path / "onnx")])
    path = Path(result["path"])
    assert path == tmp_path / "onnx" / "backbone.onnx" and result["max_abs_diff"] < ONNX_TOLERANCE
    graph = onnx.load(str(path))
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    props = {prop.key: prop.value for prop in graph.metadata_props}
    assert props["architecture"] == "tiny_cnn" and json.loads(props["image_size"]) == 28
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 7):
        images = torch.randn(batch, 3, 28, 28)
        features = session.run(None, {"images": images.numpy()})[0]
        difference = np.abs(features - model(images).detach().numpy()).max()
        assert features.shape == (batch, 128) and difference < ONNX_TOLERANCE, difference  # measured ~1e-8


@pytest.mark.parametrize("fmt", ["torchscript", "torch_export"])
def test_torchscript_and_torch_export_match_pytorch(tmp_path, fmt):
    model = trained_bn(SimCLR(backbone="timm/test_resnet", view_size=32), 32)
    folder = export_pretrained(model, tmp_path / "backbone")
    result = export_recipe.run_export(folder, fmt, tmp_path / fmt)
    images = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        if fmt == "torchscript":
            features = torch.jit.load(result["path"])(images)
        else:
            features = torch.export.load(result["path"]).module()(images)
        torch.testing.assert_close(features, model(images), rtol=1e-5, atol=1e-5)
    assert result["max_abs_diff"] < 1e-5


def test_recipe_converts_a_checkpoint_to_the_folder_and_refuses_clearly(tmp_path):
    model = SimCLR(backbone="tiny_cnn", view_size=28)
    checkpoint = tmp_path / "last.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams), "epoch": 3}, checkpoint)
    result = export_recipe.main(["--ckpt", str(checkpoint), "--out", str(tmp_path / "hf")])
    _, _, metadata = load_backbone(result["path"])
    assert metadata["epochs"] == 3 and metadata["method"] == "SimCLR" and "torch_version" in metadata
    assert hub_files(tmp_path / "hf") == ["README.md", "config.json", "model.safetensors"]
    with pytest.raises(SystemExit, match="use it with --format safetensors"):
        export_recipe.main(["--ckpt", str(checkpoint), "--format", "onnx", "--push_to_hub", "me/x"])
    with pytest.raises(SystemExit) as exit_info:  # a misspelt option gets the closest one
        export_recipe.main(["--ckpt", str(checkpoint), "--fromat", "onnx"])
    assert exit_info.value.code == 2
    payload = torch.load(export_backbone(model, tmp_path / "b.pt"), weights_only=True)
    payload["metadata"]["image_size"] = 0
    torch.save(payload, tmp_path / "b.pt")
    with pytest.raises(SystemExit, match="records no input size: pass --image_size"):
        export_recipe.main(["--ckpt", str(tmp_path / "b.pt"), "--format", "onnx", "--out", str(tmp_path / "o")])


def test_push_to_hub_uploads_the_folder_it_built(tmp_path, monkeypatch):
    """No network: the Hub client is replaced by a recorder; the folder is what it would upload."""
    import huggingface_hub

    calls = []

    class RecordingApi:
        def __init__(self, **kwargs):
            calls.append(("init", kwargs))

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))

        def upload_folder(self, **kwargs):
            calls.append(("upload_folder", kwargs))
            return "https://huggingface.co/me/tiny/commit/0"

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    checkpoint = export_backbone(SimCLR(backbone="tiny_cnn", view_size=28), tmp_path / "b.pt")
    result = export_recipe.main(["--ckpt", str(checkpoint), "--out", str(tmp_path / "hf"), "--push_to_hub", "me/tiny"])
    assert result["hub_commit"].endswith("/commit/0")
    upload = calls[-1][1]
    assert calls[1][:2] == ("create_repo", "me/tiny") and upload["repo_id"] == "me/tiny"
    assert Path(upload["folder_path"]) == tmp_path / "hf"
    assert upload["allow_patterns"] == ["README.md", "config.json", "model.safetensors"]
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # not installed
    with pytest.raises(ValueError, match="needs huggingface_hub"):
        push_to_hub(tmp_path / "hf", "me/tiny")
    with pytest.raises(ValueError, match="not an exported folder"):
        hub_files(tmp_path)


@needs_fashion_mnist
def test_simclr_recipe_export_loads_in_timm_torchvision_and_onnxruntime(tmp_path, monkeypatch):
    """The real entry points: pretrain a timm ResNet-18 a few steps on Fashion-MNIST, export it to ONNX with the
    README's command, then load it in timm, torchvision and onnxruntime: the README's and the model card's snippets.
    The pretraining calls the SimCLR recipe's ``main`` in this process (``python -m ssl_siamese.recipes.simclr`` is
    that call; test_resume_cli and test_stream run it as a real subprocess), which saves an interpreter's ~7 s of
    start-up; the export recipe runs as the README's command in a subprocess of its own."""
    out = tmp_path / "out" / "simclr"  # where the README's Exports section looks
    monkeypatch.setenv("WANDB_MODE", "offline")
    cli_main(SimCLR, "simclr", [
        "--model.backbone", "timm/resnet18",
        "--data.dataset", "fashion_mnist", "--data.data_dir", str(fashion_mnist_dir()), "--data.batch_size", "32",
        "--data.train_subset", "128", "--data.val_subset", "64", "--data.knn_bank_subset", "128",
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.accelerator", "cpu",
        "--trainer.enable_progress_bar", "false", "--knn_at_start", "false", "--pictures_every_n_epochs", "0",
        "--log_to", "none", "--out", str(out)])
    folder = out / "exported_models" / "backbone"
    backbone, transform, metadata = load_backbone(folder)
    assert metadata["architecture"] == "timm/resnet18" and metadata["data"] == "fashion_mnist"
    assert metadata["steps"] == 2 and set(metadata["metrics"]) >= {"knn_top1", "knn_top5", "probe_top1"}
    card = (folder / "README.md").read_text()
    assert f"| kNN top-1 at step 2 (1 epoch) | {metadata['metrics']['knn_top1']:.4f} |" in card
    raw = torch.from_numpy(read_idx(next(fashion_mnist_dir().glob("t10k-images-idx3-ubyte*")), 3)[:10].copy())
    images = transform(raw.unsqueeze(1))  # real test images, resized and normalised as recorded
    expected = backbone(images)

    weights = str(folder / "model.safetensors")
    by_timm = timm.create_model("resnet18", pretrained=True, num_classes=0,
                                pretrained_cfg_overlay=dict(file=weights)).eval()
    assert set(by_timm.state_dict()) == set(load_file(weights))
    plain = torchvision.models.resnet18()  # timm's ResNet-18 keys are torchvision's: strict load
    plain.fc = nn.Identity()
    plain.load_state_dict(load_file(weights), strict=True)
    with torch.no_grad():
        for other in (by_timm, plain.eval()):
            torch.testing.assert_close(other(images), expected, rtol=1e-5, atol=1e-5)

    section = README.read_text().split("\n## Exports\n", 1)[1].split("\n## ", 1)[0]
    command = re.search(r"```bash\n(python -m ssl_siamese.recipes.export [^\n]*)\n```", section).group(1)
    export = subprocess.run([sys.executable, *command.split()[1:]], capture_output=True, text=True, timeout=300,
                            cwd=tmp_path)  # the README's command as written
    assert export.returncode == 0, export.stderr[-3000:]
    import onnxruntime

    session = onnxruntime.InferenceSession(str(tmp_path / "onnx" / "backbone.onnx"),
                                           providers=["CPUExecutionProvider"])
    difference = float(np.abs(session.run(None, {"images": images.numpy()})[0] - expected.numpy()).max())
    print(f"onnxruntime vs PyTorch, ResNet-18 on 10 Fashion-MNIST test images: max abs difference {difference:.2e}")
    assert difference < ONNX_TOLERANCE  # measured 2.0e-7

    (readme_block,) = python_blocks(section)  # the README's snippet as written, from the folder above out/
    namespace = run_block(readme_block, tmp_path, monkeypatch)
    reference = backbone(namespace["images"])
    with torch.no_grad():
        for loaded in (namespace["plain"].eval(), namespace["model"].eval()):
            torch.testing.assert_close(loaded(namespace["images"]), reference, rtol=1e-5, atol=1e-5)
    assert float(np.abs(namespace["features"] - reference.numpy()).max()) < ONNX_TOLERANCE

    shutil.copy(tmp_path / "onnx" / "backbone.onnx", folder)  # where the model card's ONNX command puts it
    blocks = python_blocks(card)  # ssl_siamese, timm, onnxruntime: each runs as written, from the folder
    assert len(blocks) == 3
    for code in blocks:
        namespace = run_block(code, folder, monkeypatch)
        features, sample = namespace["features"], namespace["images"]
        sample = torch.as_tensor(sample)
        reference = backbone(transform(sample) if sample.dtype == torch.uint8 else sample)
        torch.testing.assert_close(torch.as_tensor(features), reference, rtol=1e-4, atol=ONNX_TOLERANCE)
    assert hub_files(folder) == ["README.md", "backbone.onnx", "config.json", "model.safetensors"]
