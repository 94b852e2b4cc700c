#!/usr/bin/env bash
# The CPU trial of `judge.rank_margin` (docs/small_models.md, section 44): does ranking two outputs of one clip by
# their verifier scores (pairs whose EA differs by > 0.1, also both below or both above the 0.5 threshold) teach the
# judge to order one clip's candidates, where ranking only the pairs whose Yes/No labels differ did not?
#   1. the bundled editor's outputs on CLIPS training clips x 4 seeds (stage judge_data, eval's protocol), on the
#      benchmark's 96 held-out clips (the candidates best-of-4 picks from; skipped where HELDOUT_CANDIDATES is given)
#      and on its 96 unseen clips of trained combinations
#   2. the bundled judge continued STEPS steps of batch 8 twice, from the same seed and draws: rank pairs where the
#      labels differ (rank_margin 0, what judges v5 and p4 trained with), and where the scores differ by > 0.1
#   3. recipes/small/best_of_n_check.py: within-clip pair agreement (all pairs, and pairs whose EA differs by > 0.1)
#      on the held-out and unseen candidates and on the training clips' own (does it fit what it saw?)
# ~2 hours on 2 cores (judge_data 9-18 s a clip; a judge step ~1.2 s). Run from the repository root:
#   bash recipes/small/judge_rank_cpu_trial.sh [WORK]   (WORK default /tmp/judge_rank_trial)
set -euo pipefail
WORK="${1:-/tmp/judge_rank_trial}"
CLIPS="${CLIPS:-160}" STEPS="${STEPS:-300}"
source recipes/small/cpu_trial_lib.sh  # $V $B $JD, trial_data
trial_data
[ -f "$WORK/data/unseen/train.jsonl" ] || $V synth --out "$WORK/data/unseen" --n 96 --seed 8 --format npz --splits 1,0,0
HELD="${HELDOUT_CANDIDATES:-$WORK/jd_heldout/judge_data}"
[ -f "$HELD/labels.jsonl" ] || $V pretrain recipes/small/judge_data.toml "${JD[@]}" \
  --set data.manifest="$WORK/data/heldout/heldout.jsonl" --set data.limit=0 --set output_dir="$WORK/jd_heldout" \
  > "$WORK/jd_heldout.log" 2>&1
[ -f "$WORK/jd_unseen/judge_data/labels.jsonl" ] || $V pretrain recipes/small/judge_data.toml "${JD[@]}" \
  --set data.manifest="$WORK/data/unseen/train.jsonl" --set data.limit=0 --set output_dir="$WORK/jd_unseen" \
  > "$WORK/jd_unseen.log" 2>&1
judge() {  # NAME, then --set words: the bundled judge continued as judge v5 was (gpu_session_v10.sh), on these outputs
  local name=$1; shift
  $V pretrain recipes/small/judge.toml --set output_dir="$WORK/$name" --set device=cpu --set judge.init=$B/vlm/viva-small-judge \
    --set judge.candidates=target,source,other,blend,flicker,blur,shifted,wrong --set judge.ea_unlabelled=other,blend,shifted \
    --set judge.editor_outputs="$WORK/jd_train/judge_data" --set judge.editor_share=0.75 --set judge.rank_weight=1 \
    --set data.manifest="$WORK/data/train/train.jsonl" --set data.limit="$CLIPS" --set optim.steps="$STEPS" \
    --set optim.batch_size=8 --set optim.workers=1 --set optim.warmup_steps=20 --set optim.max_minutes=0 "$@" \
    > "$WORK/$name.log" 2>&1
}
judge labels --set judge.rank_margin=0
judge scores --set judge.rank_margin=0.1
J=(v5=$B/vlm/viva-small-judge labels="$WORK/labels/judge" scores="$WORK/scores/judge")
python3 recipes/small/best_of_n_check.py "$WORK/data/heldout/heldout.jsonl" "$HELD" "${J[@]}" \
  --json "$WORK/bon_heldout.json" | tee "$WORK/bon_heldout.log"
python3 recipes/small/best_of_n_check.py "$WORK/data/unseen/train.jsonl" "$WORK/jd_unseen/judge_data" "${J[@]}" \
  --json "$WORK/bon_unseen.json" | tee "$WORK/bon_unseen.log"
python3 recipes/small/best_of_n_check.py "$WORK/data/train/train.jsonl" "$WORK/jd_train/judge_data" "${J[@]}" \
  --json "$WORK/bon_train.json" | tee "$WORK/bon_train.log"
