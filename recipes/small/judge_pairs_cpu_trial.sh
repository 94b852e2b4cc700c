#!/usr/bin/env bash
# The CPU trial of `judge.frame_pairs` (docs/small_models.md, section 85): does showing each moment as two adjacent
# frames in one temporal patch let the judge read temporal naturalness (GN) off an editor's outputs, where the spaced
# single frames it sees today carry little of it (gn_probe.py: 0.59 against 0.77 for adjacent pairs)?
#   1. the bundled editor's outputs on CLIPS training clips x 4 seeds (stage judge_data, eval's protocol) to train on,
#      and its `viva eval` outputs on the benchmark's 96 held-out clips (CPU, fp32, 20 steps) to measure on
#   2. the bundled judge continued STEPS steps of batch 16 twice, side by side on one thread each, from the same seed
#      and draws (as judge v5 was trained: three quarters of the items editor outputs, the rest corruptions, a ranking
#      loss between two outputs of one clip): single frames as today, and frame pairs
#   3. recipes/small/judge_output_aucs.py: each question's ROC-AUC over the held-out outputs against the verifiers,
#      the bundled judge first, with intervals over clips and paired differences
# ~1 hour 45 minutes on 2 cores (judge_data 72 minutes, the eval ~8, each judge 21). Run from the repository root:
#   bash recipes/small/judge_pairs_cpu_trial.sh [WORK]   (WORK default /tmp/judge_pairs_trial)
set -euo pipefail
WORK="${1:-/tmp/judge_pairs_trial}"
CLIPS="${CLIPS:-160}" STEPS="${STEPS:-240}"
source recipes/small/cpu_trial_lib.sh  # $V $B $JD, trial_data
trial_data
[ -f "$WORK/ev_heldout/report.json" ] || $V eval "$WORK/data/heldout/heldout.jsonl" --editor bundled --steps 20 \
  --device cpu --dtype fp32 --vlm-dtype fp32 --report "$WORK/ev_heldout" > "$WORK/ev_heldout.log" 2>&1
judge() {  # NAME, then --set words: the bundled judge continued as judge v5 was (gpu_session_v10.sh), on these outputs
  local name=$1; shift
  [ -f "$WORK/$name/judge/viva_judge.json" ] || $V pretrain recipes/small/judge.toml --set output_dir="$WORK/$name" \
    --set device=cpu --set judge.init=$B/vlm/viva-small-judge \
    --set judge.candidates=target,source,other,blend,flicker,blur,shifted,wrong --set judge.ea_unlabelled=other,blend,shifted \
    --set judge.editor_outputs="$WORK/jd_train/judge_data" --set judge.editor_share=0.75 --set judge.rank_weight=1 \
    --set data.manifest="$WORK/data/train/train.jsonl" --set data.limit=2000 --set optim.steps="$STEPS" \
    --set optim.batch_size=16 --set optim.workers=1 --set optim.warmup_steps=20 --set optim.max_minutes=0 "$@" \
    > "$WORK/$name.log" 2>&1
}
export OMP_NUM_THREADS=1  # two small models side by side: one thread each beats two threads each in turn
judge single --set judge.frame_pairs=false & single=$!
judge pairs --set judge.frame_pairs=true & pairs=$!
wait $single; wait $pairs
unset OMP_NUM_THREADS
python3 recipes/small/judge_output_aucs.py "$WORK/data/heldout/heldout.jsonl" "$WORK/ev_heldout" \
  shipped=$B/vlm/viva-small-judge single="$WORK/single/judge" pairs="$WORK/pairs/judge" --json "$WORK/aucs.json" \
  | tee "$WORK/aucs.log"
