#!/usr/bin/env bash
# Issue 10 item 2, frame pairs at judge v5's scale in one device call (docs/small_models.md sections 85-87): the
# shipped editor's bf16 outputs on 2,048 training clips x 4 seeds (gpu_session_v10.sh judge_data), then the shipped
# judge continued JUDGE_STEPS (250) twice from the same seed and draws as v5 was trained (editor share 0.75, rank
# weight 1), with frame pairs and with single frames. Each judge folder and log is copied to $OUT/judge_<arm>; score
# them on the held-out outputs with recipes/small/judge_output_aucs.py (its docstring gives the command). JD_CLIPS: the
# training clips of judge_data (2,048); ARMS: which judges ("pairs single"). A later call on a warm machine reuses the
# outputs judge_data made there (one arm a call when JD_CLIPS=4096 does not leave time for two).
#   timeout 585 bash recipes/small/judge_pairs_gpu.sh
set -uo pipefail
export WORK="${WORK:-/tmp/viva_v10}" N="${N:-16000}" JUDGE_SHARE=0.75 JUDGE_MINUTES="${JUDGE_MINUTES:-3.5}"
export JUDGE_STEPS="${JUDGE_STEPS:-250}"
SESSION=recipes/small/gpu_session_v10.sh
[ -f "$WORK/runs/small/judge_data/judge_data/labels.jsonl" ] ||
  PHASES="data judge_data" JUDGE_DATA_SETS="--set judge.editor_dtype=bf16 --set data.limit=${JD_CLIPS:-2048}" \
  bash $SESSION || exit 1
for arm in ${ARMS:-pairs single}; do
  sets="--set judge.rank_weight=1"; [ "$arm" = pairs ] && sets="$sets --set judge.frame_pairs=true"
  PHASES=judge JUDGE_SETS="$sets" bash $SESSION
  rm -rf "$WORK/runs/small/judge_$arm" && mv "$WORK/runs/small/judge" "$WORK/runs/small/judge_$arm"
  cp "$WORK/runs/judge.log" "$WORK/runs/small/judge_$arm/"
  [ -n "${OUT:-}" ] && cp -r "$WORK/runs/small/judge_$arm" "$OUT/judge_$arm"
done
