#!/usr/bin/env bash
# The test suite: sets up ./.venv if needed, then runs pytest (extra arguments are passed on).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export WANDB_MODE=offline WANDB_SILENT=true
# One pytest worker per core (pytest-xdist), each test file whole on one worker (its module fixtures built once);
# every test runs torch on one thread (tests/conftest.py), so two workers use both cores of a 2-core machine.
# PYTEST_WORKERS=0 runs in one process; extra arguments go to pytest (a later -n wins).
exec .venv/bin/python -m pytest -q -n "${PYTEST_WORKERS:-auto}" --dist loadfile "$@"
