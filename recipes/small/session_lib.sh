# Shared by the GPU session scripts (sourced from the work copy, after `cd "$WORK"`, with PHASES set): the run
# folders, phase helpers, the training and benchmark data, and the benchmark's eval command (eval_all.sh's
# protocol: 20 steps, CFG 5, seed 0, fp32).
V="python3 -m viva_core.cli"
R=runs/small
B=viva_core/small_models
mkdir -p "$R" runs/eval pack
stamp() { echo "== $* $(date +%T)" | tee -a runs/stamps.log; }
has() { [[ " $PHASES " == *" $1 "* ]]; }
steps() { echo --set "optim.steps=$1" --set "optim.warmup_steps=$(($1 / 10))"; }  # warm-up a tenth of the run

# The 10,000 training clips (seed 0) and the two 96-clip benchmark sets, each made once.
make_data() {
  [ -f data/small/train.jsonl ] || $V synth --out data/small --n "${N:-10000}" --seed 0 --format npz --workers 14
  [ -f data/eval_id/train.jsonl ] || $V synth --out data/eval_id --n 96 --seed 8 --format npz --splits 1,0,0 --workers 14
  [ -f data/eval_heldout/heldout.jsonl ] || $V synth --out data/eval_heldout --n 96 --seed 7 --format npz --splits 0,0,1 --workers 14
}

# eval_lines NAME "MODEL ARGS": the eval commands of one variant on both sets (one line each, for xargs -P).
eval_lines() {
  local name=$1 args=$2 set m
  for set in id heldout; do
    m=data/eval_id/train.jsonl; [ "$set" = heldout ] && m=data/eval_heldout/heldout.jsonl
    echo "$V eval $m $args --report runs/eval/${name}_$set --no-outputs --steps 20 --previews 6 \
      --device ${EVAL_DEVICE:-cuda} --dtype fp32 --vlm-dtype fp32 > runs/eval/${name}_$set.log 2>&1"
  done
}
