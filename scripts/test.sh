#!/usr/bin/env bash
# Set up what is missing, then run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/bootstrap.sh
exec .venv/bin/python -m pytest "$@"
