#!/usr/bin/env bash
# GPU session v11 (one H200 or H100), planned in docs/small_models.md section 53: unguided Edit-GRPO
# (recipes/small/grpo_v11.toml; NAME=grpo_v12 ... grpo_v16, rwo_v8 runs recipes/small/$NAME.toml, sections 57, 59, 61,
# 63-69) measured, timed and trained, resumable across sessions. Phases (PHASES to pick some), most wanted first:
#   data       N training clips (default 4096, seed 0, with the val split the run validates on) and the benchmark sets
#   agree      recipes/small/grpo_agreement.py: K = 4 rollout batches of 32 records x G 16, unguided (section 51
#              predicts a mean cosine of ~0.4; under 0.2 the grpo phase is skipped unless FORCE=1); AGREE_GUIDED=1
#              adds CFG 5 with the gradient through the conditioned rows only
#   direction  recipes/small/grpo_direction.py: the reward along a step of the summed gradient of 2 batches (1,024
#              rollouts) on 32 unseen records x G 8, at CFG 1 and 5 (section 52 on the CPU, at 256 rollouts)
#   gbench     bench/bench_grpo_step.py --variants batched,cpu_rewards at grpo_v11.toml's settings: the step's
#              time split, the verifiers on the GPU against the CPU's threads
#   jbench     bench/bench_judge_reward.py on a step's layout (32 records x G 16): `Judge.score_batch` on all 512 edits,
#              the trainer's reward calls before (a call per record and judge term) and now (one per decode chunk),
#              and the synchronized time of each part of a call (--breakdown; JBENCH_VARIANTS=score_one_at_a_time,...
#              adds the one-at-a-time judge, section 69); with NAME=rwo_v8, gbench times RWO's step (GBENCH_VARIANTS=per_record,batched: its
#              flow-matching passes one group a DiT call against batched groups); GBENCH_VARIANTS=batched,compiled
#              GBENCH_WARMUP=3: the step with model.compile "blocks" (the warm-up steps compile)
#   tbench     bench/bench_train.py --only forward,grpo at the Wan2.1-1.3B shape (random weights, ~3 minutes): the LoRA's
#              cost per DiT forward in fp32 and bf16, and the Edit-GRPO iteration with the rollouts' LoRA in fp32
#              against bf16 (`rollout.lora_dtype`, issue 13 target 5, section 72); SMOKE: a CPU run at a tiny shape
#   grpo       $NAME.toml for GRPO_SECONDS of training (default 420; GRPO_SETS="k=v ..." adds settings), stopped by
#              optim.max_minutes (the trainer checkpoints the last finished step; SIGINT 90 s later as a backstop);
#              continues (`--resume latest`) an earlier call's run on a warm machine, or a step-N folder put in
#              recipes/small/checkpoints/$NAME beside its metrics.jsonl (from pack/checkpoint.tar.NN and
#              pack/models.tar.NN; leave out the folder's lora.safetensors and curves.png, which resume does not read:
#              the device takes a working tree of 64 MiB at most); or INIT=<LoRA>
#              starts the run from that LoRA with a fresh optimizer (a step folder, 9.5 MB, no longer fits the tree)
#   select     a checkpoint chosen on clips the benchmark does not hold (docs/small_models.md, section 80): the run's
#              step LoRAs (one every log.checkpoint_every steps; GRPO_SETS="log.keep_checkpoints=0" keeps them all)
#              and the shipped editor on SELECT_CLIPS (96) held-out combinations of synth seed 27 at SELECT_CFG (5);
#              the best EA whose PC falls by at most 0.01 (table.py --select) is copied to the run's
#              viva_small_edit_${NAME}_selected.safetensors, the newest LoRA, which eval then scores
#   eval       the shipped editor with and without the LoRA (and the committed grpo_v16 and grpo_v13 LoRAs beside it)
#              on both benchmark sets at the protocol's CFG 5 and at CFG 1; paired tables (recipes/small/table.py
#              --paired), and the LoRAs at CFG 1 against the shipped editor at CFG 5 (section 61); EVAL_CFGS="5"
#              keeps one CFG, EVAL_BESIDE=0 leaves the committed LoRAs out, EVAL_SETS="heldout id fresh" adds the
#              192-clip set of synth seed 17 (made by the data phase when EVAL_SETS names it)
#   pack       pack/results.tar (logs, metrics, reports), pack/models.tar.NN (the LoRA, metrics.jsonl, curves) and
#              pack/checkpoint.tar.NN (the latest checkpoint), <= 15 MB parts; with $OUT set also copied there
# The device allows 10 minutes a call and may go back between calls, so each call runs a few phases and makes its
# own data (docs/small_models.md, section 33), e.g.
#   PHASES="data agree gbench pack"   PHASES="data grpo pack"   PHASES="data direction pack"   PHASES="data eval pack"
# (eval scores this machine's newest LoRA of $NAME in runs/, else the one committed to recipes/small/checkpoints/$NAME).
# Works in $WORK (default /tmp/viva_v11). SMOKE=1: a CPU check of the script (tiny data, 2 records x G 2, CPU evals).
set -uo pipefail
WORK="${WORK:-/tmp/viva_v11}"
PHASES="${PHASES:-data agree gbench grpo eval pack}"
mkdir -p "$WORK" && cp -r viva_core recipes bench "$WORK"/
cd "$WORK" || exit 1
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-8}"
source recipes/small/session_lib.sh  # $V $R $B, stamp, has, make_data, eval_line, pack_results
NAME="${NAME:-grpo_v11}"  # the recipe, recipes/small/$NAME.toml (grpo_v12: section 57)
CONFIG=recipes/small/$NAME.toml
# the LoRA, metrics.jsonl and curves.png as pack/models.tar.NN, and the latest step checkpoint (what the next session
# commits to $CARRIED and continues from) as pack/checkpoint.tar.NN
pack_session() {
  pack_results $NAME
  local latest
  latest=$(ls -d $R/$NAME/checkpoints/step-* 2>/dev/null | tail -1)
  if [ -n "$latest" ]; then
    tar cf pack/checkpoint.tar -C $R/$NAME "checkpoints/$(basename "$latest")"
    split -b 15M -d pack/checkpoint.tar pack/checkpoint.tar. && rm pack/checkpoint.tar
    if [ -n "${OUT:-}" ]; then cp pack/checkpoint.tar.* "$OUT"/; fi
    ls -la pack
  fi
}
has pack && pack_on_stop pack_session  # stopped by the call's timeout: pack what exists
# the committed LoRAs evaluated beside another recipe's: section 67's (CFG 5's best) and section 61's (CFG 1's)
BESIDE=(grpo_v16=recipes/small/checkpoints/grpo_v16/viva_small_edit_grpo_v16.safetensors
  grpo_v13=viva_core/small_models/loras/viva-small-editor-grpo.safetensors)
CARRIED=recipes/small/checkpoints/$NAME  # an earlier session's results: metrics.jsonl, the LoRA, a step-*/ to resume
SHIPPED=$B/diffusers/viva-small-editor
BG=(optim.batch_size=32 rollout.group_size=16)
G=(data.cache_dir=$R/cache)  # every phase's settings: one cache of encoded clips (SMOKE: tiny runs)
JB="--records 32 --group 16"  # jbench: a step's 512 rollouts
if [ "${SMOKE:-0}" = 1 ]; then
  export N=48 EVAL_DEVICE=cpu OBJECT_CLIPS=4 FRESH_CLIPS=4 SELECT_CLIPS=4
  BG=(optim.batch_size=2 rollout.group_size=2)
  JB="--records 2 --group 2 --dtype fp32"
  TBENCH_ARGS="--device cpu --frames 1 --height 32 --width 32 --group 2 --steps 3 --window 1 --rank 4"
  G+=(model.dtype=fp32 rollout.steps=2 rollout.window=1 data.val_limit=2 log.checkpoint_every=1)
  GRPO_SECONDS="${GRPO_SECONDS:-60}" FORCE=1
fi
sets() { for kv in "$@"; do printf -- '--set %s ' "$kv"; done; }

if has data; then
  stamp data
  N="${N:-4096}" make_data
  [ "${SMOKE:-0}" = 1 ] && make_objects  # SMOKE=1: cuts the benchmark sets to 4 clips
fi
if has agree; then
  stamp agree
  PYTHONPATH=.:${PYTHONPATH:-} python3 recipes/small/grpo_agreement.py $CONFIG 4 "${BG[@]}" "${G[@]}" \
    output_dir=$R/agree > runs/agree_cfg1.log 2>&1
  grep -h "^batch\|^K " runs/agree_cfg1.log
  if [ "${AGREE_GUIDED:-0}" = 1 ]; then
    PYTHONPATH=.:${PYTHONPATH:-} python3 recipes/small/grpo_agreement.py $CONFIG 4 "${BG[@]}" "${G[@]}" \
      rollout.cfg=5.0 rollout.uncond_grad=false output_dir=$R/agree5 > runs/agree_cfg5_condgrad.log 2>&1
    grep -h "^K " runs/agree_cfg5_condgrad.log
  fi
fi
if has direction; then
  stamp direction
  PYTHONPATH=.:${PYTHONPATH:-} python3 recipes/small/grpo_direction.py $CONFIG 2 --alphas 1,4,16 --eval-cfg 5 \
    --eval-group 8 "${BG[@]}" "${G[@]}" output_dir=$R/direction > runs/direction.log 2>&1
  grep -v "Loading\|Warn" runs/direction.log | tail -16
fi
if has gbench; then
  stamp gbench
  # shellcheck disable=SC2046  # the --set pairs, as separate words
  PYTHONPATH=.:${PYTHONPATH:-} python3 bench/bench_grpo_step.py --data data/small/train.jsonl --config $CONFIG \
    --variants "${GBENCH_VARIANTS:-batched,cpu_rewards}" --warmup "${GBENCH_WARMUP:-1}" $(sets "${BG[@]}" "${G[@]}") \
    --json runs/bench_grpo_step.json \
    > runs/bench_grpo_step.log 2>&1
  tail -12 runs/bench_grpo_step.log
fi
if has jbench; then
  stamp jbench
  # shellcheck disable=SC2086  # JB: the options, as separate words
  PYTHONPATH=.:${PYTHONPATH:-} python3 bench/bench_judge_reward.py $JB --breakdown \
    --variants "${JBENCH_VARIANTS:-score_batch,per_record_and_term,trainer_layout}" --json runs/bench_judge_reward.json \
    > runs/bench_judge_reward.log 2>&1
  grep -v Loading runs/bench_judge_reward.log | tail -32
fi
if has tbench; then
  stamp tbench
  # shellcheck disable=SC2086  # TBENCH_ARGS: the options, as separate words
  PYTHONPATH=.:${PYTHONPATH:-} python3 bench/bench_train.py --only forward,grpo --repeats 2 ${TBENCH_ARGS:-} \
    --json runs/bench_train.json > runs/bench_train.log 2>&1
  tail -40 runs/bench_train.log
fi
if has grpo; then
  cosine=$(sed -n 's/.*pairwise cosine mean \([-0-9.]*\).*/\1/p' runs/agree_cfg1.log 2>/dev/null)
  carried_step=$(ls -d $CARRIED/step-* 2>/dev/null | tail -1)
  if [ "${FORCE:-0}" = 1 ] || [ -n "$carried_step" ] || awk -v c="${cosine:-0}" 'BEGIN { exit !(c + 0 >= 0.2) }'; then
    start=()
    if [ -d $R/$NAME/checkpoints ]; then  # an earlier call on this machine (a warm one keeps $WORK)
      start=(--resume latest)
    elif [ -n "$carried_step" ]; then  # continue the committed run
      mkdir -p $R/$NAME/checkpoints && cp -r "$carried_step" $R/$NAME/checkpoints/ && cp $CARRIED/metrics.jsonl $R/$NAME/
      start=(--resume latest)
    elif [ -n "${INIT:-}" ]; then  # start from a committed LoRA with a fresh optimizer (section 63)
      start=(--set "lora.init_from=$INIT")
    fi
    stamp "grpo ${start[*]:-from the start} (agreement ${cosine:-not measured})"
    # shellcheck disable=SC2046  # the --set pairs, as separate words
    # shellcheck disable=SC2086  # GRPO_SETS: extra key=value settings, as separate words (model.compile=blocks)
    # the trainer stops itself after GRPO_SECONDS of its loop (optim.max_minutes, saving as Ctrl-C does); SIGINT 90 s
    # later is the backstop: a compiled run on an H100 died at SIGINT without saving (docs/small_models.md section 83)
    secs="${GRPO_SECONDS:-420}"
    timeout -s INT $((secs + 90)) $V train $CONFIG "${start[@]}" $(sets "${BG[@]}" "${G[@]}" ${GRPO_SETS:-}) \
      --set optim.max_minutes="$(awk -v s="$secs" 'BEGIN { print s / 60 }')" > runs/grpo.log 2>&1
    grep -h '"val_reward"' $R/$NAME/metrics.jsonl | cut -c1-200
    tail -2 runs/grpo.log
  else
    stamp "grpo skipped: the unguided agreement ${cosine:-(not measured)} is under 0.2 (FORCE=1 runs it)"
  fi
fi
if has select; then
  stamp select
  SEL=data/eval_select/heldout.jsonl
  [ -f $SEL ] || $V synth --out data/eval_select --n "${SELECT_CLIPS:-96}" --seed 27 --format npz --splits 0,0,1 \
    --workers 14 > runs/select_data.log 2>&1
  {
    eval_line shipped_select $SEL "--editor $SHIPPED --cfg ${SELECT_CFG:-5}"
    for d in $R/$NAME/checkpoints/step-*; do
      [ -f "$d/lora.safetensors" ] &&
        eval_line "select_${d##*/}" $SEL "--editor $SHIPPED --lora $d/lora.safetensors --cfg ${SELECT_CFG:-5}"
    done
  } > runs/select_jobs.txt
  xargs -P "${JOBS:-8}" -I{} bash -c {} < runs/select_jobs.txt
  labels=(shipped=runs/eval/shipped_select)
  for r in runs/eval/select_step-*; do [ -d "$r" ] && labels+=("${r##*/select_}=$r"); done
  choice=$(python3 recipes/small/table.py --select "${labels[@]}" 2>&1)
  echo "$choice"
  best=$(sed -n 's/^selected: //p' <<< "$choice")
  if [ -n "$best" ] && [ "$best" != none ]; then
    cp "$R/$NAME/checkpoints/$best/lora.safetensors" "$R/$NAME/viva_small_edit_${NAME}_selected.safetensors"
    stamp "selected $best"
  fi
fi
if has eval; then
  # this machine's run first, its newest LoRA (`ls` of both folders sorted recipes/ before runs/: section 67)
  lora=$(ls -t $R/$NAME/viva_small_edit_$NAME*.safetensors 2>/dev/null | head -1)
  [ -n "$lora" ] || lora=$(ls $CARRIED/viva_small_edit_$NAME*.safetensors 2>/dev/null | head -1)
  if [ -n "$lora" ]; then
    stamp "eval $lora"
    others=()  # name=LoRA of the committed LoRAs of other recipes, evaluated beside this one
    if [ "${EVAL_BESIDE:-1}" = 1 ]; then
      for kv in "${BESIDE[@]}"; do
        [ "${kv%%=*}" != "$NAME" ] && [ -f "${kv#*=}" ] && others+=("$kv")
      done
    fi
    cfgs="${EVAL_CFGS:-5 1}"
    {
      for cfg in $cfgs; do
        eval_lines "shipped_cfg$cfg" "--editor $SHIPPED --cfg $cfg"
        eval_lines "${NAME}_cfg$cfg" "--editor $SHIPPED --lora $lora --cfg $cfg"
        for kv in "${others[@]}"; do
          eval_lines "${kv%%=*}_cfg$cfg" "--editor $SHIPPED --lora ${kv#*=} --cfg $cfg"
        done
      done
    } > runs/eval_jobs.txt
    xargs -P "${JOBS:-8}" -I{} bash -c {} < runs/eval_jobs.txt
    grep -H "^all " runs/eval/*.log
    for set in $EVAL_SETS; do  # each at the guidance it is meant for (CFG 1: section 61)
      for cfg in $cfgs; do
        echo "CFG $cfg, $set:"
        beside=()
        for kv in "${others[@]}"; do beside+=("${kv%%=*}=runs/eval/${kv%%=*}_cfg${cfg}_$set"); done
        python3 recipes/small/table.py --paired "shipped=runs/eval/shipped_cfg${cfg}_$set" \
          "$NAME=runs/eval/${NAME}_cfg${cfg}_$set" "${beside[@]}" 2>&1 | grep "^|"  # the paired and drift tables
      done
      [[ " $cfgs " == *" 1 "* && " $cfgs " == *" 5 "* ]] || continue
      echo "LoRAs at CFG 1 against the shipped editor at CFG 5, $set:"
      beside=()
      for kv in "${others[@]}"; do beside+=("${kv%%=*}_cfg1=runs/eval/${kv%%=*}_cfg1_$set"); done
      python3 recipes/small/table.py --paired "shipped_cfg5=runs/eval/shipped_cfg5_$set" \
        "${NAME}_cfg1=runs/eval/${NAME}_cfg1_$set" "${beside[@]}" 2>&1 | grep "^|"
    done
  else
    stamp "eval skipped: no $NAME LoRA"
  fi
fi
has pack && pack_session
stamp done
