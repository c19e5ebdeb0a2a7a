#!/usr/bin/env bash
# The test suite: sets up ./.venv if needed, then runs pytest (extra arguments are passed on).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export WANDB_MODE=offline WANDB_SILENT=true
# One process by default. PYTEST_WORKERS=auto (or N) runs pytest-xdist workers, each test file whole on one
# worker; on 2 cores that was slower (2026-12-07: the recipe subprocesses of many tests already use both cores)
# and a test that forks (litdata's prepare) hung in a worker, whose execnet threads make fork unsafe.
# Extra arguments go to pytest.
exec .venv/bin/python -m pytest -q -n "${PYTEST_WORKERS:-0}" --dist loadfile "$@"
