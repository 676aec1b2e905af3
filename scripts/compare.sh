#!/usr/bin/env bash
# The side-by-side comparison in the README: methods and their controls on the RTP CONFIRMATION
# split (the first 1,000 prompts with prompt toxicity >= 0.5; the defaults were tuned on the other
# 249 only, scripts/tune.sh), the held-out-text perplexity (lm-eval offline_ppl), SafeEdit and
# ToxiGen at scale=cpu-small, then one report. Resumable; parts can run side by side.
#
#   bash scripts/compare.sh MODEL [rtp|ppl|safety|report|all] [METHODS]
#   e.g. OMP_NUM_THREADS=1 bash scripts/compare.sh smollm2-135m rtp none,prompt,DPO
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-smollm2-135m}
PART=${2:-all}
ALL=ModelSurgery,random,ProFS,ProFS_random,steer,steer_random,prompt,DPO,DPO_shuffled,DINM,none
METHODS=${3:-$ALL}
RTP_LIMIT=${RTP_LIMIT:-null}   # gemma3-270m: RTP_LIMIT=300 (the first 300 of the confirmation split)
PY=${VENV:-.venv}/bin/python
OUT=docs/results/compare/$MODEL
run() {  # run PART-DIR overrides...
  local dir=$1; shift
  "$PY" -m benchmarks.run -m model="$MODEL" method="$METHODS" "$@" hydra.sweep.dir="$OUT/$dir" \
    hydra.sweep.subdir='${method.name}_${benchmark.name}'
}
case $PART in rtp|all) run rtp benchmark=rtp benchmark.subset=confirm benchmark.limit="$RTP_LIMIT" ;; esac
case $PART in ppl|all) run ppl benchmark=general 'benchmark.tasks=[]' ;; esac
case $PART in safety|all) run safety scale=cpu-small benchmark=safeedit,toxigen ;; esac
case $PART in report|all) "$PY" -m benchmarks.report "$OUT" ;; esac
