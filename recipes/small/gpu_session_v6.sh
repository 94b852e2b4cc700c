#!/usr/bin/env bash
# GPU session v6 (one H200): do the policy gradients of long early SDE steps agree at 512 rollouts, as the CPU sweep
# predicts (docs/small_models.md, sections 14-15)? Then GRPO with the setting that agrees best, only if one does.
#   setsid bash recipes/small/gpu_session_v6.sh > /tmp/v6.log 2>&1 < /dev/null &
# CONFIG (default recipes/small/grpo_v4.toml): the GRPO recipe measured and trained (grpo_v6.toml: section 39).
# Phases (PHASES to pick some): data agree grpo eval pack. Works in $WORK (default /tmp/viva_v6).
#   agree  recipes/small/grpo_agreement.py, K = 3 rollout batches of the same AGREE_BG (default 32x16) records x
#          group, for each named setting in AGREE_SETS (name:key=value,key=value ...; default: 6 steps /
#          window 2, 4 steps / window 2, and RWO's reward-decided part with advantage weights at CFG 1)
#   grpo   if the best ratio ||mean g|| / mean ||g|| reaches MIN_RATIO (default 0.62; noise is 0.577), that setting
#          trained for GRPO_SECONDS (default 480) at GRPO_BG (default 16x16) with INNER inner updates (default 4)
#          and LR (default 1e-3), SIGINT at the end (the trainer writes <name>_interrupted.safetensors)
#   eval   the bundled editor with and without the LoRA on both benchmark sets (GPU, fp32; the LoRA's rows named
#          after the config)
# The grpo phase trains whatever method CONFIG names (recipes/small/rwo_v6.toml: RWO).
# SMOKE=1: a CPU check of the script (2 records x G 2, 2 SDE steps, one setting, 2 GRPO steps).
set -uo pipefail
WORK="${WORK:-/tmp/viva_v6}"
PHASES="${PHASES:-data agree grpo eval pack}"
mkdir -p "$WORK" && cp -r viva_core recipes bench "$WORK"/
cd "$WORK" || exit 1
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-8}"
source recipes/small/session_lib.sh  # $V $R $B, stamp, has, steps, make_data, eval_lines
CONFIG="${CONFIG:-recipes/small/grpo_v4.toml}"  # grpo_v6.toml: the shipped editor, EA and PC as separate terms
NAME=$(basename "$CONFIG" .toml)  # the config's output_dir is runs/small/$NAME, its LoRA viva_small_edit_$NAME
AGREE_SETS="${AGREE_SETS:-s6w2:rollout.steps=6,rollout.window=2 s4w2:rollout.steps=4,rollout.window=2 \
rwo_adv:method=rwo,rollout.rwo_mode=advantage,rollout.cfg=1,rollout.steps=6,rollout.window=2}"
AGREE_BG="${AGREE_BG:-32x16}"
if [ "${SMOKE:-0}" = 1 ]; then
  AGREE_SETS="s2w1:rollout.steps=2,rollout.window=1,model.dtype=fp32"; AGREE_BG=2x2; GRPO_BG=2x2; GRPO_STEPS=2
  export N=40 EVAL_DEVICE=cpu
  MIN_RATIO=0
fi
bg() { echo "optim.batch_size=${1%x*} rollout.group_size=${1#*x}"; }

if has data; then
  stamp data
  make_data
fi
if has agree; then
  stamp agree
  : > runs/agree_ratios.txt
  for named in $AGREE_SETS; do
    name=${named%%:*}; sets=$(echo "${named#*:}" | tr ',' ' ')
    stamp "agree $name"
    timeout "${AGREE_SECONDS:-300}" env PYTHONPATH=.:${PYTHONPATH:-} python3 recipes/small/grpo_agreement.py $CONFIG 3 \
      $(bg "$AGREE_BG") $sets > runs/agree_$name.log 2>&1
    grep -h "^batch\|^K " runs/agree_$name.log
    ratio=$(sed -n 's/.*mean ||g|| = \([0-9.]*\).*/\1/p' runs/agree_$name.log)
    echo "$name ${ratio:-0} ${named#*:}" >> runs/agree_ratios.txt
  done
  sort -k2 -r -n runs/agree_ratios.txt
fi
if has grpo; then
  best=$(sort -k2 -r -n runs/agree_ratios.txt 2>/dev/null | head -1)  # none without the agree phase: MIN_RATIO=0 trains
  if awk -v r="$(echo "$best" | cut -d' ' -f2)" -v m="${MIN_RATIO:-0.62}" 'BEGIN { exit !(r + 0 >= m + 0) }'; then
    stamp "grpo $best"
    extra=(); for kv in $(echo "$best" | cut -d' ' -f3 | tr ',' ' ') $(bg "${GRPO_BG:-16x16}"); do extra+=(--set "$kv"); done
    timeout -s INT "${GRPO_SECONDS:-480}" $V train $CONFIG "${extra[@]}" --set rollout.inner_updates="${INNER:-4}" \
      --set optim.steps="${GRPO_STEPS:-100000}" --set optim.lr="${LR:-1e-3}" > runs/grpo.log 2>&1
    ls $R/$NAME/*.safetensors
  else
    stamp "grpo skipped: best agreement $best is below ${MIN_RATIO:-0.62}"
  fi
fi
if has eval; then
  lora=$(ls $R/$NAME/viva_small_edit_$NAME*.safetensors 2>/dev/null | head -1)
  if [ -n "$lora" ]; then
    stamp eval
    { eval_lines bundled "--editor $B/diffusers/viva-small-editor"
      eval_lines "$NAME" "--editor $B/diffusers/viva-small-editor --lora $lora"; } > runs/eval_jobs.txt
    xargs -P "${JOBS:-4}" -I{} bash -c {} < runs/eval_jobs.txt
    grep -H "^all " runs/eval/*.log
  fi
fi
if has pack; then
  stamp pack
  tar cf pack/results.tar --exclude='*/outputs/*' --exclude='*/checkpoints/*' runs/stamps.log runs/*.log \
    runs/agree_ratios.txt $R/$NAME/metrics.jsonl $R/$NAME/*.png runs/eval 2>/dev/null
  cp $R/$NAME/viva_small_edit_$NAME*.safetensors pack/ 2>/dev/null
  ls -la pack
fi
stamp done
