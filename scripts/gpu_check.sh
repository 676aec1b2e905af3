#!/usr/bin/env bash
# A short check of the harness on a GPU (device=cuda, bf16): six methods on the first RTP_LIMIT
# prompts of the RTP confirmation split, their report, and the SafeEdit prefix-sharing timing on
# the GPU. Needs the project's requirements and the embedded model where it runs.
#   bash scripts/gpu_check.sh [OUT_DIR]        (default runs/gpu_check; RTP_LIMIT=300 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/gpu_check}
PY=${PYTHON:-python3}
"$PY" -m benchmarks.run -m model=smollm2-135m method=none,ModelSurgery,ModelSurgery_random,ProFS,steer,prompt benchmark=rtp \
  benchmark.subset=confirm benchmark.limit="${RTP_LIMIT:-300}" device=cuda model.dtype=bfloat16 \
  hydra.sweep.dir="$OUT/rtp" 'hydra.sweep.subdir=${method.name}_${benchmark.name}'
"$PY" -m benchmarks.report "$OUT/rtp"
"$PY" -m benchmarks.perf --model smollm2-135m --device cuda --only-prefix --safeedit-prefix-records 144 --out "$OUT/perf"
