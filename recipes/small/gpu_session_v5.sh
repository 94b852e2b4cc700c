#!/usr/bin/env bash
# GPU session v5 (one H200): Edit-GRPO on the bundled editor (editor v4), the row the README's ablation lacks
# (docs/small_models.md, section 13). One run at a time.
#   setsid bash recipes/small/gpu_session_v5.sh > /tmp/v5.log 2>&1 < /dev/null &
# As run in session v5: AGREE_SECONDS=200 GRPO_SECONDS=660 (docs/small_models.md, section 14). Next session, with
# the batched step (section 15): SETS="rollout.steps=6 rollout.window=2" AGREE="2x8 32x16" first, GRPO after.
# Phases (PHASES to pick some): data agree grpo eval pack. Works in $WORK (default /tmp/viva_v5); ends with
# $WORK/pack/results.tar and the LoRA (one device call brings them back).
#   agree  recipes/small/grpo_agreement.py for each batch x group in AGREE (default "4x8 8x8"), K = 3 rollout
#          batches of the same records: do the LoRA gradients of independent rollouts agree beyond noise?
#   grpo   viva train recipes/small/grpo_v4.toml for GRPO_SECONDS (default 600; SIGINT then: the trainer finishes
#          its step and writes <name>_interrupted.safetensors) with batch x group GRPO_BG (default 8x8) and
#          rollout.inner_updates INNER (default 2: the PPO clip acts from the second update on) and, when set, the
#          learning rate LR (default: the config's 3e-4)
#   eval   the bundled editor with and without the GRPO LoRA on both benchmark sets (GPU, fp32)
# SMOKE=1 shrinks every run for a CPU check of the script (2 SDE steps, groups of 2, 2 optimizer steps).
set -uo pipefail
WORK="${WORK:-/tmp/viva_v5}"
PHASES="${PHASES:-data agree grpo eval pack}"
mkdir -p "$WORK" && cp -r viva_core recipes bench "$WORK"/
cd "$WORK" || exit 1
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-8}"
source recipes/small/session_lib.sh  # $V $R $B, stamp, has, steps, make_data, eval_lines
CONFIG=recipes/small/grpo_v4.toml
EXTRA=()  # the config's model.editor is the bundled editor
for kv in ${SETS:-}; do EXTRA+=(--set "$kv"); done  # SETS="key=value ...": more settings for agree and grpo
[ "${SMOKE:-0}" = 1 ] && EXTRA+=(--set rollout.steps=2 --set rollout.window=1 --set model.dtype=fp32) && GRPO_STEPS=2
bg() { echo --set "optim.batch_size=${1%x*}" --set "rollout.group_size=${1#*x}"; }

if has data; then
  stamp data
  make_data
fi
if has agree; then
  stamp agree
  for size in ${AGREE:-4x8 8x8}; do
    sets="$(bg "$size" | sed 's/--set //g') ${SETS:-}"
    timeout "${AGREE_SECONDS:-240}" env PYTHONPATH=.:${PYTHONPATH:-} python3 recipes/small/grpo_agreement.py $CONFIG 3 \
      $sets $([ "${SMOKE:-0}" = 1 ] && echo rollout.steps=2 rollout.window=1 model.dtype=fp32) > runs/agree_$size.log 2>&1
    grep -h "^batch\|^K " runs/agree_$size.log
  done
fi
if has grpo; then
  stamp grpo
  timeout -s INT "${GRPO_SECONDS:-600}" $V train $CONFIG "${EXTRA[@]}" $(bg "${GRPO_BG:-8x8}") \
    --set rollout.inner_updates="${INNER:-2}" --set optim.steps="${GRPO_STEPS:-100000}" ${LR:+--set optim.lr=$LR} \
    > runs/grpo.log 2>&1
  ls $R/grpo_v4/*.safetensors
fi
if has eval; then
  stamp eval
  lora=$(ls $R/grpo_v4/viva_small_edit_grpo_v4*.safetensors 2>/dev/null | head -1)
  { eval_lines bundled "--editor $B/diffusers/viva-small-editor"
    [ -n "$lora" ] && eval_lines grpo "--editor $B/diffusers/viva-small-editor --lora $lora"; } > runs/eval_jobs.txt
  xargs -P "${JOBS:-4}" -I{} bash -c {} < runs/eval_jobs.txt
  grep -H "^all " runs/eval/*.log
fi
if has pack; then
  stamp pack
  tar cf pack/results.tar --exclude='*/outputs/*' --exclude='*/checkpoints/*' runs/stamps.log runs/*.log \
    $R/grpo_v4/metrics.jsonl $R/grpo_v4/*.png runs/eval 2>/dev/null
  cp $R/grpo_v4/viva_small_edit_grpo_v4*.safetensors pack/ 2>/dev/null
  ls -la pack
fi
stamp done
