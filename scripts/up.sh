#!/usr/bin/env bash
# The main job: installs what a fresh machine lacks, then runs a local cluster until Ctrl-C.
# Extra arguments go to `callmesh up` (see `callmesh up --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/callmesh up "$@"
