#!/usr/bin/env bash
# How the bundled small models were made (one GPU; each phase fits a 10-minute job). Run from the repo root:
#   bash recipes/small/make.sh data vae vae_long   # the VAE: 5-frame windows, then whole 17-frame clips
#   python recipes/small/preview_factors.py --vae-folder RUN/vae --write   # its latent preview factors (CPU)
#   bash recipes/small/make.sh judge               # the judge (at chance so far; see README)
#   bash recipes/small/gpu_session.sh              # the shipped editor, the ablation rows, Edit-GRPO and RWO
#   bash recipes/small/eval_all.sh                 # the README's benchmark table (then recipes/small/table.py)
# Optional: N (clips, default 10000), WORKERS, SET / TSET (extra --set overrides for pretrain / train stages).
set -euo pipefail
V="python3 -m viva_core.cli"
N="${N:-10000}"
read -r -a EXTRA <<< "${SET:-}"
sets() { for s in "${EXTRA[@]}"; do printf -- '--set\n%s\n' "$s"; done; }
run_pretrain() { mapfile -t extra < <(sets); $V pretrain "$@" "${extra[@]}" -v; }
for phase in "$@"; do
  echo "== $phase $(date +%T)"
  case "$phase" in
    data) [ -f data/small/train.jsonl ] || $V synth --out data/small --n "$N" --seed 0 --format npz --workers "${WORKERS:-14}" ;;
    data_mp4) [ -f data/small_mp4/train.jsonl ] || $V synth --out data/small_mp4 --n 600 --seed 1 --format mp4 \
                --splits 1,0,0 --workers "${WORKERS:-14}" ;;
    vae) run_pretrain recipes/small/vae.toml ;;
    vae_long) run_pretrain recipes/small/vae_long.toml ;;
    judge) run_pretrain recipes/small/judge.toml ;;
    editor) run_pretrain recipes/small/editor.toml ;;
    editor_text) run_pretrain recipes/small/editor.toml --set output_dir=runs/small/editor_text \
                   --set editor.instructor=false --set editor.mask_weight=0 ;;
    editor_instr) run_pretrain recipes/small/editor.toml --set output_dir=runs/small/editor_instr \
                    --set editor.mask_weight=0 ;;
    grpo|rwo) mapfile -t extra < <(for s in ${TSET:-}; do printf -- '--set\n%s\n' "$s"; done)
              $V train "recipes/small/$phase.toml" "${extra[@]}" -v ;;
    *) echo "unknown phase $phase"; exit 2 ;;
  esac
done
echo "== done $(date +%T)"
