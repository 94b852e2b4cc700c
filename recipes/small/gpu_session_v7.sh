#!/usr/bin/env bash
# GPU session v7 (one H200): the judge with one vision pass per edit, two runs side by side on the one GPU (the
# model is tiny; 7 loader workers each), docs/small_models.md section 17:
#   A  every candidate (the labels of section 9), lr 1e-3: does scale fix EA with all candidates present?
#   B  EA's loss left out on the candidates whose EA label is not monotone in the change (judge.ea_unlabelled
#      other,blend,shifted): the one CPU setting whose EA truth-vs-source rose with the other questions learning
#   setsid bash recipes/small/gpu_session_v7.sh > /tmp/v7.log 2>&1 < /dev/null &
# Works in $WORK (default /tmp/viva_v7); ends with pack/results.tar and pack/judges.tar (both judge folders).
# JUDGE_MINUTES (default 8) caps each run; RUNS (default "a b") picks runs. SMOKE=1: a CPU check of the script.
set -uo pipefail
WORK="${WORK:-/tmp/viva_v7}"
PHASES="${PHASES:-data judge check pack}"
mkdir -p "$WORK" && cp -r viva_core recipes bench "$WORK"/
cd "$WORK" || exit 1
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"
source recipes/small/session_lib.sh  # $V $R $B, stamp, has, steps, make_data, eval_lines
J=(--set optim.steps="${JUDGE_STEPS:-1000}" --set optim.warmup_steps=60 --set optim.lr=1e-3 --set optim.batch_size=32
   --set optim.max_minutes="${JUDGE_MINUTES:-8}" --set optim.workers="${WORKERS:-7}")
[ "${SMOKE:-0}" = 1 ] && J+=(--set optim.steps=2 --set optim.batch_size=2 --set optim.workers=0)
declare -A RUN_SETS=([a]="" [b]="--set judge.ea_unlabelled=other,blend,shifted" [c]="--set judge.gt_source_share=1")

if has data; then
  stamp data
  make_data
fi
if has judge; then
  stamp judge
  for r in ${RUNS:-a b}; do
    $V pretrain recipes/small/judge.toml --set output_dir=$R/judge_$r "${J[@]}" ${RUN_SETS[$r]} > runs/judge_$r.log 2>&1 &
  done
  wait
  for r in ${RUNS:-a b}; do grep -h '"steps_done"\|"seconds"' $R/judge_$r/judge_summary.json; done
fi
if has check; then
  stamp check
  for r in ${RUNS:-a b}; do
    PYTHONPATH=.:${PYTHONPATH:-} python3 recipes/small/judge_check.py data/eval_heldout/heldout.jsonl $R/judge_$r/judge \
      runs/eval/judge_$r > runs/eval/judge_$r.log 2>&1 &
  done
  wait
  grep -H "ROC\|AUC" runs/eval/judge_*.log
fi
if has pack; then
  stamp pack
  tar cf pack/results.tar --exclude='*.safetensors' runs/stamps.log runs/*.log $R/judge_*/metrics.jsonl \
    $R/judge_*/*.png $R/judge_*/*summary.json runs/eval 2>/dev/null
  tar cf pack/judges.tar --exclude='*/checkpoints/*' -C $R $(cd $R && ls -d judge_*/judge) && ls -la pack
fi
stamp done
