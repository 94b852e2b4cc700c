#!/usr/bin/env bash
# The README's benchmark table: every variant of gpu_session.sh on two sets the models never saw (npz clips:
# exact frames), JOBS at a time. Reports land in runs/eval/<variant>_<set>; recipes/small/table.py prints the
# table. R: the runs folder of gpu_session.sh; JOBS: parallel evals (2 on a 2-core machine); EVAL_ARGS: more
# flags for viva eval (the README table: "--dtype fp32 --vlm-dtype fp32 --device cpu").
#   id:      96 unseen clips of the training distribution (seed 8)
#   heldout: 96 clips of held-out (operation, attribute, referring) combinations (seed 7)
set -uo pipefail
V="python3 -m viva_core.cli"
R="${R:-runs/small}"
B=viva_core/small_models
[ -f data/eval_id/train.jsonl ] || $V synth --out data/eval_id --n 96 --seed 8 --format npz --splits 1,0,0
[ -f data/eval_heldout/heldout.jsonl ] || $V synth --out data/eval_heldout --n 96 --seed 7 --format npz --splits 0,0,1
instr() { echo "--instructor $1/instructor --refiner $1/refiner.safetensors"; }
mask="--editor $R/editor/editor $(instr $R/editor)"
declare -A variant=(
  [text]="--editor $R/editor_text/editor"
  [instructor]="--editor $R/editor_instr/editor $(instr $R/editor_instr)"
  [mask]="$mask --judge ${JUDGE:-$B/vlm/viva-small-judge}"
  [grpo]="$mask --lora $(ls $R/grpo/viva_*.safetensors 2>/dev/null | head -1)"
  [rwo]="$mask --lora $(ls $R/rwo/viva_*.safetensors 2>/dev/null | head -1)"
  [bundled]="--editor $B/diffusers/viva-small-editor"
)
mkdir -p runs/eval
for name in ${VARIANTS:-"${!variant[@]}"}; do
  for set in id heldout; do
    m=data/eval_id/train.jsonl; [ "$set" = heldout ] && m=data/eval_heldout/heldout.jsonl
    echo "$V eval $m ${variant[$name]//$'\n'/ } --report runs/eval/${name}_$set --no-outputs --steps 20 --previews 6 ${EVAL_ARGS:-} \
      > runs/eval/${name}_$set.log 2>&1"
  done
done | xargs -P "${JOBS:-14}" -I{} bash -c {}
grep -H "^all " runs/eval/*.log
