#!/usr/bin/env bash
# Build the separate environment for the checkov policy scan (tests/test_delivery_policy.py).
#
#   scripts/setup_checkov_env.sh          build it if missing or out of date, else do nothing
#   scripts/setup_checkov_env.sh --force  rebuild
#
# Where: <state>/venvs/checkov (<state> is $AIPLAT_STATE_DIR or <checkout>/.aiplat). checkov pins
# its own boto3, jsonschema, networkx and pydantic-era libraries; it gets its own environment so
# that it never moves a pin of the platform's .venv. A build goes to a folder named after the pin
# and the link switches only once `checkov --version` answers, so a failed build keeps the old one.
set -euo pipefail

CHECKOV_VERSION="3.3.30"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FORCE=0
for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "setup_checkov_env.sh: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

if [[ -x "$ROOT/.venv/bin/python" ]]; then
  VENVS="$("$ROOT/.venv/bin/python" -c 'from aiplat.config import local_paths; print(local_paths().venvs)')"
else
  VENVS="${AIPLAT_STATE_DIR:-$ROOT/.aiplat}/venvs"
fi
PYTHON="${AIPLAT_CHECKOV_PYTHON:-python3}"
LINK="$VENVS/checkov"
TARGET_NAME="checkov-${CHECKOV_VERSION}"
TARGET="$VENVS/$TARGET_NAME"

mkdir -p "$VENVS"
exec 9>"$VENVS/.checkov-setup.lock"
flock 9

if [[ $FORCE -eq 0 && -x "$LINK/bin/checkov" ]] && grep -qxF "checkov==$CHECKOV_VERSION" "$LINK/aiplat-stamp.txt" 2>/dev/null; then
  echo "checkov environment is up to date: $LINK"
  exit 0
fi

echo "building the checkov environment in $TARGET"
rm -rf "$TARGET"
"$PYTHON" -m venv "$TARGET"
"$TARGET/bin/python" -m pip install -q --disable-pip-version-check --progress-bar off "checkov==$CHECKOV_VERSION"
VERSION="$("$TARGET/bin/checkov" --version)"
[[ "$VERSION" == "$CHECKOV_VERSION" ]] || { echo "setup_checkov_env.sh: expected checkov $CHECKOV_VERSION, got $VERSION" >&2; exit 1; }
echo "checkov==$CHECKOV_VERSION" > "$TARGET/aiplat-stamp.txt"
ln -sfn "$TARGET_NAME" "$VENVS/.checkov.new"
mv -T "$VENVS/.checkov.new" "$LINK"
for old in "$VENVS"/checkov-*; do
  [[ "$old" == "$TARGET" ]] || rm -rf "$old"
done
echo "checkov environment ready: $LINK -> $TARGET_NAME"
