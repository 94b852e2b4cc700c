#!/usr/bin/env bash
# Is flow matching on the editor's own samples neutral? RWO with weights that average 1 is that plus a reward-decided
# part, and on the H200 it taught the shipped editor to edit less (docs/small_models.md, section 40). Here the
# reward-decided part is switched off (softmax weights at temperature 1e6: all ~1), so the LoRA learns only from the
# editor's own samples, rolled out and regressed guided at CFG 5 (c5) or unguided (c1): 20 steps of 4 records x G 4,
# 10-step rollouts, lr 5e-4. Both are scored at the benchmark's CFG 5 on 24 held-out clips beside the shipped editor.
# CPU, ~45 minutes on 2 cores:
#   PYTHONPATH=. bash recipes/small/self_fm_drift.sh [WORK]   (WORK defaults to /tmp/drift)
set -euo pipefail
WORK="${1:-/tmp/drift}"
V="python3 -m viva_core.cli"
E=viva_core/small_models/diffusers/viva-small-editor
mkdir -p "$WORK"
[ -f "$WORK/train/train.jsonl" ] || $V synth --out "$WORK/train" --n 400 --seed 0 --format npz
[ -f "$WORK/heldout/held24.jsonl" ] || { $V synth --out "$WORK/heldout" --n 96 --seed 7 --format npz --splits 0,0,1 &&
  head -24 "$WORK/heldout/heldout.jsonl" > "$WORK/heldout/held24.jsonl"; }
for c in 5 1; do
  cat > "$WORK/self_c$c.toml" <<TOML
method = "rwo"
output_dir = "$WORK/c$c"
output_name = "self_c$c"
[model]
editor = "$E"
dtype = "fp32"
device = "cpu"
[data]
manifest = "$WORK/train/train.jsonl"
[lora]
rank = 16
alpha = 16.0
targets = "attn"
[optim]
steps = 20
lr = 5e-4
batch_size = 4
[rollout]
group_size = 4
steps = 10
cfg = $c.0
window = 2
rwo_mode = "softmax"
rwo_temperature = 1e6
rwo_draws = 2
[rewards]
weights = { "verifier:EA" = 1.0, "verifier:PC" = 0.25 }
[log]
checkpoint_every = 0
tensorboard = false
TOML
  $V train "$WORK/self_c$c.toml" > "$WORK/train_c$c.log" 2>&1
done
for v in base c5 c1; do
  lora=(); [ $v = base ] || lora=(--lora "$WORK/$v/self_$v.safetensors")
  $V eval "$WORK/heldout/held24.jsonl" --editor $E --report "$WORK/ev_$v" --no-outputs --steps 20 --device cpu \
    --dtype fp32 "${lora[@]}" > "$WORK/ev_$v.log" 2>&1
done
python3 recipes/small/table.py --paired "base=$WORK/ev_base" "c5=$WORK/ev_c5" "c1=$WORK/ev_c1"
