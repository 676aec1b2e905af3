#!/usr/bin/env bash
# Set up, then run the test suite (unit tests on tiny random models + a few on SmolLM2-135M).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${VENV:-.venv}/bin/python" -m pytest -q -rs "$@"
