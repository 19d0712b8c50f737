#!/usr/bin/env bash
# Set up what is missing, then run the whole test suite. Extra arguments go to pytest.
#
# Two pytest-xdist workers by default (AIPLAT_TEST_WORKERS=N for another count, 0 for one process):
# whole modules per worker (--dist loadfile: module fixtures and the stories they tell stay in one
# process) in the shuffled order, the longest module (the newcomer path) first (tests/conftest.py),
# not reordered by size. Measured on this 2-core machine, fresh clones of the same commit, quiet
# otherwise (2026-12-03): one process 39.3 min of tests (44.1 min with the bootstrap), two workers
# 29.1 min (33.0 min), 785 passed. Much of the suite waits on real servers, daemons and retry
# backoffs: one process left the CPU 35-43% idle, two workers 9%. (Before passive OpenMP waiting,
# aiplat.config.prefer_passive_openmp, two workers were slower: spinning threads starved each other.)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/bootstrap.sh
exec .venv/bin/python -m pytest -n "${AIPLAT_TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder "$@"
