#!/usr/bin/env bash
# Set up, then pretrain SimCLR briefly on Fashion-MNIST on the CPU: kNN accuracy at start and at the end, beside the
# raw pixels' kNN (same bank and queries); exported backbone in out/quickstart/exported_models/. A few minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/python -m ssl_siamese.recipes.simclr --config recipes/quickstart.yaml "$@"
