#!/usr/bin/env bash
# GPU session v4 (one H200, 16 cores), planned from session v3 (docs/small_models.md, sections 6 and 8-10). One run
# at a time: v3 showed that a text-only trainer takes the whole GPU and starves any process beside it.
#   setsid bash recipes/small/gpu_session_v4.sh > /tmp/v4.log 2>&1 < /dev/null &
# Phases (PHASES to pick some): data editor judge instructor eval pack. Works in $WORK (default /tmp/viva_v4); ends
# with $WORK/pack/{models.tar.*,results.tar} (<= 15 MB parts, <= 8 files: one device call brings them back).
#   editor      the v3 DiT (8 x 384) text only, EDITOR_STEPS (default 7000, ~9 min at 13 steps/s): the candidate to
#               ship if its PC comes back to the shipped editor's
#   judge       judge.toml with the by-construction labels and difference frames, JUDGE_STEPS (default 2000)
#   instructor  the v3 DiT with the instructor, with and without the grounding loss, INSTR_STEPS each (default
#               1100, the steps of v3's text-only 1,100-step row, which is their baseline)
#   eval        every editor trained here on both benchmark sets (GPU, fp32) + judge_check.py of the judge
set -uo pipefail
WORK="${WORK:-/tmp/viva_v4}"
PHASES="${PHASES:-data editor judge instructor eval pack}"
mkdir -p "$WORK" && cp -r viva_core recipes bench "$WORK"/
cd "$WORK" || exit 1
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-8}"
source recipes/small/session_lib.sh  # $V $R $B, stamp, has, steps, make_data, eval_lines
V3=(--set editor.vae=recipes/small/checkpoints/vae4 --set editor.layers=8 --set editor.heads=6 --set editor.ffn_dim=1536
    --set optim.compile="${COMPILE:-true}")  # COMPILE=false for a CPU smoke run

if has data; then
  stamp data
  make_data
fi
if has editor; then
  stamp editor
  $V pretrain recipes/small/editor4.toml --set output_dir=$R/v4_text "${V3[@]}" $(steps "${EDITOR_STEPS:-7000}") \
    --set optim.max_minutes="${EDITOR_MINUTES:-11}" --set editor.instructor=false > runs/v4_text.log 2>&1
  grep -h '"steps_done"\|"seconds"' $R/v4_text/editor_summary.json
fi
if has judge; then
  stamp judge
  $V pretrain recipes/small/judge.toml $(steps "${JUDGE_STEPS:-2000}") --set optim.max_minutes="${JUDGE_MINUTES:-5}" \
    --set optim.workers=14 > runs/judge.log 2>&1
  grep -h '"steps_done"\|"seconds"' $R/judge/judge_summary.json
fi
if has instructor; then
  stamp instructor
  for g in 0 1; do
    $V pretrain recipes/small/editor4.toml --set output_dir=$R/v4_instr_g$g "${V3[@]}" $(steps "${INSTR_STEPS:-1100}") \
      --set optim.max_minutes="${INSTR_MINUTES:-4}" --set editor.grounding_weight=$g --set optim.workers=14 \
      > runs/v4_instr_g$g.log 2>&1
    grep -h '"steps_done"\|"seconds"' $R/v4_instr_g$g/editor_summary.json
  done
fi
if has eval; then
  stamp eval
  for d in $R/v4_*/editor; do
    [ -d "$d" ] || continue  # no editor trained in this session
    name=$(basename "$(dirname "$d")")
    extra=""; [ -d "$R/$name/instructor" ] && extra="--instructor $R/$name/instructor --refiner $R/$name/refiner.safetensors"
    eval_lines "$name" "--editor $d $extra"
  done > runs/eval_jobs.txt
  [ -f "$R/judge/judge_summary.json" ] && echo "PYTHONPATH=.:$PYTHONPATH python3 recipes/small/judge_check.py data/eval_heldout/heldout.jsonl \
    $R/judge/judge runs/eval/judge_heldout > runs/eval/judge_heldout.log 2>&1" >> runs/eval_jobs.txt
  xargs -P "${JOBS:-8}" -I{} bash -c {} < runs/eval_jobs.txt
  grep -H "^all \|ROC" runs/eval/*.log
fi
if has pack; then
  stamp pack
  tar cf pack/results.tar --exclude='*.safetensors' --exclude='*/outputs/*' runs/stamps.log runs/*.log \
    $R/*/metrics.jsonl $R/*/curves.png $R/*/*summary.json runs/eval 2>/dev/null
  tar cf pack/models.tar --exclude='*/checkpoints/*' --exclude='*.png' --exclude='metrics.jsonl' -C $R \
    ${PACK:-v4_text judge} && split -b 15M -d pack/models.tar pack/models.tar. && rm pack/models.tar
  ls -la pack
fi
stamp done
