#!/usr/bin/env bash
# GPU session v8 (one H200), planned in docs/small_models.md section 21:
#   memory  bench/real_memory.py --only lucy,lucy-release-text: the peak of `viva edit`'s new defaults (text encoder
#           dropped before sampling, bf16 VAE) against issue 13's 16 GiB
#   data    30,000 training clips (N; the 10,000 of editor v4 saw each clip ~220 times) + the two benchmark sets
#   editor  the shipped editor continued (`editor.init`; v4 -> v5 in session v8) for EDITOR_STEPS (default 8000,
#           ~9.5 min at 14.5 steps/s with compile) at peak lr EDITOR_LR (default 3e-4), a fresh warm-up and cosine;
#           EDITOR_SETS adds --set pairs (e.g. "--set data.balance=0.5")
#   eval    v5 and the shipped v4 on both benchmark sets (GPU, fp32: eval_all.sh's protocol), for a paired table
#   judge   judge v3, JUDGE_SETS (default: judge v2 continued with the wrong-edit candidate, section 21), JUDGE_STEPS
#           (default 600) capped at JUDGE_MINUTES (default 7), then judge_check.py
#   pack    pack/results.tar (logs, metrics, eval reports) and pack/models.tar.NN (<= 15 MB parts)
#   setsid bash recipes/small/gpu_session_v8.sh > /tmp/v8.log 2>&1 < /dev/null &
# Works in $WORK (default /tmp/viva_v8). SMOKE=1: a CPU check of the script (tiny data, 2 steps, no compile; with
# PHASES="data editor judge pack"). As run and its results: docs/small_models.md, section 22.
set -uo pipefail
WORK="${WORK:-/tmp/viva_v8}"
PHASES="${PHASES:-memory data editor eval judge pack}"
mkdir -p "$WORK" && cp -r viva_core recipes bench tests "$WORK"/
cd "$WORK" || exit 1
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-8}"
source recipes/small/session_lib.sh  # $V $R $B, stamp, has, steps, make_data, eval_lines
# shellcheck disable=SC2206  # EDITOR_SETS: more --set pairs, e.g. "--set data.balance=0.5"
E=(--set editor.init=$B/diffusers/viva-small-editor --set editor.vae=$B/diffusers/viva-small-editor/vae ${EDITOR_SETS:-}
   --set editor.instructor=false --set optim.compile="${COMPILE:-true}"
   --set optim.lr="${EDITOR_LR:-3e-4}" --set optim.max_minutes="${EDITOR_MINUTES:-11}")
J=(--set optim.steps="${JUDGE_STEPS:-600}" --set optim.warmup_steps=30 --set optim.lr="${JUDGE_LR:-3e-4}"
   --set optim.batch_size=32 --set optim.max_minutes="${JUDGE_MINUTES:-7}" --set optim.workers=14
   --set judge.ea_unlabelled=other,blend,shifted)
JUDGE_SETS="${JUDGE_SETS:---set judge.init=$B/vlm/viva-small-judge \
--set judge.candidates=target,source,other,blend,flicker,blur,shifted,wrong}"
if [ "${SMOKE:-0}" = 1 ]; then
  export N=40; E+=(--set optim.batch_size=2 --set optim.workers=0); J+=(--set optim.steps=2 --set optim.batch_size=2
  --set optim.workers=0); EDITOR_STEPS=2; EVAL_DEVICE=cpu; export EVAL_DEVICE
fi

if has memory; then
  stamp memory
  PYTHONPATH=.:${PYTHONPATH:-} python3 bench/real_memory.py --only "${MEMORY:-lucy,lucy-release-text}" \
    > runs/memory.log 2>&1
  tail -8 runs/memory.log
fi
if has data; then
  stamp data
  N="${N:-30000}" make_data
fi
if has editor; then
  stamp editor
  $V pretrain recipes/small/editor4.toml --set output_dir=$R/v5 "${E[@]}" $(steps "${EDITOR_STEPS:-8000}") \
    > runs/v5.log 2>&1
  grep -h '"steps_done"\|"seconds"' $R/v5/editor_summary.json
fi
if has eval; then
  stamp eval
  { [ -d $R/v5/editor ] && eval_lines v5 "--editor $R/v5/editor"; eval_lines v4 "--editor $B/diffusers/viva-small-editor"; } \
    > runs/eval_jobs.txt
  xargs -P "${JOBS:-4}" -I{} bash -c {} < runs/eval_jobs.txt
  grep -H "^all " runs/eval/*.log
  python3 recipes/small/table.py --paired "v4=runs/eval/v4_heldout" "v5=runs/eval/v5_heldout" 2>&1 | tail -12
  python3 recipes/small/table.py --paired "v4=runs/eval/v4_id" "v5=runs/eval/v5_id" 2>&1 | tail -12
fi
if has judge; then
  stamp judge
  # shellcheck disable=SC2086  # JUDGE_SETS is a list of --set pairs
  $V pretrain recipes/small/judge.toml --set output_dir=$R/judge_v3 "${J[@]}" $JUDGE_SETS > runs/judge_v3.log 2>&1
  grep -h '"steps_done"\|"seconds"' $R/judge_v3/judge_summary.json
  PYTHONPATH=.:${PYTHONPATH:-} python3 recipes/small/judge_check.py data/eval_heldout/heldout.jsonl $R/judge_v3/judge \
    runs/eval/judge_v3 > runs/eval/judge_v3.log 2>&1
  grep -H "ROC\|AUC" runs/eval/judge_v3.log
fi
if has pack; then
  stamp pack
  tar cf pack/results.tar --exclude='*.safetensors' --exclude='*/outputs/*' runs/stamps.log runs/*.log \
    $R/*/metrics.jsonl $R/*/curves.png $R/*/*summary.json runs/eval 2>/dev/null
  rm -f pack/models.tar.*
  tar cf pack/models.tar --exclude='*/checkpoints/*' -C $R $(cd $R && ls -d v5/editor judge_v3/judge 2>/dev/null) &&
    split -b 15M -d pack/models.tar pack/models.tar. && rm pack/models.tar
  ls -la pack
fi
stamp done
