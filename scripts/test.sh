#!/usr/bin/env bash
# Set up what is missing, then run the whole test suite. Extra arguments go to pytest.
#
# Two pytest-xdist workers by default (AIPLAT_TEST_WORKERS=0 runs in one process): much of the
# suite waits on servers it started (vLLM, MLflow, Milvus, dagster dev), so a second worker keeps
# the two cores busy. Whole modules go to one worker (--dist loadfile: module fixtures and the
# stories they tell stay in one process) in the shuffled order, the longest module first
# (tests/conftest.py), not reordered by size.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/bootstrap.sh
exec .venv/bin/python -m pytest -n "${AIPLAT_TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder "$@"
