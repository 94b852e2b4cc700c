#!/usr/bin/env bash
# The CPU trial of ReViSE's self-reflection loss (docs/small_models.md, section 42): three LoRAs of the shipped editor
# from the same seed, data and draws (plain SFT, the loss at 0.1 on EA, on EA and PC; STEPS of batch 4, one thread
# each, two at a time), then the bundled editor with and without each on the benchmark's 96 held-out clips with the
# bundled judge scoring the edits, paired by table.py. ~90 minutes on 2 cores (250 steps: 15 min plain, 30 min with the
# loss; ~8 min an eval). Run from the repository root:  bash recipes/small/uso_cpu_trial.sh [WORK]
set -euo pipefail
WORK="${1:-/tmp/uso_trial}"
STEPS="${STEPS:-250}"
V="python3 -m viva_core.cli"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=1
mkdir -p "$WORK"
[ -f "$WORK/data/train/train.jsonl" ] || $V synth --out "$WORK/data/train" --n 2000 --seed 0 --format npz --splits 1,0,0
[ -f "$WORK/data/heldout/heldout.jsonl" ] || $V synth --out "$WORK/data/heldout" --n 96 --seed 7 --format npz --splits 0,0,1
train() {  # NAME, then --set words
  local name=$1; shift
  $V train recipes/small/uso.toml --set data.manifest="$WORK/data/train/train.jsonl" --set output_dir="$WORK/runs/$name" \
    --set optim.steps="$STEPS" --set optim.batch_size=4 --set optim.warmup_steps=10 --set model.dtype=fp32 \
    --set log.checkpoint_every=50 --set data.cache_dir="$WORK/cache" "$@" > "$WORK/train_$name.log" 2>&1
}
evaluate() {  # NAME [LORA]
  $V eval "$WORK/data/heldout/heldout.jsonl" --report "$WORK/eval/$1" --no-outputs --steps 20 --device cpu \
    --editor viva_core/small_models/diffusers/viva-small-editor --judge bundled ${2:+--lora "$2"} > "$WORK/eval_$1.log" 2>&1
}
lora() { echo "$WORK/runs/$1/viva_small_edit_uso.safetensors"; }
train sft --set sft.uso_weight=0 & train ea --set sft.uso_weight=0.1 & wait
train eapc --set sft.uso_weight=0.1 --set 'sft.uso_questions=["EA","PC"]' & evaluate base & wait
evaluate sft "$(lora sft)" & evaluate ea "$(lora ea)" & wait
evaluate eapc "$(lora eapc)"
python3 recipes/small/table.py --paired "base=$WORK/eval/base" "sft=$WORK/eval/sft" "ea=$WORK/eval/ea" "eapc=$WORK/eval/eapc"
python3 recipes/small/table.py --paired "sft=$WORK/eval/sft" "ea=$WORK/eval/ea" "eapc=$WORK/eval/eapc"
