#!/usr/bin/env bash
# Set up everything in ./.venv (idempotent): torch, the package with its test extras, and the quickstart data.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# On our machines torch 2.14.1 lies on the local disk; elsewhere set TORCH_SPEC="torch torchvision".
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
  echo "[setup] installing $TORCH_SPEC (a few minutes)"
  .venv/bin/pip install -q --disable-pip-version-check $TORCH_SPEC
fi
if ! .venv/bin/python -c "import ssl_siamese, lightly, litdata, pytest, xdist, sklearn, matplotlib, nbclient, ipykernel, safetensors, timm, kornia, onnxruntime, transformers, tokenizers, sentence_transformers, bm25s, selenium" 2>/dev/null || [ ! -x .venv/bin/ssl-siamese ]; then
  echo "[setup] installing ssl_siamese and its dependencies"
  .venv/bin/pip install -q --disable-pip-version-check -e ".[dev]"
fi

# Quickstart data: Fashion-MNIST into ./data/fashion-mnist (the library also looks in Debian's
# /usr/share/datasets/fashion-mnist and downloads with torchvision when online).
./scripts/fashion_mnist.sh
echo "[setup] done: $(.venv/bin/python -c 'import torch, pytorch_lightning, lightly; print("torch", torch.__version__, "lightning", pytorch_lightning.__version__, "lightly", lightly.__version__)')"
