#!/usr/bin/env bash
# The rows of docs/small_models.md section 50: Edit-GRPO gradient agreement of K = 4 rollout batches of the same 4
# records x G 16 (64 rollouts each) on the CPU, the shipped editor and grpo_v6.toml, one row per setting.
# ~9 minutes a CFG-1 row and ~18 a CFG-5 row on 2 cores. DATA: a `viva synth --format npz` train manifest.
#   python -m viva_core.cli synth --out data/small --n 2048 --seed 0 --format npz
#   bash recipes/small/grpo_agreement_cpu.sh [ROW ...]      # default: every row
set -euo pipefail
set -f  # the rows' [a,b,c] settings are words, not globs
cd "$(dirname "$0")/../.."
DATA="${DATA:-data/small/train.jsonl}"
OUT="${OUT:-runs/small/grpo_agreement_cpu}"
declare -A ROWS=(
  [cfg1_shared]='rollout.cfg=1.0 rollout.shared_start=true'
  [cfg1_own]='rollout.cfg=1.0 rollout.shared_start=false'
  [cfg1_block544_shared]='rollout.cfg=1.0 rollout.shared_start=true rollout.noise_block=[5,4,4]'
  [cfg1_block51616_shared]='rollout.cfg=1.0 rollout.shared_start=true rollout.noise_block=[5,16,16]'
  [cfg5_own]='rollout.cfg=5.0 rollout.shared_start=false'
  [cfg5_block544_shared]='rollout.cfg=5.0 rollout.shared_start=true rollout.noise_block=[5,4,4]'
  [cfg5_own_condgrad]='rollout.cfg=5.0 rollout.shared_start=false rollout.uncond_grad=false'
  [cfg1_own_seed1]='rollout.cfg=1.0 seed=1'
  [cfg1_block544_own_seed1]='rollout.cfg=1.0 seed=1 rollout.noise_block=[5,4,4]'
)
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(cfg1_shared cfg1_own cfg1_block544_shared cfg1_block51616_shared cfg5_own
  cfg5_block544_shared cfg5_own_condgrad cfg1_own_seed1 cfg1_block544_own_seed1)
for name in "${names[@]}"; do
  echo "== $name: ${ROWS[$name]}"
  # shellcheck disable=SC2086  # the row's settings are separate words
  PYTHONPATH=. python recipes/small/grpo_agreement.py recipes/small/grpo_v6.toml 4 \
    "data.manifest=$DATA" "output_dir=$OUT/$name" "data.cache_dir=$OUT/cache" model.dtype=fp32 \
    optim.batch_size=4 rollout.group_size=16 log.checkpoint_every=0 ${ROWS[$name]}
done
