#!/usr/bin/env bash
# The CPU trial of `judge.ground_weight` (docs/small_models.md, section 46): knowing only where the instruction's edit
# belongs (the edit mask, not the target) orders 0.80-0.85 of one clip's clearly different candidates; can the judge
# learn to point there from the EA answer position, on new clips, and does what it points at order the candidates?
#   1. the data and candidate sets of judge_rank_cpu_trial.sh (run that first, or point WORK at its folder)
#   2. the bundled judge continued with the pointer: G160 (160 clips' outputs and corruptions, 300 steps of batch 8,
#      75% editor items), G2K (corruptions of 2,000 clips, 50% editor items, 900 steps), then G2K continued 900 more
#      (seed 1) and 900 more (seed 2), and G2K with the instruction also before the frames (judge.instruction_first)
#   3. recipes/small/ground_check.py on the held-out and the unseen candidates: pointing ROC-AUC against the
#      objectness baseline, and the pointed change / EA P(Yes) as orderings of one clip's candidates; and
#      recipes/small/pointer_curve.py: what simulated pointers of a given AUC order
# ~90 minutes on 2 cores (a step ~1.1 s). Run from the repository root:
#   bash recipes/small/judge_ground_cpu_trial.sh [WORK]   (WORK default /tmp/judge_rank_trial)
set -euo pipefail
WORK="${1:-/tmp/judge_rank_trial}"
V="python3 -m viva_core.cli"
B=viva_core/small_models
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
for f in data/train/train.jsonl data/unseen/train.jsonl jd_train/judge_data/labels.jsonl \
  jd_unseen/judge_data/labels.jsonl; do
  [ -f "$WORK/$f" ] || { echo "$WORK/$f missing: run recipes/small/judge_rank_cpu_trial.sh $WORK first" >&2; exit 1; }
done
HELD="${HELDOUT_CANDIDATES:-$WORK/jd_heldout/judge_data}"
judge() {  # NAME, then --set words: the bundled judge continued with the pointer, as in judge_rank_cpu_trial.sh
  local name=$1; shift
  [ -f "$WORK/$name/judge/ground_head.safetensors" ] && return
  $V pretrain recipes/small/judge.toml --set output_dir="$WORK/$name" --set device=cpu --set judge.init=$B/vlm/viva-small-judge \
    --set judge.candidates=target,source,other,blend,flicker,blur,shifted,wrong --set judge.ea_unlabelled=other,blend,shifted \
    --set judge.editor_outputs="$WORK/jd_train/judge_data" --set judge.rank_weight=1 --set judge.rank_margin=0.1 \
    --set judge.ground_weight=1 --set data.manifest="$WORK/data/train/train.jsonl" --set optim.batch_size=8 \
    --set optim.workers=1 --set optim.warmup_steps=20 --set optim.max_minutes=0 "$@" > "$WORK/$name.log" 2>&1
}
judge g160 --set judge.editor_share=0.75 --set data.limit=160 --set optim.steps=300
judge g2k --set judge.editor_share=0.5 --set data.limit=2000 --set optim.steps=900
judge g2k_more --set judge.init="$WORK/g2k/judge" --set seed=1 --set judge.editor_share=0.5 --set data.limit=2000 \
  --set optim.steps=900
judge g2k_more2 --set judge.init="$WORK/g2k_more/judge" --set seed=2 --set judge.editor_share=0.5 \
  --set data.limit=2000 --set optim.steps=900
judge g2k_first --set judge.editor_share=0.5 --set data.limit=2000 --set optim.steps=900 --set judge.instruction_first=true
J=(g160="$WORK/g160/judge" g2k="$WORK/g2k/judge" g2k_more="$WORK/g2k_more/judge" g2k_more2="$WORK/g2k_more2/judge"
   g2k_first="$WORK/g2k_first/judge")
python3 recipes/small/ground_check.py "$WORK/data/heldout/heldout.jsonl" "$HELD" "${J[@]}" \
  --json "$WORK/ground_heldout.json" | tee "$WORK/ground_heldout.log"
python3 recipes/small/ground_check.py "$WORK/data/unseen/train.jsonl" "$WORK/jd_unseen/judge_data" "${J[@]}" \
  --json "$WORK/ground_unseen.json" | tee "$WORK/ground_unseen.log"
python3 recipes/small/pointer_curve.py "$WORK/data/heldout/heldout.jsonl" "$HELD"
python3 recipes/small/pointer_curve.py "$WORK/data/unseen/train.jsonl" "$WORK/jd_unseen/judge_data"
