"""The model card (``README.md``) of an exported backbone: how it was trained, its metrics, how to load it.

The card starts with the YAML front matter the Hugging Face Hub reads (library, tags, datasets) and gives
one runnable snippet per tool that can load the weights: ssl_siamese always; torchvision for the ResNets;
timm for ``timm/<name>`` architectures; onnxruntime after ``recipes.export --format onnx``. Each snippet
runs as is from inside the exported folder (the tests execute them).

Example:
    >>> text = model_card({"architecture": "resnet18", "method": "SimCLR", "feature_dim": 512, ...})
    >>> Path("out/simclr/exported_models/backbone/README.md").write_text(text)
"""

from __future__ import annotations

from typing import Any

from ssl_siamese.backbones import TORCHVISION_RESNETS, timm_arguments

METRIC_NAMES = {  # metadata["metrics"] key -> what the card calls it; {at}: the step it was measured at
    "knn_top1": "kNN top-1 at {at}", "knn_top5": "kNN top-5 at {at}",
    "knn_top1_at_start": "kNN top-1 at initialisation (step 0)",
    "knn_top1_raw_pixels": "kNN top-1 of the raw pixels (same k, bank and queries: the baseline)",
    "knn_top5_raw_pixels": "kNN top-5 of the raw pixels", "probe_top1": "online linear probe top-1 at the end",
}


def _front_matter(metadata: dict[str, Any], timm_name: str | None) -> str:
    method = str(metadata.get("method") or "unknown")
    tags = ["ssl_siamese", "self-supervised-learning", "image-feature-extraction", method.lower()]
    if timm_name:
        tags.append("timm")
    lines = ["---", f"library_name: {'timm' if timm_name else 'ssl_siamese'}", "pipeline_tag: image-feature-extraction",
             "tags:", *[f"- {tag}" for tag in tags]]
    if metadata.get("data"):
        lines += ["datasets:", f"- {metadata['data']}"]
    return "\n".join(lines + ["---", ""])


def _training_table(metadata: dict[str, Any]) -> str:
    size = metadata.get("image_size")
    rows = [("Method", metadata.get("method")), ("Architecture", metadata.get("architecture")
                                                 or f"user module {metadata.get('module_class')}"),
            ("CIFAR stem (3x3 conv, no max-pool)", "yes" if metadata.get("cifar_stem") else None),
            ("Feature size", metadata.get("feature_dim")),
            ("Data", " ".join(f"{metadata[key]}" for key in ("data", "data_dir") if metadata.get(key)) or None),
            ("Epochs", metadata.get("epochs")), ("Optimizer steps", metadata.get("steps")),
            ("Input", f"{size}x{size} RGB, resized (bilinear, no crop)" if size else None),
            ("Normalisation", f"mean {metadata.get('mean')}, std {metadata.get('std')}" if metadata.get("mean")
             else None),
            ("Versions", ", ".join(f"{name} {metadata[key]}" for name, key in (
                ("ssl_siamese", "library_version"), ("torch", "torch_version"), ("timm", "timm_version"))
                if metadata.get(key)) or None)]
    return "\n".join(["| | |", "|---|---|", *[f"| {name} | {value} |" for name, value in rows if value is not None]])


def _metrics_table(metadata: dict[str, Any]) -> str:
    metrics = metadata.get("metrics") or {}
    if not metrics:
        return "No evaluation was recorded with this export (the data had no labels, or none was run)."
    knn = metadata.get("knn_evaluation") or {}
    at = knn.get("measured_at") or "the end"
    rows = [f"| {METRIC_NAMES.get(name, name).format(at=at)} | "
            f"{f'{value:.4f}' if isinstance(value, float) else value} |" for name, value in metrics.items()]
    table = "\n".join(["| metric | value |", "|---|---|", *rows])
    if knn.get("queries_from"):
        protocol = (f"k={knn['k']}, temperature {knn['temperature']}, a bank of {knn['bank']} training images, "
                    if "k" in knn else "")
        table += (f"\n\nQueries (kNN and probe): {knn['queries_from']}. kNN: {protocol}cosine similarity of "
                  "the backbone's features; the raw-pixel row is the same kNN on the normalised images flattened.")
    return table


def _images_line(metadata: dict[str, Any]) -> str:
    size = int(metadata.get("image_size") or 32)
    mean, std = metadata.get("mean") or [0.5] * 3, metadata.get("std") or [0.5] * 3
    return (f"mean = torch.tensor({list(mean)}).view(1, 3, 1, 1)\n"
            f"std = torch.tensor({list(std)}).view(1, 3, 1, 1)\n"
            f"images = (torch.rand(2, 3, {size}, {size}) - mean) / std  # RGB in [0, 1] at {size}x{size}, normalised")


def _loading_sections(metadata: dict[str, Any], timm_name: str | None) -> list[str]:
    arch, dim, size = metadata.get("architecture"), metadata.get("feature_dim"), int(metadata.get("image_size") or 32)
    if not isinstance(arch, str):
        return ["### Your own module\n\nThe weights belong to a user module "
                f"(`{metadata.get('module_class')}`) that ssl_siamese cannot rebuild:\n\n```python\n"
                "from safetensors.torch import load_file\n\nmodule = MyBackbone()  # the class you trained\n"
                "module.load_state_dict(load_file(\"model.safetensors\"), strict=True)\n```\n"]
    sections = ["### ssl_siamese\n\n```python\nimport torch\n\nfrom ssl_siamese import load_backbone\n\n"
                "backbone, transform, metadata = load_backbone(\".\")  # this folder, or its model.safetensors\n"
                f"images = torch.randint(0, 256, (2, 3, {size}, {size}), dtype=torch.uint8)  # any size, 1-4 channels\n"
                f"features = backbone(transform(images))  # (2, {dim}): transform resizes and normalises\n```\n"]
    if arch in TORCHVISION_RESNETS:
        stem = ("model.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)  # CIFAR stem\n"
                "model.maxpool = torch.nn.Identity()\n") if metadata.get("cifar_stem") else ""
        sections.append("### torchvision\n\n```python\nimport torch\nimport torchvision\n"
                        "from safetensors.torch import load_file\n\n"
                        f"model = torchvision.models.{arch}()\nmodel.fc = torch.nn.Identity()\n{stem}"
                        "model.load_state_dict(load_file(\"model.safetensors\"), strict=True)\nmodel.eval()\n"
                        f"{_images_line(metadata)}\nfeatures = model(images)  # (2, {dim})\n```\n")
    if timm_name:
        arguments = timm_arguments(metadata.get("backbone_kwargs") or {},  # e.g. a ViT's img_size, global_pool
                                   metadata.get("pooling") if metadata.get("pooling") in ("token", "mean") else None)
        extra = "".join(f" {key}={value!r}," for key, value in arguments.items())
        sections.append("### timm\n\n```python\nimport timm\nimport torch\n\n"
                        f"model = timm.create_model(\"{timm_name}\", pretrained=True, num_classes=0,{extra}\n"
                        "                          pretrained_cfg_overlay=dict(file=\"model.safetensors\")).eval()\n"
                        "# or, with this folder's config.json (preprocessing included):\n"
                        "# model = timm.create_model(\"local-dir:.\", pretrained=True).eval()\n"
                        f"{_images_line(metadata)}\nfeatures = model(images)  # (2, {dim})\n```\n")
    sections.append("### ONNX (onnxruntime)\n\n```bash\npython -m ssl_siamese.recipes.export --ckpt . --format onnx "
                    "--out .\n```\n\n```python\nimport numpy as np\nimport onnxruntime\n\n"
                    "session = onnxruntime.InferenceSession(\"backbone.onnx\", providers=[\"CPUExecutionProvider\"])\n"
                    f"images = np.random.randn(2, 3, {size}, {size}).astype(np.float32)  # normalised, any batch size\n"
                    f"features = session.run(None, {{\"images\": images}})[0]  # (2, {dim})\n```\n")
    return sections


def model_card(metadata: dict[str, Any]) -> str:
    """The card's Markdown text for an export's ``metadata`` (as ``export_pretrained`` records it)."""
    arch = metadata.get("architecture")
    timm_name = arch[len("timm/"):] if isinstance(arch, str) and arch.startswith("timm/") else None
    title = f"{metadata.get('method') or 'Self-supervised'} {arch or metadata.get('module_class')} backbone"
    data = f" on {metadata['data']}" if metadata.get("data") else ""
    intro = (f"A {metadata.get('feature_dim')}-d image feature extractor pretrained with "
             f"{metadata.get('method') or 'a self-supervised method'}{data} by "
             "ssl_siamese (Siamese encoders on PyTorch Lightning). The weights are in "
             "`model.safetensors` (its header holds the metadata below); `config.json` holds the same metadata"
             f"{' and timm' + chr(39) + 's model config' if timm_name else ''}.")
    return "\n".join([_front_matter(metadata, timm_name), f"# {title}", "", intro, "", "## Training", "",
                      _training_table(metadata), "", "## Metrics", "", _metrics_table(metadata), "",
                      "## How to load it", "", *_loading_sections(metadata, timm_name)])
