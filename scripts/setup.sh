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
# uv installs the same wheels several times faster than pip (measured 2026-12-07 on this 2-core machine: torch's
# ~5.5 GB in 36 s against pip's ~150 s; it unpacks in parallel); it reads no pip configuration, so pip's indexes,
# find-links and constraints are handed over. pip does it where uv is missing. --compile-bytecode as pip does: where
# PYTHONDONTWRITEBYTECODE is set (CI's machines) nothing is ever cached otherwise, and every interpreter of the suite
# compiled torch and Lightning again (12 s to import Lightning instead of 5).
pip_setting() { .venv/bin/pip config get "global.$1" 2>/dev/null || true; }
if [ ! -x .venv/bin/uv ] && [ "${SSL_SIAMESE_SETUP_PIP:-}" != 1 ]; then
  .venv/bin/pip install -q --disable-pip-version-check uv 2>/dev/null || echo "[setup] uv not installed: pip instead"
fi
if [ -x .venv/bin/uv ] && [ "${SSL_SIAMESE_SETUP_PIP:-}" != 1 ]; then
  INSTALL=(.venv/bin/uv pip install -q --compile-bytecode --python .venv/bin/python --index-strategy unsafe-best-match)
  for url in $(pip_setting extra-index-url) ${PIP_EXTRA_INDEX_URL:-}; do INSTALL+=(--extra-index-url "$url"); done
  for links in $(pip_setting find-links) ${PIP_FIND_LINKS:-}; do INSTALL+=(--find-links "$links"); done
  constraint=$(pip_setting constraint)
  if [ -n "$constraint" ] && [ -f "$constraint" ]; then INSTALL+=(--constraint "$constraint"); fi
else
  INSTALL=(.venv/bin/pip install -q --disable-pip-version-check)
fi

if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
  echo "[setup] installing $TORCH_SPEC (a few minutes)"
  "${INSTALL[@]}" $TORCH_SPEC
fi
if ! .venv/bin/python -c "import ssl_siamese, lightly, litdata, pytest, xdist, sklearn, matplotlib, nbclient, ipykernel, safetensors, timm, kornia, onnxruntime, transformers, tokenizers, sentence_transformers, bm25s, selenium" 2>/dev/null || [ ! -x .venv/bin/ssl-siamese ]; then
  echo "[setup] installing ssl_siamese and its dependencies"
  # torch stays the one installed above (TORCH_SPEC), whatever a dependency would take
  "${INSTALL[@]}" -e ".[dev]" $TORCH_SPEC
fi

# Quickstart data: Fashion-MNIST into ./data/fashion-mnist (the library also looks in Debian's
# /usr/share/datasets/fashion-mnist and downloads with torchvision when online).
./scripts/fashion_mnist.sh
echo "[setup] done: $(.venv/bin/python -c 'import torch, pytorch_lightning, lightly; print("torch", torch.__version__, "lightning", pytorch_lightning.__version__, "lightly", lightly.__version__)')"
