#!/usr/bin/env bash
# GPU session v10 (one H200), planned in docs/small_models.md section 30. Phases, in this order (most wanted first):
#   data       the training clips (N, default 60,000) and the benchmark sets (session_lib.sh make_data), the 96 object clips
#   judge_data recipes/small/judge_data.toml: the shipped editor's outputs on 4,096 training clips x 4 seeds, labelled
#              by the verifiers
#   jbench     bench/bench_judge_step.py: collate, forward, train step and the host functions of one judge step
#   judge      the shipped judge continued (`judge.init`) with half of its items drawn from those outputs
#              (JUDGE_SHARE, default 0.5), the rest its usual candidates; JUDGE_STEPS (1200) capped at JUDGE_MINUTES (3.5)
#   jeval      the shipped editor's held-out outputs judged by the shipped judge and by the new one (viva eval --judge:
#              per-question ROC-AUC against the verifiers, 'EA, edits' row), side by side
#   bon        best-of-4 on the held-out set, then on the unseen set: the shipped editor's 4 candidates per clip (stage
#              judge_data on the benchmark manifest, eval's protocol) picked by the shipped judge and by the new one,
#              against seed 0, a random pick and the oracle, and their within-clip pair agreement
#              (recipes/small/best_of_n_check.py)
#   editor     the shipped editor continued as NEW (OLD=v6 NEW=v7 by default), EDITOR_STEPS (4400) capped at
#              EDITOR_MINUTES (5.5); eval: OLD and NEW on both benchmark sets and the object clips, paired tables
#   bench      issue 13 target 4: best-of-4 against one edit at the Lucy-5B shape (one candidate a DiT call, and two)
#   pack       pack/results.tar (logs, metrics, reports) and pack/models.tar.NN (<= 15 MB parts): run after eval and
#              again at the end, so a session cut short during the bench still brings the rest back
#   setsid bash recipes/small/gpu_session_v10.sh > /tmp/v10.log 2>&1 < /dev/null &
# or in the foreground of one device call, a few phases at a time (docs/small_models.md, section 33): with $OUT set,
# each pack is also copied there, so it comes back with the call that made it, and the judge and bon phases pack as
# they end; run it under `timeout` with a minute to spare (docs/small_models.md, section 34).
# Works in $WORK (default /tmp/viva_v10). SMOKE=1: a CPU check of the script (tiny data, 2 steps, CPU evals on 4 clips).
set -uo pipefail
WORK="${WORK:-/tmp/viva_v10}"
PHASES="${PHASES:-data judge_data judge jeval editor eval bench pack}"  # bon: add it (section 31)
OLD="${OLD:-v6}" NEW="${NEW:-v7}"
mkdir -p "$WORK" && cp -r viva_core recipes bench tests "$WORK"/
cd "$WORK" || exit 1
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-8}"
source recipes/small/session_lib.sh  # $V $R $B, stamp, has, steps, make_data, make_objects, eval_line, pack_results
SHIPPED=$B/diffusers/viva-small-editor
JUDGE=$B/vlm/viva-small-judge
# shellcheck disable=SC2206  # EDITOR_SETS: more --set pairs, last, so they override these (e.g. the judge as a frozen
# instructor: EDITOR_SETS="--set editor.instructor=true --set editor.instructor_init=viva_core/small_models/vlm/viva-small-judge
# --set editor.instructor_frozen=true"; docs/small_models.md, section 93)
E=(--set editor.init=$SHIPPED --set editor.vae=$SHIPPED/vae --set data.balance="${BALANCE:-1}"
   --set editor.instructor=false --set optim.compile="${COMPILE:-true}"
   --set optim.lr="${EDITOR_LR:-3e-4}" --set optim.max_minutes="${EDITOR_MINUTES:-5.5}" ${EDITOR_SETS:-})
# NEW's model arguments for viva eval: its editor, and its instructor and refiner where the run trained them
new_model() {
  echo "--editor $R/$NEW/editor"
  [ -f $R/$NEW/refiner.safetensors ] && echo "--instructor $R/$NEW/instructor --refiner $R/$NEW/refiner.safetensors"
}
NEW_PACK=("$NEW/editor" "$NEW/instructor" "$NEW/refiner.safetensors")
# shellcheck disable=SC2206  # JUDGE_DATA_SETS / JUDGE_SETS: more --set pairs (section 31: bf16, 2,048 clips)
JD=(--set judge.editor=$SHIPPED ${JUDGE_DATA_SETS:-})
J=(--set judge.init=$JUDGE --set judge.candidates=target,source,other,blend,flicker,blur,shifted,wrong
   --set judge.ea_unlabelled=other,blend,shifted --set judge.editor_outputs=$R/judge_data/judge_data
   --set judge.editor_share="${JUDGE_SHARE:-0.5}" --set data.limit="${JUDGE_CLIPS:-16000}"
   --set optim.lr="${JUDGE_LR:-3e-4}" --set optim.max_minutes="${JUDGE_MINUTES:-3.5}" ${JUDGE_SETS:-})
BON=(--set judge.editor=$SHIPPED --set data.manifest=data/eval_heldout/heldout.jsonl --set data.limit=0)
if [ "${SMOKE:-0}" = 1 ]; then
  export N=40; E+=(--set optim.batch_size=2 --set optim.workers=0 --set optim.compile=false); EDITOR_STEPS=2
  JD+=(--set data.limit=3 --set judge.sample_steps=2 --set optim.batch_size=2 --set optim.workers=0)
  BON+=(--set judge.sample_steps=2 --set optim.batch_size=2 --set optim.workers=0)
  J+=(--set optim.batch_size=2 --set optim.workers=0); JUDGE_STEPS=2; EVAL_DEVICE=cpu; export EVAL_DEVICE
fi

if has data; then
  stamp data
  N="${N:-60000}" make_data
  make_objects
fi
if has judge_data; then
  stamp judge_data
  $V pretrain recipes/small/judge_data.toml --set output_dir=$R/judge_data "${JD[@]}" > runs/judge_data.log 2>&1
  tail -3 runs/judge_data.log; cat $R/judge_data/judge_data/judge_data_summary.json | tail -30
fi
if has jbench; then  # where a judge step's time goes (docs/small_models.md, section 31), ~1 minute
  stamp jbench
  PYTHONPATH=.:${PYTHONPATH:-} python3 bench/bench_judge_step.py --manifest data/eval_heldout/heldout.jsonl \
    --json runs/bench_judge_step.json > runs/bench_judge_step.log 2>&1
  head -10 runs/bench_judge_step.json
  # judge.host_positions (the default since section 32) off where it did not make the train step at least 5% faster
  # here (same logits either way)
  if ! python3 -c "import json,sys; r=json.load(open('runs/bench_judge_step.json')); \
sys.exit(0 if r['host_positions_train_step_s_median'] < 0.95 * r['train_step_s_median'] else 1)"; then
    J+=(--set judge.host_positions=false); echo "judge.host_positions=false"
  fi
fi
if has judge; then
  stamp judge
  $V pretrain recipes/small/judge.toml --set output_dir=$R/judge "${J[@]}" $(steps "${JUDGE_STEPS:-1200}") \
    > runs/judge.log 2>&1
  grep -h '"steps_done"\|"seconds"\|"accuracy"' $R/judge/judge_summary.json
  # inside a device call: the judge comes back now, whatever happens to the phases after it (docs section 34)
  [ -n "${OUT:-}" ] && has pack && pack_results "${NEW_PACK[@]}" judge/judge
fi
if has jeval; then
  stamp jeval
  {
    eval_line judge_shipped data/eval_heldout/heldout.jsonl "--editor $SHIPPED --judge $JUDGE"
    [ -f $R/judge/judge/viva_judge.json ] && eval_line judge_new data/eval_heldout/heldout.jsonl "--editor $SHIPPED --judge $R/judge/judge"
  } > runs/jeval_jobs.txt
  xargs -P 2 -I{} bash -c {} < runs/jeval_jobs.txt
  grep -H -A8 "judge" runs/eval/judge_*.log | grep -i "EA\|PC\|GN\|GR" | head -20
fi
if has bon; then  # both benchmark sets: held-out combinations, and unseen clips of trained ones (section 44)
  stamp bon
  NEWJ=""; [ -f $R/judge/judge/viva_judge.json ] && NEWJ="new=$R/judge/judge"
  for pair in heldout:data/eval_heldout/heldout.jsonl unseen:data/eval_id/train.jsonl; do
    name=${pair%%:*} manifest=${pair#*:} dir=$R/bon; [ "$name" = heldout ] || dir=$R/bon_$name
    $V pretrain recipes/small/judge_data.toml --set output_dir=$dir "${BON[@]}" --set data.manifest=$manifest \
      > runs/bon_data_$name.log 2>&1
    PYTHONPATH=.:${PYTHONPATH:-} python3 recipes/small/best_of_n_check.py $manifest $dir/judge_data shipped=$JUDGE \
      $NEWJ --json runs/best_of_n_$name.json > runs/best_of_n_$name.log 2>&1
    grep -v Loading runs/best_of_n_$name.log
    if [ -f $R/judge/judge/ground_head.safetensors ]; then  # judge.ground_weight: where it points (section 46)
      PYTHONPATH=.:${PYTHONPATH:-} python3 recipes/small/ground_check.py $manifest $dir/judge_data \
        new=$R/judge/judge --json runs/ground_$name.json > runs/ground_$name.log 2>&1
      grep -v "Loading\|clips, pointing" runs/ground_$name.log
    fi
  done
  [ -n "${OUT:-}" ] && has pack && pack_results "${NEW_PACK[@]}" judge/judge
fi
if has editor; then
  stamp editor
  $V pretrain recipes/small/editor4.toml --set output_dir=$R/$NEW "${E[@]}" $(steps "${EDITOR_STEPS:-4400}") \
    > runs/$NEW.log 2>&1
  grep -h '"steps_done"\|"seconds"' $R/$NEW/editor_summary.json
fi
if has eval; then
  stamp eval
  {
    for set in id:data/eval_id/train.jsonl heldout:data/eval_heldout/heldout.jsonl objects:$OBJECTS; do
      eval_line "${OLD}_${set%%:*}" "${set#*:}" "--editor $SHIPPED"
      [ -d $R/$NEW/editor ] && eval_line "${NEW}_${set%%:*}" "${set#*:}" "$(new_model | tr '\n' ' ')"
    done
  } > runs/eval_jobs.txt
  xargs -P "${JOBS:-6}" -I{} bash -c {} < runs/eval_jobs.txt
  grep -H "^all " runs/eval/*.log
  for set in heldout id objects; do
    python3 recipes/small/table.py --paired "$OLD=runs/eval/${OLD}_$set" "$NEW=runs/eval/${NEW}_$set" 2>&1 | tail -4
  done
fi
has pack && pack_results "${NEW_PACK[@]}" judge/judge
if has bench; then
  stamp bench
  PYTHONPATH=.:${PYTHONPATH:-} python3 bench/bench_edit.py --variants best --best-of 4 --best-of-batch 2 \
    --json runs/bench_best_of_4.json > runs/bench_best_of_4.log 2>&1
  tail -12 runs/bench_best_of_4.log
  has pack && pack_results "${NEW_PACK[@]}" judge/judge
fi
stamp done
