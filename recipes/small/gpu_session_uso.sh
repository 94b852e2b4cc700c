#!/usr/bin/env bash
# GPU session (one H200): ReViSE's self-reflection loss (`sft.uso_weight`) against plain SFT of the same LoRA on the
# shipped editor, each arm with the same data, seed and steps (docs/small_models.md, sections 42-43).
#   PHASES (default "data train eval pack"), in $WORK (default /tmp/viva_uso):
#   train  the arms of ARMS (NAME:key=value;key=value ...; default plain SFT, the loss at 0.1 on EA, and at 0.1 on
#          EA and PC) side by side on the GPU, TRAIN_SECONDS each (default 300; SIGINT at the end writes
#          <name>_interrupted.safetensors), recipes/small/uso.toml with TRAIN_SETS (extra --set KEY=VALUE words) for all
#   eval   the bundled editor with each LoRA, and without, on both benchmark sets (GPU, fp32), the bundled judge scoring
#          the outputs too: did the loss raise the judge's verdict on held-out edits, and did the verifiers follow?
#   pack   logs, metrics, eval reports and the LoRAs to pack/ (and $OUT inside a device call)
# SMOKE=1: a CPU check of the script (40 clips, 2 steps of batch 2, 4-clip evals).
set -uo pipefail
WORK="${WORK:-/tmp/viva_uso}"
PHASES="${PHASES:-data train eval pack}"
mkdir -p "$WORK" && cp -r viva_core recipes bench "$WORK"/
cd "$WORK" || exit 1
source recipes/small/session_lib.sh  # $V $R $B, stamp, has, make_data, eval_lines, pack_results
ARMS="${ARMS:-sft:sft.uso_weight=0 ea:sft.uso_weight=0.1 eapc:sft.uso_weight=0.1;sft.uso_questions=[\"EA\",\"PC\"]}"
TRAIN_SETS="${TRAIN_SETS:-}"
if [ "${SMOKE:-0}" = 1 ]; then
  export N=40 EVAL_DEVICE=cpu
  TRAIN_SETS="optim.steps=2 optim.batch_size=2 model.dtype=fp32 model.device=cpu $TRAIN_SETS"
fi

if has data; then
  stamp data
  make_data
  if [ "${SMOKE:-0}" = 1 ]; then
    for m in data/eval_id/train.jsonl data/eval_heldout/heldout.jsonl; do head -4 "$m" > "$m.4" && mv "$m.4" "$m"; done
  fi
fi
if has train; then
  for arm in $ARMS; do
    name=${arm%%:*}; extra=()
    for kv in $(echo "${arm#*:}" | tr ';' ' ') $TRAIN_SETS; do extra+=(--set "$kv"); done
    stamp "train $name ${arm#*:}"
    timeout -s INT "${TRAIN_SECONDS:-300}" $V train recipes/small/uso.toml --set output_dir=$R/uso_$name --set data.cache_dir=runs/cache \
      --set output_name=viva_small_edit_uso_$name "${extra[@]}" > runs/train_$name.log 2>&1 &
  done
  wait
  ls $R/uso_*/*.safetensors
fi
if has eval; then
  stamp eval
  { eval_lines bundled "--editor $B/diffusers/viva-small-editor --judge bundled"
    for arm in $ARMS; do
      name=${arm%%:*}
      lora=$(ls $R/uso_$name/viva_small_edit_uso_$name*.safetensors 2>/dev/null | head -1)
      [ -n "$lora" ] && eval_lines "uso_$name" "--editor $B/diffusers/viva-small-editor --lora $lora --judge bundled"
    done; } > runs/eval_jobs.txt
  xargs -P "${JOBS:-4}" -I{} bash -c {} < runs/eval_jobs.txt
  grep -H "^all " runs/eval/*.log
fi
if has pack; then
  pack_results $(cd $R && ls -d uso_* 2>/dev/null)
fi
stamp done
