#!/usr/bin/env bash
# Build the separate virtual environment benchmarks/gateway.py starts LiteLLM's proxy from
# (`--compare litellm`). Only for that comparison (docs/gateway.md): the platform does not run LiteLLM.
#
#   scripts/setup_litellm_bench.sh     build it if missing, else do nothing
#
# Where: <state>/venvs/litellm-bench, <state> = $AIPLAT_STATE_DIR or <checkout>/.aiplat.
# litellm[proxy] cannot share the platform's .venv: it would downgrade huggingface_hub (2.4 -> 1.33),
# rich (15 -> 13.9), importlib_metadata and websockets, and add psycopg 3, which SQLAlchemy 2.1 then
# picks for postgresql:// URLs (dagster-postgres needs psycopg2) — `pip install --dry-run` shows it.
set -euo pipefail

LITELLM_VERSION="1.108.7"   # the version measured in docs/gateway.md
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${AIPLAT_STATE_DIR:-$ROOT/.aiplat}"
VENV="$STATE/venvs/litellm-bench"
PYTHON="${PYTHON:-python3.11}"

if [ -x "$VENV/bin/litellm" ] && "$VENV/bin/python" -c "import litellm" 2>/dev/null; then
  echo "litellm venv ready: $VENV"
  exit 0
fi
rm -rf "$VENV.tmp"
"$PYTHON" -m venv "$VENV.tmp"
"$VENV.tmp/bin/pip" install --quiet "litellm[proxy]==$LITELLM_VERSION"
"$VENV.tmp/bin/python" -c "import litellm.proxy.proxy_server" >/dev/null
rm -rf "$VENV"
mv "$VENV.tmp" "$VENV"
# A moved venv keeps absolute paths in its scripts: rewrite the console script's shebang.
sed -i "1s|.*|#!$VENV/bin/python|" "$VENV/bin/litellm"
echo "litellm venv ready: $VENV"
