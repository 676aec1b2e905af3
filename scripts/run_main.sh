#!/usr/bin/env bash
# Set up, then edit the embedded SmolLM2-135M with the paper's recipe and report probe
# accuracy, rows edited, edit time and toxicity/fluency before and after. Extra arguments go
# to `python -m surgery_editor` (e.g. --rtp-limit 1000, --set alpha=2).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${VENV:-.venv}/bin/python" -m surgery_editor --hparams hparams/ModelSurgery/smollm2-135m.yaml "$@"
