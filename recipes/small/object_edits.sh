#!/usr/bin/env bash
# Object edits on combinations the editors were trained on (docs/small_models.md, section 25): 96 basic clips of
# add, move, resize and replace shape (`viva synth --seed 11`, train split, so no held-out (operation, value) triple
# such as "move ... to the top"), scored for two editor folders and for the VAE's ceiling, on the CPU (fp32, 20 steps,
# CFG 5, seed 0: eval_all.sh's protocol). ~15 minutes per editor on 2 cores.
#   bash recipes/small/object_edits.sh OLD_EDITOR NEW_EDITOR [OUT]
set -euo pipefail
old=$1 new=$2 out=${3:-/tmp/object_edits}
V="python -m viva_core.cli"
$V synth --out "$out/data" --n 96 --seed 11 --format npz --ops add,move,resize,replace_shape --categories basic \
  --splits 1,0,0 --workers 2
for pair in "old=$old" "new=$new"; do
  $V eval "$out/data/train.jsonl" --editor "${pair#*=}" --report "$out/${pair%%=*}" --no-outputs --steps 20 \
    --device cpu --dtype fp32
done
$V eval "$out/data/train.jsonl" --editor "$new" --ceiling --report "$out/ceiling" --no-outputs --device cpu --dtype fp32
python recipes/small/table.py --by-operation "old=$out/old" "new=$out/new" "ceiling=$out/ceiling"
python recipes/small/table.py --paired "old=$out/old" "new=$out/new"
