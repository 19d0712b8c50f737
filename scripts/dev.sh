#!/usr/bin/env bash
# Set up what is missing, start the local runtime, then the Dagster UI on the local runtime.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/bootstrap.sh --demo-data
# Accounts with verified tokens (.aiplat/credentials/, mode 600): runs act as the service account,
# the CLI as whoever's token AIPLAT_TOKEN_FILE names (docs/operations.md, "Identity").
.venv/bin/aiplat accounts init
.venv/bin/aiplat stack up
export DAGSTER_HOME="$(.venv/bin/python -c 'from aiplat.config import dagster_home; print(dagster_home())')"
PORT="$(.venv/bin/python -c 'from aiplat.config import local_ports; print(local_ports().dagster)')"
echo "Dagster UI: http://127.0.0.1:$PORT   (services keep running after Ctrl-C: .venv/bin/aiplat stack down)"
exec .venv/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p "$PORT"
