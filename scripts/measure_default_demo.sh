#!/usr/bin/env bash
# Measure what a newcomer's "Materialize all" does with the DEFAULT model specs and the shipped gate
# policy on the default demo corpus (the end-to-end test runs smoke specs only): a private state
# folder and private ports, the demo corpus, the local services, the headless `aiplat materialize`
# as team:platform, then per model the eval metrics against the gate thresholds, the verdict and
# the fine-tune / eval wall times (scripts/default_demo_report.py). Everything it started is stopped
# on exit, vLLM endpoints included.
#
#   scripts/measure_default_demo.sh [STATE_DIR]      (default /tmp/aiplat-default-demo; emptied first)
#
# Needs `make dev`'s setup (.venv, .aiplat/venvs/vllm, .aiplat/models/base). Runs under nice -n 10.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
STATE="${1:-/tmp/aiplat-default-demo}"
PY="${AIPLAT_MEASURE_PYTHON:-$ROOT/.venv/bin/python}"

rm -rf "$STATE"
mkdir -p "$STATE/venvs" "$STATE/models" "$STATE/dagster_home"
# The heavy, read-only parts of the local state are shared with the checkout's: the vLLM environment
# (linked) and the prepared base model (copied, because the base_model asset may rewrite it).
ln -s "$(readlink -f .aiplat/venvs/vllm)" "$STATE/venvs/vllm"
cp -a .aiplat/models/base "$STATE/models/"
port() { "$PY" -c 'from aiplat.net import free_port; print(free_port())'; }
export AIPLAT_STATE_DIR="$STATE" AIPLAT_ENV=local DAGSTER_HOME="$STATE/dagster_home"
export AIPLAT_MLFLOW_PORT="$(port)" AIPLAT_MILVUS_PORT="$(port)" AIPLAT_GATEWAY_PORT="$(port)"
export PYTHONPATH="$ROOT"
unset AIPLAT_GATE_POLICY AIPLAT_MODELS_DIR  # the shipped policy and specs, nothing else
aiplat() { nice -n 10 "$PY" -m aiplat.cli "$@"; }

stop_all() {
  nice -n 10 "$PY" -c 'from resources.vllm import LocalVllmResource; LocalVllmResource().manager.stop_all()' || true
  aiplat stack down || true
}
trap stop_all EXIT

aiplat demo-data generate
aiplat stack up mlflow milvus gateway
started=$(date +%s)
status=0
aiplat materialize || status=$?
echo "aiplat materialize: exit $status after $(( ($(date +%s) - started) / 60 )) min"
AIPLAT_TOKEN_FILE="$AIPLAT_STATE_DIR/credentials/platform-admin.token" aiplat models list || true
nice -n 10 "$PY" scripts/default_demo_report.py
exit "$status"
