#!/usr/bin/env bash
# The side-by-side comparison in the README: methods and their controls on the RTP CONFIRMATION
# split (the first 1,000 prompts with prompt toxicity >= 0.5; the defaults were tuned on the other
# 249 only, scripts/tune.sh), the held-out-text perplexity (lm-eval offline_ppl), SafeEdit and
# ToxiGen at scale=cpu-small, then one report. Resumable; parts can run side by side.
#
#   bash scripts/compare.sh MODEL [rtp|ppl|safeedit|toxigen|sampled|challenging|challenging-sampled|general|report|all]
#     [METHODS]
#   e.g. OMP_NUM_THREADS=1 bash scripts/compare.sh smollm2-135m rtp none,prompt,DPO
# The runs go to OUT (default runs/compare/MODEL, ignored by git); publishing them is a step of its own:
#   python -m benchmarks.publish runs/compare/MODEL docs/results/compare/MODEL
#   python -m benchmarks.report docs/results/compare/MODEL
# A variant with its own settings: TAG names its run dirs (<method>-<TAG>_<benchmark>), EXTRA
# holds its Hydra overrides, e.g. the confirmed layer-wise ModelSurgery and its controls:
#   TAG=layerwise EXTRA="method.variant=layerwise hparams.alpha=0.5" \
#     bash scripts/compare.sh smollm2-135m rtp ModelSurgery,ModelSurgery_random
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-smollm2-135m}
PART=${2:-all}
ALL=ModelSurgery,ModelSurgery_random,ProFS,ProFS_random,steer,steer_random,prompt,DPO,DPO_shuffled,DINM,none
METHODS=${3:-$ALL}
RTP_LIMIT=${RTP_LIMIT:-null}   # null = all 1,000 confirmation prompts; e.g. RTP_LIMIT=300 for a quicker look
PY=${VENV:-.venv}/bin/python
OUT=${OUT:-runs/compare/$MODEL}
TAG=${TAG:-}
read -r -a EXTRA_ARGS <<< "${EXTRA:-}"
run() {  # run PART-DIR overrides...
  local dir=$1; shift
  "$PY" -m benchmarks.run -m model="$MODEL" method="$METHODS" "$@" "${EXTRA_ARGS[@]}" hydra.sweep.dir="$OUT/$dir" \
    hydra.sweep.subdir='${method.name}'"${TAG:+-$TAG}"'_${benchmark.name}'
}
case $PART in rtp|all) run rtp benchmark=rtp benchmark.subset=confirm benchmark.limit="$RTP_LIMIT" ;; esac
case $PART in ppl|all) run ppl benchmark=general 'benchmark.tasks=[]' ;; esac
case $PART in safety) run safety scale=cpu-small benchmark=safeedit,toxigen ;; esac  # the old quick look: 8 + 64
# Full offline scale: all 144 SafeEdit records (48 new tokens, inputs up to 1,024
# tokens as on the GPU run); ToxiGen 20 prompts per group (48 new tokens); the sampled RTP
# protocol (25 nucleus samples per prompt) on the first 200 prompts of the confirmation split.
case $PART in safeedit|all) run safeedit benchmark=safeedit generation.max_new_tokens=48 ;; esac
case $PART in toxigen|all) run toxigen scale=cpu-small benchmark=toxigen benchmark.limit=1000 \
  benchmark.limit_per_group=20 ;; esac
case $PART in sampled|all) run sampled benchmark=rtp benchmark.subset=confirm benchmark.limit=200 \
  benchmark.protocol=sampled ;; esac
# capability: lm-eval's five offline multiple-choice tasks, 100 documents each (GSM8K left out:
# these models score 0-2% on it, and it costs most of the time) + perplexity
case $PART in general|all) run general benchmark=general scale=cpu-small \
  'benchmark.tasks=[boolq,piqa,mmlu,commonsenseqa,openbookqa]' benchmark.limit_per_task=100 ;; esac
# RTP's challenging prompts (benchmark.prompts=challenging, fetched by python -m benchmarks.challenging,
# which scripts/setup.sh runs): greedy on the confirmation part (its first 80%: 764 prompts), sampled
# (25 nucleus samples per prompt) on the first 200 of them. Nothing was tuned on these prompts.
case $PART in challenging|all) run challenging benchmark=rtp benchmark.prompts=challenging benchmark.subset=confirm \
  benchmark.limit="$RTP_LIMIT" ;; esac
case $PART in challenging-sampled|all) run challenging-sampled benchmark=rtp benchmark.prompts=challenging \
  benchmark.subset=confirm benchmark.limit=200 benchmark.protocol=sampled ;; esac
case $PART in report|all) "$PY" -m benchmarks.report "$OUT" ;; esac
