# Shared by the GPU session scripts (sourced from the work copy, after `cd "$WORK"`, with PHASES set): the run
# folders, phase helpers, the training and benchmark data, and the benchmark's eval command (eval_all.sh's
# protocol: 20 steps, CFG 5, seed 0, fp32).
V="python3 -m viva_core.cli"
R=runs/small
B=viva_core/small_models
mkdir -p "$R" runs/eval pack
EVAL_SETS="${EVAL_SETS:-heldout id}"  # the benchmark sets eval_lines scores: heldout, id and/or fresh
stamp() { echo "== $* $(date +%T)" | tee -a runs/stamps.log; }
has() { [[ " $PHASES " == *" $1 "* ]]; }
steps() { echo --set "optim.steps=$1" --set "optim.warmup_steps=$(($1 / 10))"; }  # warm-up a tenth of the run

# The 10,000 training clips (seed 0) and the two 96-clip benchmark sets (make_benchmarks), each made once; with
# EVAL_SETS naming "fresh", also the 192-clip held-out set of synth seed 17 (section 63's confirmation set).
make_data() {
  [ -f data/small/train.jsonl ] || $V synth --out data/small --n "${N:-10000}" --seed 0 --format npz --workers 14
  make_benchmarks
}
make_benchmarks() {
  [ -f data/eval_id/train.jsonl ] || $V synth --out data/eval_id --n 96 --seed 8 --format npz --splits 1,0,0 --workers 14
  [ -f data/eval_heldout/heldout.jsonl ] || $V synth --out data/eval_heldout --n 96 --seed 7 --format npz --splits 0,0,1 --workers 14
  if [[ " $EVAL_SETS " == *" fresh "* ]] && [ ! -f data/eval_fresh/heldout.jsonl ]; then
    $V synth --out data/eval_fresh --n "${FRESH_CLIPS:-192}" --seed 17 --format npz --splits 0,0,1 --workers 14
  fi
}

# eval_line NAME MANIFEST "MODEL ARGS": the benchmark's eval command of one model on one set (for xargs -P); later
# args override the protocol's (argparse keeps the last), e.g. "--steps 40".
eval_line() {
  echo "$V eval $2 --report runs/eval/$1 --no-outputs --steps 20 --previews 6 --device ${EVAL_DEVICE:-cuda} \
    --dtype fp32 --vlm-dtype fp32 $3 > runs/eval/$1.log 2>&1"
}

# eval_lines NAME "MODEL ARGS": the eval commands of one variant on each set of EVAL_SETS (default: the two 96-clip
# sets; "fresh" is make_benchmarks' 192-clip one), one line each, for xargs -P.
eval_lines() {
  local set
  for set in $EVAL_SETS; do
    case $set in
      id) eval_line "${1}_id" data/eval_id/train.jsonl "$2" ;;
      heldout) eval_line "${1}_heldout" data/eval_heldout/heldout.jsonl "$2" ;;
      fresh) eval_line "${1}_fresh" data/eval_fresh/heldout.jsonl "$2" ;;
      *) echo "echo 'unknown EVAL_SETS entry $set (id, heldout, fresh)' >&2; exit 2" ;;
    esac
  done
}

# The 96 object-edit clips (recipes/small/object_edits.sh's set: synth seed 11, add/move/resize/replace shape); with
# SMOKE=1 every benchmark set is cut to 4 clips, which keeps the CPU evals of a script check short.
OBJECTS=data/objects/train.jsonl
make_objects() {
  [ -f $OBJECTS ] || $V synth --out data/objects --n "${OBJECT_CLIPS:-96}" --seed 11 --format npz \
    --ops add,move,resize,replace_shape --categories basic --splits 1,0,0 --workers 14
  if [ "${SMOKE:-0}" = 1 ]; then
    for m in data/eval_id/train.jsonl data/eval_heldout/heldout.jsonl data/eval_fresh/heldout.jsonl $OBJECTS; do
      [ -f "$m" ] && head -4 "$m" > "$m.4" && mv "$m.4" "$m"
    done
  fi
}

# pack_results RUN_FOLDER...: pack/results.tar (logs, metrics, summaries, eval reports; no weights, edited videos or
# frame arrays) and the named folders under $R as pack/models.tar.NN, in parts of <= 15 MB (what the device returns).
pack_results() {
  stamp pack
  tar cf pack/results.tar --exclude='*.safetensors' --exclude='*/outputs/*' --exclude='*.npy' runs/stamps.log \
    runs/*.log runs/*.json $R/*/metrics.jsonl $R/*/curves.png $R/*/*summary.json $R/*/*/*summary.json runs/eval \
    2>/dev/null
  rm -f pack/models.tar.*
  # shellcheck disable=SC2046  # the folders that exist, as separate words
  tar cf pack/models.tar --exclude='*/checkpoints/*' -C $R $(cd $R && ls -d "$@" 2>/dev/null) &&
    split -b 15M -d pack/models.tar pack/models.tar. && rm pack/models.tar
  ls -la pack
  # Inside a device call ($OUT set): what is packed comes back with this call, whatever happens to the next one.
  if [ -n "${OUT:-}" ]; then cp pack/* "$OUT"/; fi
}

# pack_on_stop COMMAND [ARG...]: when the session is stopped (`timeout 585 bash gpu_session_*.sh` sends SIGTERM to its
# whole process group, so the running phase's python ends first), run the script's packing command on what exists
# before exiting, so a call that ran out of time still returns its logs and models (docs/small_models.md, section 81:
# a VAE trained for 390 s came back with nothing when its ceilings ran past the call's limit). Exit status 124, as
# timeout's.
pack_on_stop() {
  # shellcheck disable=SC2064  # the command and its arguments are fixed when the trap is set
  trap "echo '== stopped: packing what exists'; $*; exit 124" TERM
}
