#!/usr/bin/env bash
# Cost of the comparison at Llama-2-7B's shape on one GPU: python -m benchmarks.perf on
# shape:llama2-7b (32 layers, hidden 4,096, MLP 11,008, 32 heads; the SmolLM2 tokenizer's 49,152-token
# vocabulary) with random bf16 weights, for cost only, then the projection of scripts/compare.sh and
# of a submitit_slurm sweep. One process; about 6 minutes on an H100 (80 GB), stopped at LIMIT_S (540 s)
# with the tables of the steps done so far written.
#
#   bash scripts/gpu_perf7b.sh prepare             # here: .gpu7b/ = tokenizer, data, wheels (PyPI)
#   bash scripts/gpu_perf7b.sh OUT [TARBALL]       # on the GPU machine, repo root, .gpu7b/ beside it
#
# `prepare` (on a machine with this project's venv and PyPI) writes what the GPU machine lacks into
# .gpu7b/ (git-ignored; ~30 MB): the shape's tokenizer (saved; the embedded model's package is
# 98 MB), the offline data folder, and wheels for the Python packages its image has not (trl,
# datasets, lm-eval and what they need, alt-profanity-check, nltk) at the versions tested here.
# The run installs those wheels into a temporary folder, points the data and tokenizer variables
# at .gpu7b/ and writes OUT/: perf.md, one CSV per table, projection.csv, sweep.csv, device.txt,
# log.txt; TARBALL (e.g. $OUT/perf7b.tar.gz where only a few files come back) packs them.
#
# Sizes (SIZES overrides them all): the comparison's own counts where they fit the time (ModelSurgery
# from 2,000 probe texts, ProFS / steering from 500 pairs, 1,000 greedy RTP prompts x 20 tokens,
# lm-eval 100 documents per task and all 46 perplexity texts, 1,000 texts per judge); fewer where
# the full count would take minutes and the cost per item is what the projection needs: DPO 256
# pairs (the YAML trains on 2,048), sampled 24 prompts x 25 samples (of 200), SafeEdit 32 records
# x 5 inputs x 48 tokens (of 144), ToxiGen 64 prompts (of 320), one prompt at a time on 16 prompts,
# DINM on 2 records. Assumed: ~40 ms per decoding step at batch 16-25 (transformers' eager
# generate at 7B), ~13.5 GB written and read back by --load on the local disk (LOAD_DIR, /tmp).
set -euo pipefail
cd "$(dirname "$0")/.."
BUNDLE=${BUNDLE:-.gpu7b}

if [ "${1:-}" = prepare ]; then
  PY=${VENV:-.venv}/bin/python
  rm -rf "$BUNDLE"
  mkdir -p "$BUNDLE/wheels"
  "$PY" -c "
from surgery_editor.models import MODEL_SHAPES, shape_tokenizer
shape_tokenizer(MODEL_SHAPES['llama2-7b']).save_pretrained('$BUNDLE/tokenizer')"
  cp -r "$("$PY" -c 'from surgery_editor.data import resolve_data_dir; print(resolve_data_dir(None))')" "$BUNDLE/data"
  # what benchmarks.perf imports beyond the GPU image's packages (.library/device/KINDS.md lists them)
  for pkg in trl datasets dill multiprocess lm-eval evaluate sqlitedict word2number more-itertools \
      pytablewriter dataproperty mbstrdecoder pathvalidate tabledata tcolorpy typepy chardet rouge-score \
      nltk alt-profanity-check defusedxml; do
    version=$("$PY" -c "import importlib.metadata as m; print(m.version('$pkg'))")
    # a wheel for Python 3.12 (the GPU image's), else one built here from the source (pure Python)
    "$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_17_x86_64 --platform any -d "$BUNDLE/wheels" "$pkg==$version" \
        >/dev/null 2>&1 \
      || "$PY" -m pip wheel -q --disable-pip-version-check --no-deps -w "$BUNDLE/wheels" "$pkg==$version" \
        2> >(grep -v "is ignored: it is neither" >&2)
  done
  du -sh "$BUNDLE"
  exit 0
fi

OUT=${1:-gpu_perf7b}
TARBALL=${2:-}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
if [ "${WHEELS:-1}" = 1 ] && compgen -G "$BUNDLE/wheels/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu7b-site \
    "$BUNDLE"/wheels/*.whl
  export PYTHONPATH=/tmp/gpu7b-site${PYTHONPATH:+:$PYTHONPATH}
fi
if [ -d "$BUNDLE/data" ]; then export SURGERY_EDITOR_DATA_DIR=$PWD/$BUNDLE/data; fi
if [ -d "$BUNDLE/tokenizer" ]; then export SURGERY_EDITOR_SHAPE_TOKENIZER=$PWD/$BUNDLE/tokenizer; fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export SURGERY_EDITOR_CACHE=${SURGERY_EDITOR_CACHE:-/tmp/gpu7b-cache}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
  "$PY" -c "
import importlib, torch, transformers
print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())
for name in ('trl', 'datasets', 'peft', 'lm_eval', 'profanity_check', 'sklearn', 'nltk', 'tabulate', 'psutil'):
    try:
        print(name, getattr(importlib.import_module(name), '__version__', 'ok'))
    except Exception as err:
        print(name, 'MISSING:', type(err).__name__, err)"
} > "$OUT/device.txt" 2>&1 || true
cat "$OUT/device.txt"

SIZES=${SIZES:---probe-sizes 1000 --dinm-instances 2 --rtp-prompts 1000 --single-prompts 16 --gen-batch-size 16
  --max-new-tokens 20 --toxigen-prompts 64 --sampled-prompts 24 --num-samples 25 --safeedit-records 32
  --safeedit-new-tokens 48 --pairs 500 --dpo-pairs 256 --lm-eval-docs 100 --lm-eval-batch-size 16
  --judge-texts 1000 --load}
read -r -a SIZE_ARGS <<< "$(echo $SIZES)"
status=0
timeout "${LIMIT_S:-540}" "$PY" -m benchmarks.perf --model "${MODEL:-shape:llama2-7b}" --device "${DEVICE:-cuda}" \
  --dtype "${DTYPE:-bfloat16}" "${SIZE_ARGS[@]}" --load-dir "${LOAD_DIR:-/tmp}" --project --gpus 1 2 4 8 \
  --gpu-memory-gb "${GPU_MEMORY_GB:-80}" --out "$OUT" -v > "$OUT/log.txt" 2>&1 || status=$?
grep -v -E "it/s\]|s/it\]" "$OUT/log.txt" | tail -n 40 || true
echo "benchmarks.perf exit status: $status (124: stopped at LIMIT_S; 1: a step failed, see perf.md)"
if [ -n "$TARBALL" ]; then tar czf "$TARBALL" -C "$OUT" .; fi
exit "$status"
