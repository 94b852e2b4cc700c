# Shared by the CPU judge trials (sourced from the repository root, with WORK and CLIPS set): the CLI, the bundled
# models, the training clips (synth seed 0) and the benchmark's 96 held-out clips (seed 7), and the bundled editor's
# outputs on the first CLIPS training clips x 4 seeds (stage judge_data, eval's protocol), each made once.
V="python3 -m viva_core.cli"
B=viva_core/small_models
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
JD=(--set judge.editor=$B/diffusers/viva-small-editor --set optim.batch_size=16 --set optim.workers=1 --set device=cpu)
trial_data() {
  mkdir -p "$WORK"
  [ -f "$WORK/data/train/train.jsonl" ] || $V synth --out "$WORK/data/train" --n 2000 --seed 0 --format npz --splits 1,0,0
  [ -f "$WORK/data/heldout/heldout.jsonl" ] || $V synth --out "$WORK/data/heldout" --n 96 --seed 7 --format npz --splits 0,0,1
  [ -f "$WORK/jd_train/judge_data/labels.jsonl" ] || $V pretrain recipes/small/judge_data.toml "${JD[@]}" \
    --set data.manifest="$WORK/data/train/train.jsonl" --set data.limit="$CLIPS" --set output_dir="$WORK/jd_train" \
    > "$WORK/jd_train.log" 2>&1
}
