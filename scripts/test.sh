#!/usr/bin/env bash
# Every test: installs what a fresh machine lacks (scripts/setup.sh), then lint, types and pytest.
# Extra arguments go to pytest, e.g. `scripts/test.sh -m "not slow"` for a quick run.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy --strict"
.venv/bin/mypy
echo "== pytest"
.venv/bin/pytest "$@"
