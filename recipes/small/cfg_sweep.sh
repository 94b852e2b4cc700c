#!/usr/bin/env bash
# Guidance sweep of the bundled editor (docs/small_models.md, section 32): does another CFG scale than the shipped 5
# edit better, with no training? The benchmark's eval (20 steps, seed 0, fp32) at each CFG in $CFGS on the held-out
# set and the object clips, JOBS evals at a time, then paired tables against the first (CFG 5) (recipes/small/table.py).
#   bash recipes/small/cfg_sweep.sh   # GPU (10 evals at once did not finish in 160 s); CPU (EVAL_DEVICE=cpu):
#                                     # ~11 minutes an eval on 2 cores; SMOKE=1: 4 clips a set
# SETS: which of the two (default both). Works in $WORK (default /tmp/viva_cfg); results in $WORK/runs/eval and, with
# $OUT set, copied there.
set -uo pipefail
WORK="${WORK:-/tmp/viva_cfg}"
SETS="${SETS:-heldout objects}"
CFGS="${CFGS:-5 3 7.5 10 15}"  # the first is the paired tables' base
PHASES="data eval"
mkdir -p "$WORK" && cp -r viva_core recipes "$WORK"/
cd "$WORK" || exit 1
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-3}"
source recipes/small/session_lib.sh  # $V, stamp, make_benchmarks, make_objects ($OBJECTS)
stamp data
make_benchmarks
make_objects
stamp eval
for cfg in $CFGS; do
  for set in heldout:data/eval_heldout/heldout.jsonl objects:$OBJECTS; do
    [[ " $SETS " == *" ${set%%:*} "* ]] || continue
    echo "$V eval ${set#*:} --editor bundled --report runs/eval/cfg${cfg}_${set%%:*} --no-outputs --steps 20 \
      --cfg $cfg --device ${EVAL_DEVICE:-cuda} --dtype fp32 > runs/eval/cfg${cfg}_${set%%:*}.log 2>&1"
  done
done > runs/eval_jobs.txt
xargs -P "${JOBS:-5}" -I{} bash -c {} < runs/eval_jobs.txt
grep -H "^all " runs/eval/*.log
for set in $SETS; do
  cols=()
  for cfg in $CFGS; do cols+=("cfg$cfg=runs/eval/cfg${cfg}_$set"); done
  python3 recipes/small/table.py --paired "${cols[@]}" 2>&1 | tail -8
done
stamp done
[ -n "${OUT:-}" ] && tar cf "$OUT/cfg_sweep.tar" runs/eval runs/stamps.log
