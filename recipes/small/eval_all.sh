#!/usr/bin/env bash
# The README's benchmark table: every variant of gpu_session.sh on two sets the models never saw, in parallel
# (npz clips: exact frames). Reports land in runs/eval/<variant>_<set>; recipes/small/table.py prints the table.
#   id:      96 unseen clips of the training distribution (seed 8)
#   heldout: 96 clips of held-out (operation, attribute, referring) combinations (seed 7)
set -uo pipefail
V="python3 -m viva_core.cli"
R=runs/small
[ -f data/eval_id/train.jsonl ] || $V synth --out data/eval_id --n 96 --seed 8 --format npz --splits 1,0,0
[ -f data/eval_heldout/heldout.jsonl ] || $V synth --out data/eval_heldout --n 96 --seed 7 --format npz --splits 0,0,1
lora() { ls "$1"/*.safetensors 2>/dev/null | grep -v refiner | head -1; }
instr() { echo "--instructor $1/instructor --refiner $1/refiner.safetensors"; }
declare -A variant=(
  [text]="--editor $R/editor_text/editor"
  [instructor]="--editor $R/editor_instr/editor $(instr $R/editor_instr)"
  [mask]="--editor $R/editor/editor $(instr $R/editor) --judge $R/judge/judge"
  [grpo]="--editor $R/editor/editor $(instr $R/editor) --lora $(lora $R/grpo)"
  [grpo_lr1e-3]="--editor $R/editor/editor $(instr $R/editor) --lora $(lora $R/grpo_lr1e-3)"
  [rwo]="--editor $R/editor/editor $(instr $R/editor) --lora $(lora $R/rwo)"
  [bundled_v1]="--editor viva_core/small_models/diffusers/viva-small-editor --judge viva_core/small_models/vlm/viva-small-judge
                --instructor viva_core/small_models/vlm/viva-small-instructor
                --refiner viva_core/small_models/refiners/viva-small-refiner.safetensors"
)
mkdir -p runs/eval
for name in "${!variant[@]}"; do
  for set in id heldout; do
    m=data/eval_id/train.jsonl; [ $set = heldout ] && m=data/eval_heldout/heldout.jsonl
    # shellcheck disable=SC2086
    $V eval $m ${variant[$name]} --report runs/eval/${name}_$set --no-outputs --steps 20 --previews 6 \
      > runs/eval/${name}_$set.log 2>&1 &
  done
done
wait
grep -H "^all " runs/eval/*.log
