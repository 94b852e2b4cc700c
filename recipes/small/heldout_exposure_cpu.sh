#!/usr/bin/env bash
# Is the editor's failure on a held-out triple a missing ability or a missing exposure? (docs/small_models.md,
# section 97; CPU, ~45 minutes on 2 cores.) The shipped editor continued 150 steps of 8 clips (lr 3e-4, uniform over
# the manifest) on 3,000 training clips (control), and on the same plus 1,000 clips carrying the held-out triple
# "move, attribute, top" (exposed); then the shipped editor and both arms on the held-out benchmark (synth seed 7, the
# benchmark's protocol on the CPU), split by held-out triple. A diagnostic, not a benchmark row: the exposed arm has
# seen one of the benchmark's held-out triples. Run from the repository root; work in $W. Smaller for a smoke run:
# N_TRAIN=16 N_TOP=8 STEPS=2 LIMIT=2.
set -euo pipefail
W="${W:-/tmp/heldout_exposure}" N_TRAIN="${N_TRAIN:-3000}" N_TOP="${N_TOP:-1000}" STEPS="${STEPS:-150}"
mkdir -p "$W"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1  # two single-threaded jobs at a time on 2 cores
V="python -m viva_core.cli"
B=viva_core/small_models/diffusers/viva-small-editor
[ -f "$W/train/train.jsonl" ] || $V synth --out "$W/train" --n "$N_TRAIN" --seed 5 --format npz --splits 1,0,0 --workers 1
[ -f "$W/bench/heldout.jsonl" ] || $V synth --out "$W/bench" --n 96 --seed 7 --format npz --splits 0,0,1 --workers 1
# The exposure clips: a heldout split whose only held-out triple is "move to the top" (every clip carries it), then the
# two arms' manifests with absolute paths.
python - "$W" "$N_TOP" <<'PY'
import json, sys
from pathlib import Path
from viva_core.synth import generate
w, n = Path(sys.argv[1]), int(sys.argv[2])
if not (w / "top" / "heldout.jsonl").is_file():
    generate(w / "top", n=n, seed=31, format="npz", splits=(0, 0, 1), categories=("basic", "hybrid"),
             heldout=[("move", "attribute", "top")], workers=1)
def rows(folder, name):
    for line in (w / folder / name).read_text().splitlines():
        r = json.loads(line)
        r["npz"] = str(w / folder / r["npz"])
        yield json.dumps(r) + "\n"
(w / "control.jsonl").write_text("".join(rows("train", "train.jsonl")))
(w / "exposed.jsonl").write_text("".join(rows("train", "train.jsonl")) + "".join(rows("top", "heldout.jsonl")))
PY
arm() {
  $V pretrain recipes/small/editor4.toml --set output_dir="$W/$1" --set data.manifest="$W/$1.jsonl" \
    --set editor.init=$B --set editor.vae=$B/vae --set editor.instructor=false --set data.balance=0 \
    --set optim.batch_size=8 --set optim.lr=3e-4 --set optim.steps="$STEPS" --set optim.warmup_steps=10 \
    --set optim.max_minutes=30 --set optim.workers=0 --set optim.compile=false --set device=cpu --set seed=0 \
    > "$W/$1.log" 2>&1
}
score() {
  $V eval "$W/bench/heldout.jsonl" --editor "$2" --report "$W/eval_$1" --no-outputs --steps 20 --previews 0 \
    --device cpu --dtype fp32 --vlm-dtype fp32 ${LIMIT:+--limit $LIMIT} > "$W/eval_$1.log" 2>&1
}
arm control & arm exposed & wait
score shipped $B & score control "$W/control/editor" & wait
score exposed "$W/exposed/editor"
PYTHONPATH=. python recipes/small/table.py --by-heldout "$W/bench/heldout.jsonl" "shipped=$W/eval_shipped" \
  "control=$W/eval_control" "exposed=$W/eval_exposed"
python recipes/small/table.py --paired "control=$W/eval_control" "exposed=$W/eval_exposed"
