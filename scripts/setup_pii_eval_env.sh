#!/usr/bin/env bash
# Build the separate environment that GENERATES the held-out PII evaluation set with
# presidio-evaluator (its own templates and fake-data generator). It only writes a labeled JSONL;
# the platform's venv scores it (`aiplat pii evaluate`).
#
#   scripts/setup_pii_eval_env.sh          build it if missing or out of date, else do nothing
#   scripts/setup_pii_eval_env.sh --force  rebuild even when the stamp says it is up to date
#
# Where: <state>/venvs/pii-eval, where <state> is $AIPLAT_STATE_DIR or <checkout>/.aiplat.
# presidio-evaluator needs pandas>=3 and transformers>=5; the platform pins pandas<3, so it cannot
# share the platform's .venv. Works offline once installed: the generator's templates, name
# records and providers ship inside the wheel (nothing is downloaded at generation time).
#
# Each build goes to its own folder named after the pins, and venvs/pii-eval is a symlink switched
# only after the new environment imports the generator: a failed build leaves the previous one.
set -euo pipefail

PRESIDIO_EVALUATOR_VERSION="0.3.2"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FORCE=0
for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "setup_pii_eval_env.sh: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

if [[ -x "$ROOT/.venv/bin/python" ]]; then
  VENVS="$("$ROOT/.venv/bin/python" -c 'from aiplat.config import local_paths; print(local_paths().venvs)')"
else
  VENVS="${AIPLAT_STATE_DIR:-$ROOT/.aiplat}/venvs"
fi
PYTHON="${AIPLAT_PII_EVAL_PYTHON:-python3}"
PY_VERSION="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"

LINK="$VENVS/pii-eval"
TARGET="$VENVS/pii-eval-presidio-evaluator-${PRESIDIO_EVALUATOR_VERSION}-py${PY_VERSION}"
STAMP_NAME="aiplat-stamp.txt"
WANT="presidio-evaluator==${PRESIDIO_EVALUATOR_VERSION} python==${PY_VERSION}"

mkdir -p "$VENVS"
exec 9>"$VENVS/.pii-eval-setup.lock"
if ! flock -n 9; then
  echo "another setup_pii_eval_env.sh is building in $VENVS; waiting for it" >&2
  flock 9
fi

if [[ $FORCE -eq 0 && -f "$LINK/$STAMP_NAME" ]] && grep -qxF "pins=$WANT" "$LINK/$STAMP_NAME" \
   && [[ -x "$LINK/bin/python" ]]; then
  echo "PII evaluation environment is up to date: $LINK"
  exit 0
fi

# A venv's scripts hold its absolute path, so it is built where it stays (a folder named after the
# pins); the link switches to it only once the generator imports and finds its bundled data.
rm -rf "$TARGET"
echo "building $TARGET ($WANT)" >&2
"$PYTHON" -m venv "$TARGET"
"$TARGET/bin/pip" install --quiet --disable-pip-version-check "presidio-evaluator==${PRESIDIO_EVALUATOR_VERSION}"
"$TARGET/bin/python" - <<'EOF'
from presidio_evaluator.data_generator.presidio_sentence_faker import presidio_templates_file_path
from presidio_evaluator.data_generator.faker_extensions.datasets import load_fake_person_df
assert presidio_templates_file_path.is_file(), presidio_templates_file_path
assert len(load_fake_person_df()) > 0
EOF
printf 'pins=%s\nbuilt=%s\n' "$WANT" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" > "$TARGET/$STAMP_NAME"
ln -sfn "$(basename "$TARGET")" "$LINK.tmp" && mv -T "$LINK.tmp" "$LINK"
echo "PII evaluation environment ready: $LINK -> $(basename "$TARGET")"
