#!/usr/bin/env bash
# GPU session v3 (one H200, 16 cores): a larger DiT on the 4x VAE, with and without the instructor, and the judge
# with difference frames, trained side by side (the small trainers are launch-bound, so concurrent processes
# share the GPU well), then evaluated on the GPU with eval_all.sh's protocol. Run from the repo root, detached:
#   setsid bash recipes/small/gpu_session_v3.sh > /tmp/v3.log 2>&1 < /dev/null &
# Works in $WORK (default /tmp/viva_v3); ends with $WORK/pack/*.tar.* (parts <= 15 MB) for the device to return.
# Phases (PHASES to pick some): data train eval pack. Settings and outcome: docs/small_models.md, section 8.
set -uo pipefail
WORK="${WORK:-/tmp/viva_v3}"
PHASES="${PHASES:-data train eval pack}"
mkdir -p "$WORK" && cp -r viva_core recipes bench "$WORK"/
cd "$WORK" || exit 1
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"
source recipes/small/session_lib.sh  # $V $R $B, stamp, has, steps, make_data, eval_lines
MIN="${TRAIN_MINUTES:-10}"
# The larger DiT: 8 layers of width 384 (6 heads x 64), ffn 1536, ~20 M parameters (40 MB in bf16).
BIG=(--set editor.vae=recipes/small/checkpoints/vae4 --set editor.layers=8 --set editor.heads=6
     --set editor.ffn_dim=1536 --set optim.compile=true --set "optim.max_minutes=$MIN")

if has data; then
  stamp data
  make_data
fi
if has train; then
  stamp train
  $V pretrain recipes/small/editor4.toml --set output_dir=$R/big_instr "${BIG[@]}" $(steps "${INSTR_STEPS:-1100}") \
    --set optim.workers=6 > runs/big_instr.log 2>&1 &
  $V pretrain recipes/small/editor4.toml --set output_dir=$R/big_text "${BIG[@]}" $(steps "${INSTR_STEPS:-1100}") \
    --set editor.instructor=false > runs/big_text.log 2>&1 &
  $V pretrain recipes/small/editor4.toml --set output_dir=$R/big_text_long "${BIG[@]}" $(steps "${LONG_STEPS:-2400}") \
    --set editor.instructor=false > runs/big_text_long.log 2>&1 &
  $V pretrain recipes/small/judge.toml --set optim.steps="${JUDGE_STEPS:-4000}" --set optim.warmup_steps=200 \
    --set "optim.max_minutes=$MIN" --set optim.workers=4 > runs/judge.log 2>&1 &
  wait
  grep -h "stopped at\|steps_done" runs/*.log | tail -8
fi
if has eval; then
  stamp eval
  declare -A variant=(
    [bundled_v1]="--editor $B/diffusers/viva-small-editor --instructor $B/vlm/viva-small-instructor --refiner $B/refiners/viva-small-refiner.safetensors"
    [big_instr]="--editor $R/big_instr/editor --instructor $R/big_instr/instructor --refiner $R/big_instr/refiner.safetensors"
    [big_text]="--editor $R/big_text/editor"
    [big_text_long]="--editor $R/big_text_long/editor"
  )
  for name in ${VARIANTS:-"${!variant[@]}"}; do
    eval_lines "$name" "${variant[$name]}"
  done > runs/eval_jobs.txt
  [ -f "$R/judge/judge_summary.json" ] && echo "python3 recipes/small/judge_check.py data/eval_heldout/heldout.jsonl $R/judge runs/eval/judge_heldout \
    > runs/eval/judge_heldout.log 2>&1" >> runs/eval_jobs.txt
  xargs -P "${JOBS:-9}" -I{} bash -c {} < runs/eval_jobs.txt
  grep -H "^all \|ROC" runs/eval/*.log
fi
if has pack; then
  stamp pack
  tar cf pack/results.tar --exclude='*.safetensors' --exclude='*/outputs/*' runs/stamps.log runs/*.log \
    "$R"/*/metrics.jsonl "$R"/*/curves.png "$R"/*/*summary.json runs/eval 2>/dev/null
  for m in big_instr big_text big_text_long judge; do
    [ -d "$R/$m" ] && tar cf "pack/$m.tar" --exclude='*/checkpoints/*' --exclude='*.png' --exclude='metrics.jsonl' \
      -C "$R" "$m" && split -b 15M -d "pack/$m.tar" "pack/$m.tar." && rm "pack/$m.tar"
  done
  ls -la pack
fi
stamp done
