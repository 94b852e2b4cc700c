#!/usr/bin/env bash
# The ablation and post-training runs of one GPU session (one H200, 16 cores), in the background so that
# several 10-minute device calls can watch one pipeline. Run from the repo root; everything lands in runs/small.
#   phase 1 (parallel): the three editor rows at equal steps and seed (text only | + instructor | + edit-mask
#                       loss), and the judge (longer than the first one);
#   phase 2 (parallel, on the + mask-loss editor): Edit-GRPO at two learning rates, and RWO;
#   phase 3: recipes/small/eval_all.sh (every variant on two unseen sets, the judges' agreement).
# Each run's wall time is capped (timeout INT: the trainer saves its LoRA as *_interrupted) and logged.
set -uo pipefail
V="python3 -m viva_core.cli"
EDITOR_SET="optim.max_minutes=${EDITOR_MINUTES:-8} editor.vae=${VAE:-runs/small/vae17/vae}"
RL_SECONDS="${RL_SECONDS:-510}"
mkdir -p runs/small
stamp() { echo "== $* $(date +%T)"; }

stamp data
N="${N:-10000}" WORKERS=14 bash recipes/small/make.sh data
stamp phase1
SET="optim.max_minutes=${JUDGE_MINUTES:-14} optim.workers=6" bash recipes/small/make.sh judge \
  > runs/small/judge.log 2>&1 &
rows=()
for row in editor editor_text editor_instr; do
  SET="$EDITOR_SET" bash recipes/small/make.sh "$row" > "runs/small/$row.log" 2>&1 &
  rows+=($!)
done
wait "${rows[@]}"
stamp phase2
rl() { timeout -k 60 -s INT "$RL_SECONDS" $V train "$@" -v; }
rl recipes/small/grpo.toml > runs/small/grpo.log 2>&1 &
rl recipes/small/grpo.toml --set optim.lr=1e-3 --set output_dir=runs/small/grpo_lr1e-3 > runs/small/grpo_lr1e-3.log 2>&1 &
rl recipes/small/rwo.toml > runs/small/rwo.log 2>&1 &
wait
stamp eval
bash recipes/small/eval_all.sh
stamp done
