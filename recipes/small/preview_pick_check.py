"""Does judging step-cached previews lose best-of-N's pick? (`best_of_n(previews=...)`, docs/small_models.md, 37)

For each clip of a benchmark manifest, the bundled editor makes K candidates (seeds 0..K-1) twice: plainly and as
step-cached previews (first_block T). A perfect judge (the verifier's EA against the ground truth) picks once among
the plain candidates (the oracle) and once among the previews; the kept video is the plain edit of the picked seed
either way. Reported, with 95% bootstrap intervals over clips: the kept EA of both picks against a random pick, and
the previews' within-clip pair agreement with the plain candidates' EA (1: previews order seeds as the full edits do).

    PYTHONPATH=. python recipes/small/preview_pick_check.py data/eval_heldout/heldout.jsonl [--threshold 0.1]
        [--steps 30] [--candidates 4] [--limit 32]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from best_of_n_check import pair_agreement
from table import bootstrap_ci
from tqdm import tqdm

from viva_core import bundled
from viva_core.editor import EditorOptions, load_editor
from viva_core.eval import score_edit
from viva_core.pipeline import edit, unconditional
from viva_core.runtime import bf16_is_fast, parse_device
from viva_core.settings import EditSettings
from viva_core.step_cache import StepCache
from viva_core.train.pretrain import frames_float, load_clip_set


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("manifest")
    p.add_argument("--threshold", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--candidates", type=int, default=4)
    p.add_argument("--limit", type=int, default=32)
    a = p.parse_args(argv)
    dtype = "bf16" if bf16_is_fast(parse_device("auto")) else "fp32"  # as `viva edit` runs the bundled editor
    editor = load_editor(str(bundled.path(bundled.EDITOR)), options=EditorOptions(dtype=dtype))
    cached = editor.with_step_cache(StepCache("first_block", a.threshold))
    clips = load_clip_set(a.manifest, a.limit)
    negative = unconditional(editor)
    full_ea, preview_ea, computed = [], [], []
    for c, rec in enumerate(tqdm(clips.records, desc="clips")):
        source, cond = frames_float(clips.source[c]), editor.encode_text(rec["instruction"])
        verify = rec.get("verify") if isinstance(rec.get("verify"), dict) else None
        target, mask = frames_float(clips.target[c]), clips.mask[c]
        row_full, row_preview = [], []
        for seed in range(a.candidates):
            settings = EditSettings(steps=a.steps, seed=seed)
            for ed, row in ((editor, row_full), (cached, row_preview)):
                out = edit(ed, source, cond, negative=negative, settings=settings)
                row.append(score_edit(source, out.frames, target, mask, verify, rec.get("operation")).ea)
                if out.step_cache is not None:
                    computed.append(out.step_cache.computed / out.step_cache.calls)
        full_ea.append(row_full)
        preview_ea.append(row_preview)
    full, preview = np.array(full_ea), np.array(preview_ea)
    random_pick = full.mean(1)
    oracle = full.max(1) - random_pick
    by_preview = full[np.arange(len(full)), preview.argmax(1)] - random_pick  # ties: the lowest seed, as best_of_n
    groups = [list(range(k * a.candidates, (k + 1) * a.candidates)) for k in range(len(full))]
    agree, pairs = pair_agreement(groups, list(full.ravel()), list(preview.ravel()))
    print(
        f"{len(full)} clips x {a.candidates} seeds, {a.steps} steps, first_block {a.threshold:g}, {dtype}; previews "
        f"computed {np.mean(computed):.0%} of their DiT calls"
    )
    print(f"random pick EA {random_pick.mean():.3f}; previews' mean EA {preview.mean():.3f} (full {full.mean():.3f})")
    for name, gain in (("oracle on the full candidates", oracle), ("oracle on the previews", by_preview)):
        lo, hi = bootstrap_ci(list(gain))
        print(f"{name}: kept EA - random pick {gain.mean():+.3f} ({lo:+.3f}..{hi:+.3f})")
    lo, hi = bootstrap_ci(agree)
    print(
        f"previews' EA vs the full candidates' EA, within-clip pair agreement {np.mean(agree):.3f} ({lo:.3f}-{hi:.3f}),"
        f" {pairs} pairs"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
