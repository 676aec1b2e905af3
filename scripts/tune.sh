#!/usr/bin/env bash
# The tuning screens behind the method defaults (README "Tuning and confirmation"), on the RTP
# TUNING split only (benchmark.subset=tune: prompt toxicity >= 0.5, after the first 1,000 such
# prompts, which are the confirmation split) plus the held-out-text perplexity (lm-eval's
# offline_ppl, benchmark=general with no other task). Resumable: rerunning skips finished runs.
#
#   bash scripts/tune.sh smollm2-135m [steer|ProFS|...]    (OMP_NUM_THREADS=1 when sharing cores)
#   (a name runs every screen whose name starts with it: surgery2 = surgery2, surgery2_q2, ...)
# The runs go to OUT (default runs/tuning/MODEL, ignored by git); to publish them:
#   python -m benchmarks.publish runs/tuning/MODEL docs/results/tuning/MODEL
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-smollm2-135m}
ONLY=${2:-}
PY=${VENV:-.venv}/bin/python
OUT=${OUT:-runs/tuning/$MODEL}

screen() {  # screen NAME BENCH method-and-hparams-overrides...   (BENCH: rtp = tuning split, ppl = perplexity)
  local name=$1 bench=$2; shift 2
  if [ -n "$ONLY" ] && [[ "$name" != "$ONLY"* ]]; then return; fi  # NAME selects NAME*
  if [ "$bench" = rtp ]; then set -- benchmark=rtp benchmark.subset=tune "$@"
  else set -- benchmark=general 'benchmark.tasks=[]' "$@"; fi
  "$PY" -m benchmarks.run -m model="$MODEL" "$@" hydra.sweep.dir="$OUT/$name/$bench" hydra.sweep.subdir='${hydra.job.num}'
}
sweep() {  # sweep NAME overrides...: both the toxicity and the perplexity screen
  screen "$1" rtp "${@:2}"
  screen "$1" ppl "${@:2}"
}

case $MODEL in
  smollm2-135m)
    sweep none method=none
    # toxicity with the random control beside; perplexity for the method (its controls are
    # measured at confirmation)
    screen steer rtp method=steer,steer_random hparams.layer=3,6,9,12,15,20 hparams.scale=1,2
    screen steer ppl method=steer hparams.layer=3,6,9,12,15,20 hparams.scale=1,2
    sweep ProFS method=ProFS 'hparams.layers=[15,16,17,18,19,20,21,22,23,24,25,26,27,28,29],[20,21,22,23,24,25,26,27,28,29]' \
      hparams.strength=0.5,1 hparams.pooling=mean,rms_mean
    # second look, around the best steering setting of the first screen (layer 6, scale 1)
    sweep steer_fine method=steer hparams.layer=4,6 hparams.scale=1.25,1.5
    # ModelSurgery, layer-wise variant: ParaDetox pairs or RTP continuations as probe
    # data, three step sizes; the random-direction control beside each on toxicity
    screen surgery rtp method=ModelSurgery,ModelSurgery_random method.variant=layerwise,layerwise-rtp hparams.alpha=0.3,0.4,0.5
    screen surgery ppl method=ModelSurgery method.variant=layerwise hparams.alpha=0.3,0.4,0.5
    # (the layerwise-rtp perplexity screen was stopped: its toxicity screen already ruled it out)
    # second look at alpha = 0.4 (first screen: 0.3 too weak, 0.5 past the perplexity cliff):
    # which rows and how far -- an even budget per layer, the second quarter of the layers only
    # (7-14, K = 500), and the probe read at the last token instead of the token mean
    screen surgery2 rtp method=ModelSurgery,ModelSurgery_random method.variant=layerwise hparams.alpha=0.4 hparams.budget=per_layer
    screen surgery2 ppl method=ModelSurgery method.variant=layerwise hparams.alpha=0.4 hparams.budget=per_layer
    screen surgery2_q2 rtp method=ModelSurgery,ModelSurgery_random method.variant=layerwise hparams.alpha=0.4 \
      'hparams.edit_layers=[7,8,9,10,11,12,13,14]' hparams.top_k=500
    screen surgery2_q2 ppl method=ModelSurgery method.variant=layerwise hparams.alpha=0.4 \
      'hparams.edit_layers=[7,8,9,10,11,12,13,14]' hparams.top_k=500
    screen surgery2_last rtp method=ModelSurgery,ModelSurgery_random method.variant=layerwise hparams.alpha=0.4 hparams.probe_pooling=last
    screen surgery2_last ppl method=ModelSurgery method.variant=layerwise hparams.alpha=0.4 hparams.probe_pooling=last
    # (surgery2_last's random control and perplexity were stopped: its toxic share, 7.2%, had
    # already lost to the first screen's alpha = 0.3, 5.6%, under the rule in the README)
    # steering and ProFS on the model's own pairs (python -m benchmarks.onpolicy smollm2-135m --prompts 600):
    # the settings chosen on ParaDetox did nothing or harm with them; a few others
    P="hparams.pairs={path:runs/onpolicy/$MODEL/pairs.jsonl,positive_column:toxic,negative_column:nontoxic}"
    screen onpolicy_steer rtp method=steer,steer_random "$P" hparams.layer=3,6,9 hparams.scale=1,2
    screen onpolicy_steer ppl method=steer "$P" hparams.layer=3,6,9 hparams.scale=1,2
    sweep onpolicy_ProFS method=ProFS "$P" 'hparams.layers=[15,16,17,18,19,20,21,22,23,24,25,26,27,28,29],[20,21,22,23,24,25,26,27,28,29]' \
      hparams.strength=0.5,1
    # second look: at scale 2 the model's own pairs still cost no perplexity; larger scales after block 6
    screen onpolicy_steer2 rtp method=steer,steer_random "$P" hparams.layer=6 hparams.scale=4,8
    screen onpolicy_steer2 ppl method=steer "$P" hparams.layer=6 hparams.scale=4,8
    ;;
  gemma3-270m)
    sweep none method=none
    screen steer rtp method=steer,steer_random hparams.layer=-1 hparams.scale=1,2,4,8
    screen steer ppl method=steer hparams.layer=-1 hparams.scale=1,2,4,8
    sweep ProFS method=ProFS 'hparams.layers=[9,10,11,12,13,14,15,16,17],[12,13,14,15,16,17]' \
      hparams.strength=0.5,1 hparams.pooling=mean,rms_mean
    # ModelSurgery, layer-wise variant, ParaDetox probe data as chosen on SmolLM2
    screen surgery rtp method=ModelSurgery,ModelSurgery_random method.variant=layerwise hparams.alpha=0.3,0.5,0.7
    screen surgery ppl method=ModelSurgery method.variant=layerwise hparams.alpha=0.3,0.5,0.7
    # (alpha = 0.7's perplexity was stopped: 0.3 had already doubled perplexity, 0.5 multiplied it by 7.5)
    # (the ProFS and steering screens above were not run for Gemma)
    # DPO: the recipe copied from SmolLM2 at learning rate 1e-4 collapses on Gemma
    # (greedy continuations become <start_of_image>, perplexity x3); smaller steps
    sweep dpo method=DPO hparams.learning_rate=1e-5,3e-5,5e-5
    ;;
  *) echo "tune.sh: no screens defined for $MODEL" >&2; exit 2 ;;
esac
