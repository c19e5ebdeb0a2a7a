#!/usr/bin/env bash
# The test suite: sets up ./.venv if needed, then runs pytest (extra arguments are passed on).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export WANDB_MODE=offline WANDB_SILENT=true
exec .venv/bin/python -m pytest -q "$@"
