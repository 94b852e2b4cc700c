#!/usr/bin/env bash
# GPU session v9 (one H200), planned in docs/small_models.md section 23:
#   bench    issue 13: bench/bench_edit.py --variants best --best-of 4 --best-of-batch 2 (N=4 best-of-N against one
#            edit at the Lucy-5B shape, one candidate and two per DiT call); first, as session v9 ran out before it
#            (its expandable-segments memory measurement was run by hand then: docs/small_models.md, section 27)
#   data     N training clips (default 60,000: 48,000 in the train split; v5 had 24,000), the two benchmark sets and
#            the 96 object-edit clips of recipes/small/object_edits.sh (synth seed 11)
#   editor   the shipped editor (v5) continued (`editor.init`) as v6 with `data.balance=1` (add/move 7% -> 9% of the
#            draws), EDITOR_STEPS (default 7000) capped at EDITOR_MINUTES (default 9.5), peak lr EDITOR_LR (3e-4)
#   decoder  recipes/small/vae4_decoder.toml: the shipped VAE's decoder trained on, encoder frozen (every latent and
#            so every editor stays valid), outline-weighted loss; DECODER_MINUTES (default 7) on DECODER_CLIPS (16,000),
#            DECODER_STEPS (default the recipe's 3,000) to end the cosine inside the minutes; DECODER_RECIPE another
#            decoder recipe (recipes/small/vae4_decoder_wide.toml: a fresh decoder twice as wide, section 78)
#   vae      issue 10 item 3's latent (docs/small_models.md, section 80): for each z in VAE_Z (default 32), a fresh 4x
#            VAE of z channels through the v2 VAE's own recipes (vae4.toml 3 min, then vae4_long.toml 3.5 min), then
#            the ceilings (codec_ceiling.py --vae) of every such VAE this machine holds and of the shipped VAE, on the
#            held-out set and the object clips; VAE_Z="32" then "16" in two warm calls gives a paired baseline
#   eval     v5 (shipped), v6, and v6 with the new decoder ("v6dec": v6's folder with vae/ replaced) on both benchmark
#            sets and on the object clips (GPU, fp32: eval_all.sh's protocol), for paired tables, and the old and
#            new decoder's ceilings (--ceiling); without an editor phase, the shipped editor with the new decoder
#            (OLD=v6: "v6dec"), e.g. PHASES="data decoder eval pack" DECODER_STEPS=2700
#   pack     pack/results.tar (logs, metrics, eval reports, bench JSON) and pack/models.tar.NN (<= 15 MB parts)
#   setsid bash recipes/small/gpu_session_v9.sh > /tmp/v9.log 2>&1 < /dev/null &
# OLD / NEW (default v5 / v6, as run in session v9) label the shipped editor and its continuation; the next
# session: OLD=v6 NEW=v7 (docs/small_models.md, section 28). Works in $WORK (default /tmp/viva_v9). SMOKE=1: a CPU
# check of the script (tiny data, 2 steps, no compile, CPU evals on 4 clips; PHASES="data editor decoder eval pack").
# As run and its results: docs/small_models.md, section 27.
set -uo pipefail
WORK="${WORK:-/tmp/viva_v9}"
PHASES="${PHASES:-bench data editor decoder eval pack}"
OLD="${OLD:-v5}" NEW="${NEW:-v6}"  # labels: the shipped editor, and the continued one
mkdir -p "$WORK" && cp -r viva_core recipes bench tests "$WORK"/
cd "$WORK" || exit 1
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-8}"
source recipes/small/session_lib.sh  # $V $R $B, stamp, has, steps, make_data, make_objects, eval_lines, pack_results
SHIPPED=$B/diffusers/viva-small-editor
PACKED=($NEW/editor decoder/vae $(for z in ${VAE_Z:-32}; do echo vae_z${z}_long/vae; done))  # pack's model folders
has pack && pack_on_stop pack_results "${PACKED[@]}"  # stopped by the call's timeout: pack what exists
# shellcheck disable=SC2206  # EDITOR_SETS: more --set pairs
E=(--set editor.init=$SHIPPED --set editor.vae=$SHIPPED/vae --set data.balance="${BALANCE:-1}" ${EDITOR_SETS:-}
   --set editor.instructor=false --set optim.compile="${COMPILE:-true}"
   --set optim.lr="${EDITOR_LR:-3e-4}" --set optim.max_minutes="${EDITOR_MINUTES:-9.5}")
D=(--set vae.init=$SHIPPED/vae --set data.limit="${DECODER_CLIPS:-16000}" --set optim.max_minutes="${DECODER_MINUTES:-7}")
[ -n "${DECODER_STEPS:-}" ] && D+=(--set optim.steps="$DECODER_STEPS")  # sized to the minutes, so the cosine ends
VS=()  # more --set pairs for the vae phase's runs (SMOKE: 2 steps)
CEIL_DEVICE=()
if [ "${SMOKE:-0}" = 1 ]; then
  VS+=(--set optim.steps=2 --set optim.batch_size=2 --set optim.warmup_steps=1 --set optim.workers=0)
  CEIL_DEVICE=(--device cpu)
  export N=40; E+=(--set optim.batch_size=2 --set optim.workers=0 --set optim.compile=false); EDITOR_STEPS=2
  D+=(--set optim.steps=2 --set optim.batch_size=2 --set optim.warmup_steps=1); EVAL_DEVICE=cpu; export EVAL_DEVICE
fi

if has bench; then
  stamp bench
  PYTHONPATH=.:${PYTHONPATH:-} python3 bench/bench_edit.py --variants best --best-of 4 --best-of-batch 2 \
    --json runs/bench_best_of_4.json \
    > runs/bench_best_of_4.log 2>&1
  tail -12 runs/bench_best_of_4.log
fi
if has data; then
  stamp data
  N="${N:-60000}" make_data
  make_objects
fi
if has editor; then
  stamp editor
  $V pretrain recipes/small/editor4.toml --set output_dir=$R/$NEW "${E[@]}" $(steps "${EDITOR_STEPS:-7000}") \
    > runs/$NEW.log 2>&1
  grep -h '"steps_done"\|"seconds"' $R/$NEW/editor_summary.json
fi
if has decoder; then
  stamp decoder
  $V pretrain "${DECODER_RECIPE:-recipes/small/vae4_decoder.toml}" --set output_dir=$R/decoder "${D[@]}" \
    > runs/decoder.log 2>&1
  grep -h '"steps_done"\|"seconds"\|"val_psnr"' $R/decoder/vae_summary.json
fi
if has vae; then
  stamp vae
  for z in ${VAE_Z:-32}; do
    $V pretrain recipes/small/vae4.toml --set output_dir=$R/vae_z$z --set vae.z_dim=$z "${VS[@]}" > runs/vae_z$z.log 2>&1
    $V pretrain recipes/small/vae4_long.toml --set output_dir=$R/vae_z${z}_long --set vae.init=$R/vae_z$z/vae \
      "${VS[@]}" > runs/vae_z${z}_long.log 2>&1
    grep -h '"steps_done"\|"seconds"\|"val_psnr"' $R/vae_z$z/vae_summary.json $R/vae_z${z}_long/vae_summary.json
  done
  vaes=("shipped=$SHIPPED/vae")
  for d in $R/vae_z*_long/vae; do [ -f "$d/config.json" ] && vaes+=("$(basename "$(dirname "$d")")=$d"); done
  # one process per (set, VAE), in parallel: the verifiers are CPU work. Each gets its share of the cores: at the
  # session's 8 threads each, four processes on 16 cores had not finished in ~2 minutes (at torch's default of 16 each,
  # not in 5); at 4 threads each they took 23 s (docs/small_models.md, section 81)
  threads=$(( $(nproc) / (2 * ${#vaes[@]}) )); [ "$threads" -ge 1 ] || threads=1
  for set in heldout objects; do
    m=data/eval_heldout/heldout.jsonl; [ $set = objects ] && m=$OBJECTS
    for v in "${vaes[@]}"; do
      OMP_NUM_THREADS=$threads PYTHONPATH=.:${PYTHONPATH:-} python3 recipes/small/codec_ceiling.py $m \
        --report runs/eval/vae_ceilings_$set --vae "$v" "${CEIL_DEVICE[@]}" > "runs/vae_ceilings_${set}_${v%%=*}.log" 2>&1 &
    done
  done
  wait
  for set in heldout objects; do
    labels=(); for r in runs/eval/vae_ceilings_$set/vae_*; do labels+=("${r##*/vae_}=$r"); done
    python3 recipes/small/table.py "${labels[@]}" 2>&1 | grep "^|"
    python3 recipes/small/table.py --by-operation "${labels[@]}" 2>&1 | grep "^|"
  done
fi
if has eval; then
  stamp eval
  # the new decoder goes into a copy of NEW's folder (only vae/ differs), or of the shipped editor's when this run
  # trained no editor (PHASES="data decoder eval pack": a decoder-only session, labelled ${OLD}dec)
  base=$NEW; [ -d $R/$NEW/editor ] || base=$OLD
  if [ -f $R/decoder/vae/config.json ]; then
    src=$R/$NEW/editor; [ $base = "$OLD" ] && src=$SHIPPED
    rm -rf $R/${base}dec && cp -r $src $R/${base}dec
    cp $R/decoder/vae/config.json $R/decoder/vae/diffusion_pytorch_model.safetensors $R/${base}dec/vae/
  fi
  objects() { eval_line "${1}_objects" $OBJECTS "$2"; }
  {
    eval_lines $OLD "--editor $SHIPPED"; objects $OLD "--editor $SHIPPED"
    for v in $NEW ${base}dec; do
      d=$R/$v; [ "$v" = "$NEW" ] && d=$R/$NEW/editor
      [ -d "$d" ] && { eval_lines $v "--editor $d"; objects $v "--editor $d"; }
    done
    # the decoder's ceilings (the ground truth through the VAE), old and new, on every set
    for v in $OLD ${base}dec; do
      d=$R/$v; [ "$v" = "$OLD" ] && d=$SHIPPED
      [ -d "$d" ] && { eval_lines ${v}_ceiling "--editor $d --ceiling"; objects ${v}_ceiling "--editor $d --ceiling"; }
    done
  } > runs/eval_jobs.txt
  xargs -P "${JOBS:-5}" -I{} bash -c {} < runs/eval_jobs.txt
  grep -H "^all " runs/eval/*.log
  for set in $EVAL_SETS objects; do
    [ $base = "$NEW" ] &&
      python3 recipes/small/table.py --paired "$OLD=runs/eval/${OLD}_$set" "$NEW=runs/eval/${NEW}_$set" 2>&1 | head -3
    [ -d runs/eval/${base}dec_$set ] || continue  # no new decoder this run
    python3 recipes/small/table.py --paired "$base=runs/eval/${base}_$set" "${base}dec=runs/eval/${base}dec_$set" 2>&1 |
      head -3
    python3 recipes/small/table.py --paired "$OLD=runs/eval/${OLD}_ceiling_$set" \
      "${base}dec=runs/eval/${base}dec_ceiling_$set" 2>&1 | head -3
  done
fi
has pack && pack_results "${PACKED[@]}"
stamp done
