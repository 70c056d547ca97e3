#!/usr/bin/env bash
# Reproduces models/default (MoR) and models/default-vanilla (its baseline) from scratch:
#   tools/train/train_default.sh [WORK_DIR]      (default WORK_DIR: build/train)
# Steps: corpus from Debian's bible-kjv packages -> BPE tokenizer (4096) -> MoR training ->
# vanilla training (same data, steps, seed) -> both exported into models/. Then
# tools/train/evaluate.py writes the numbers of models/default/MODEL_CARD.md.
# Runs on the CPU with 2 threads in about half an hour (MODEL_CARD.md has the measured time);
# MOR_TRAIN_DEVICE=cuda trains on a GPU instead; MOR_TRAIN_STEPS overrides the step count and
# MOR_TRAIN_INSTALL=0 leaves models/ untouched (experiments).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${1:-$ROOT/build/train}
PY=${MOR_PYTHON_VENV:-$ROOT/.venv/bin/python}
DEVICE=${MOR_TRAIN_DEVICE:-cpu}
STEPS=${MOR_TRAIN_STEPS:-1000}
# The recipe (also recorded in each model's train_log.json).
COMMON=(--hidden-size 256 --intermediate-size 768 --heads 4 --kv-heads 2 --block-layers 2
  --recursions 3 --seq-len 256 --batch 16 --steps "$STEPS" --lr 3e-3 --min-lr 3e-4 --warmup 30
  --weight-decay 0.1 --aux-weight 0.001 --seed 1234 --dtype bfloat16 --eval-every 100
  --device "$DEVICE")

"$PY" "$ROOT/tools/train/prepare_corpus.py" "$WORK/corpus"
"$PY" "$ROOT/tools/train/train_tokenizer.py" "$WORK/corpus/train.txt" "$WORK/tokenizer" \
  --vocab-size 4096
"$PY" "$ROOT/tools/train/train.py" --corpus "$WORK/corpus" --tokenizer "$WORK/tokenizer" \
  --out "$WORK/mor" --arch mor "${COMMON[@]}"
"$PY" "$ROOT/tools/train/train.py" --corpus "$WORK/corpus" --tokenizer "$WORK/tokenizer" \
  --out "$WORK/vanilla" --arch vanilla "${COMMON[@]}"
if [[ ${MOR_TRAIN_INSTALL:-1} == 0 ]]; then
  echo "train_default: models in $WORK/mor and $WORK/vanilla (MOR_TRAIN_INSTALL=0)" >&2
  exit 0
fi
for pair in "mor:default" "vanilla:default-vanilla"; do
  src=$WORK/${pair%%:*} dst=$ROOT/models/${pair#*:}
  mkdir -p "$dst"
  cp "$src"/{config.json,model.safetensors,tokenizer.json,tokenizer_config.json,train_log.json} \
    "$dst/"
done
echo "train_default: models/default and models/default-vanilla written; next:" \
  "$PY tools/train/evaluate.py" >&2
