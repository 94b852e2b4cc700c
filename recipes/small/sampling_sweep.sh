#!/usr/bin/env bash
# Sampling-settings sweep of the bundled editor (docs/small_models.md, section 32): does a guidance scale, sigma
# shift or step count other than the defaults (CFG 5, shift 5, as its folder names no scheduler) edit better, with no
# training? The benchmark's eval (seed 0, fp32; 20 steps unless the variant sets them) of each variant in $SWEEP on the
# held-out set and the object clips, JOBS evals at a time, then paired tables against the first variant.
# A variant is <setting><value>, setting one of cfg, shift, steps: "cfg5 cfg3 shift1 steps40".
#   EVAL_DEVICE=cpu SETS=heldout SWEEP="cfg5 cfg3" bash recipes/small/sampling_sweep.sh   # ~11 minutes an eval on 2
#   cores; on the GPU 10 evals at once did not finish in 160 s; SMOKE=1: 4 clips a set
# SETS: which of the two (default both). Works in $WORK (default /tmp/viva_sweep); results in $WORK/runs/eval and, with
# $OUT set, copied there.
set -uo pipefail
WORK="${WORK:-/tmp/viva_sweep}"
SETS="${SETS:-heldout objects}"
SWEEP="${SWEEP:-cfg5 cfg3 cfg7.5 cfg10 shift1 shift3}"  # the first is the paired tables' base
PHASES="data eval"
mkdir -p "$WORK" && cp -r viva_core recipes "$WORK"/
cd "$WORK" || exit 1
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-3}"
source recipes/small/session_lib.sh  # stamp, make_benchmarks, make_objects ($OBJECTS), eval_line
stamp data
make_benchmarks
make_objects
stamp eval
for variant in $SWEEP; do
  setting=${variant%%[0-9]*} value=${variant#"${variant%%[0-9]*}"}
  case $setting in
    cfg | shift | steps) flags="--$setting $value" ;;
    *) echo "unknown sweep variant $variant: use cfg<value>, shift<value> or steps<value>" >&2; exit 2 ;;
  esac
  for set in heldout:data/eval_heldout/heldout.jsonl objects:$OBJECTS; do
    [[ " $SETS " == *" ${set%%:*} "* ]] || continue
    eval_line "${variant}_${set%%:*}" "${set#*:}" "--editor bundled $flags"
  done
done > runs/eval_jobs.txt
xargs -P "${JOBS:-5}" -I{} bash -c {} < runs/eval_jobs.txt
grep -H "^all " runs/eval/*.log
for set in $SETS; do
  cols=()
  for variant in $SWEEP; do cols+=("$variant=runs/eval/${variant}_$set"); done
  python3 recipes/small/table.py --paired "${cols[@]}" 2>&1 | tail -8
done
stamp done
if [ -n "${OUT:-}" ]; then tar cf "$OUT/sampling_sweep.tar" runs/eval runs/stamps.log; fi
