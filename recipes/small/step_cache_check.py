"""What the step cache (viva_core.step_cache, diffusers' First Block Cache) costs in quality, on the CPU: the bundled
small editor edits every clip of a benchmark manifest without a cache and with each threshold given, as `viva edit`
runs it (its dtype rule for the bundled editor, 12 steps, CFG 5, the editor's shift and sampler) and with the seed
`viva eval` gives every clip (`--seed`, default 0). Per setting: mean PSNR and SSIM of the cached edit against the
uncached edit of the same clip and seed (PSNR: identical edits count at the 100 dB cap; its median and the
identical count beside it), the share of DiT calls that ran all blocks, seconds per edit, and the
verifiers' EA / PC (viva_core.eval.evaluate, as `viva eval` scores) with the paired difference to the uncached edits
and its 95% bootstrap interval over clips.

    PYTHONPATH=. python recipes/small/step_cache_check.py 0.02 0.05 0.1 0.2 [--manifest data/eval_heldout/heldout.jsonl]
        [--limit 32] [--seed 0] [--json runs/step_cache.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from table import bootstrap_ci

from viva_core import bundled
from viva_core.conditioning import negative_conditioning
from viva_core.data import load_manifest
from viva_core.editor import EditorOptions, load_editor
from viva_core.eval import evaluate
from viva_core.eval.metrics import PSNR_CAP, psnr, ssim
from viva_core.pipeline import edit
from viva_core.runtime import bf16_is_fast
from viva_core.settings import BUNDLED_STEPS, EditSettings
from viva_core.step_cache import StepCache

MANIFEST = "data/eval_heldout/heldout.jsonl"


def _mean(values) -> float:
    values = [v for v in values if v is not None]  # PC of a whole-frame edit has no value
    return sum(values) / len(values)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("thresholds", nargs="+", type=float, help="first_block thresholds to measure")
    p.add_argument("--manifest", default=MANIFEST)
    p.add_argument("--limit", type=int, default=None, help="the first N clips (default all)")
    p.add_argument("--seed", type=int, default=0, help="every clip's seed, as `viva eval --seed`")
    p.add_argument("--steps", type=int, default=BUNDLED_STEPS)
    p.add_argument("--dtype", default=None, help="default: as `viva edit` runs the bundled editor on this machine")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = args.dtype or ("bf16" if bf16_is_fast(device) else "fp32")  # as `viva edit` runs the bundled editor
    editor = load_editor(bundled.path(bundled.EDITOR), options=EditorOptions(dtype=dtype, device=device))
    records = load_manifest(args.manifest, check_videos=False)[: args.limit]
    encoded = {r.instruction: editor.encode_text(r.instruction) for r in records}
    negative = negative_conditioning(editor, "")
    settings = EditSettings(steps=args.steps, seed=args.seed)
    reference: dict[int, torch.Tensor] = {}

    def measure(cache: StepCache | None) -> dict:
        ed = editor.with_step_cache(cache)
        rows: dict[str, list[float]] = {"psnr": [], "ssim": [], "computed": [], "seconds": []}

        def editor_fn(record, frames):
            t0 = time.perf_counter()
            result = edit(ed, frames, encoded[record.instruction], negative=negative, settings=settings)
            rows["seconds"].append(time.perf_counter() - t0)
            if cache is None:
                reference[record.index] = result.frames
            else:
                ref = reference[record.index]
                rows["psnr"].append(psnr(result.frames, ref))
                rows["ssim"].append(ssim(result.frames, ref))
                rows["computed"].append(result.step_cache.computed / result.step_cache.calls)
            return result.frames

        report = evaluate(args.manifest, editor_fn, limit=args.limit)
        return {"rows": rows, "scores": {s.index: s for s in report.scores}}

    base = measure(None)
    out = {
        "manifest": args.manifest,
        "clips": len(records),
        "steps": args.steps,
        "seed": args.seed,
        "dtype": dtype,
        "uncached": {
            "seconds_per_edit": _mean(base["rows"]["seconds"]),
            **{q: _mean([getattr(s, q) for s in base["scores"].values()]) for q in ("ea", "pc")},
        },
        "settings": {},
    }
    print(f"{len(records)} clips of {args.manifest}, {args.steps} steps, seed {args.seed}, {dtype} on {device}")
    print(
        "| setting | DiT calls computed | PSNR vs uncached dB | SSIM vs uncached | s / edit | EA | dEA (95% CI) | PC | "
        "dPC (95% CI) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    u = out["uncached"]
    print(f"| off | 100% | - | - | {u['seconds_per_edit']:.2f} | {u['ea']:.3f} | - | {u['pc']:.3f} | - |")
    for threshold in args.thresholds:
        cache = StepCache("first_block", threshold)
        m = measure(cache)
        row: dict = {
            "computed_fraction": _mean(m["rows"]["computed"]),
            "psnr_db": _mean(m["rows"]["psnr"]),  # identical edits count at metrics.PSNR_CAP (100 dB)
            "psnr_db_median": statistics.median(m["rows"]["psnr"]),
            "psnr_db_min": min(m["rows"]["psnr"]),
            "identical": sum(x >= PSNR_CAP for x in m["rows"]["psnr"]),
            "ssim": _mean(m["rows"]["ssim"]),
            "ssim_min": min(m["rows"]["ssim"]),
            "seconds_per_edit": _mean(m["rows"]["seconds"]),
        }
        cells = []
        for q in ("ea", "pc"):
            pairs = [
                (getattr(m["scores"][i], q), getattr(s, q))
                for i, s in base["scores"].items()
                if getattr(s, q) is not None and getattr(m["scores"][i], q) is not None
            ]
            diffs = [a - b for a, b in pairs]
            lo, hi = bootstrap_ci(diffs, draws=4000)
            row[q] = _mean([a for a, _ in pairs])
            row[f"d_{q}"], row[f"d_{q}_ci"] = _mean(diffs), [lo, hi]
            cells += [f"{row[q]:.3f}", f"{row[f'd_{q}']:+.3f} ({lo:+.3f}..{hi:+.3f})"]
        out["settings"][cache.label()] = row
        psnr_cell = (
            f"{row['psnr_db']:.1f} (median {row['psnr_db_median']:.1f}, min {row['psnr_db_min']:.1f}, "
            f"{row['identical']} identical)"
        )
        ssim_cell = f"{row['ssim']:.4f} (min {row['ssim_min']:.3f})"
        head = f"| {cache.label()} | {row['computed_fraction']:.0%} | {psnr_cell} | {ssim_cell} | "
        print(head + f"{row['seconds_per_edit']:.2f} | " + " | ".join(cells) + " |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
