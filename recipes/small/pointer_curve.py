"""How well must a judge point for the change where it points to order one clip's candidates? Simulated pointers
over the source-frame tokens (the judge's grid: 4 frames of 4x4 tokens of 16x16 pixels): logits = a * z(mask share
of each token) + standard normal noise, for a range of a; per pointer, its mean per-clip ROC-AUC against the covered
tokens (as ground_check.py measures a judge's) and the within-clip agreement of the pointed change (softmax weights,
ground_check.contrast) with the verifier's EA on all and on clear pairs. Noise draws are seeded; a is the only knob.
Also the editor's own change (mean |edit - source| per token) read as a pointer, with the same AUC.

    PYTHONPATH=. python recipes/small/pointer_curve.py data/eval_heldout/heldout.jsonl runs/bon/judge_data
docs/small_models.md, section 46.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from best_of_n_check import _mean, agreements, candidates
from ground_check import contrast, covered_tokens, pointed

from viva_core.eval import roc_auc
from viva_core.train.pretrain import frames_float, load_clip_set
from viva_core.train.pretrain.judge import ground_targets
from viva_core.train.pretrain.judge_data import FRAMES_FILE
from viva_core.video import uniform_frame_indices

GRID = torch.tensor([1, 8, 8])  # the judge's image grid for a 64x64 frame (patch 8), merged 2x2 into 4x4 tokens


def main(argv: list[str]) -> None:
    manifest, folder = argv[0], Path(argv[1])
    clips = load_clip_set(manifest)
    clip, groups, scores = candidates(clips, folder)
    frames = np.load(folder / FRAMES_FILE, mmap_mode="r")
    truth = [s["EA"] for s in scores]
    picks = uniform_frame_indices(clips.source.shape[1], 4)
    target = {c: ground_targets(clips.mask[c][picks][None], GRID, 2)[0] for c in set(clip)}
    covered = {c: covered_tokens(t) for c, t in target.items()}
    change = {}
    for j, c in enumerate(clip):
        diff = (frames_float(torch.from_numpy(np.array(frames[j]))) - frames_float(clips.source[c])).abs().mean(-1)
        change[j] = F.adaptive_avg_pool2d(diff[picks][:, None], (4, 4)).flatten()
    editor = []  # the editor's own change as a pointer: does it change the tokens where the edit belongs?
    for g in groups:
        if covered[clip[g[0]]] is not None:
            editor.append(_mean(roc_auc(change[j].tolist(), covered[clip[g[0]]].tolist()) for j in g))
    print(f"the editor's change as a pointer: per-clip AUC {_mean(editor):.3f} over {len(editor)} clips")
    gen = torch.Generator().manual_seed(0)
    print("| a | pointing AUC | pointed change, all pairs | clear pairs |")
    print("|---|---|---|---|")
    for a in (0.0, 0.25, 0.35, 0.5, 1.0, 2.0, 4.0, 10.0):
        logits, aucs = {}, []
        for g in groups:
            c = clip[g[0]]
            t = target[c]
            z = (t - t.mean()) / t.std().clamp(min=1e-6)
            logits[c] = a * z + torch.randn(z.shape, generator=gen)
            if covered[c] is not None:
                aucs.append(roc_auc(logits[c].tolist(), covered[c].tolist()))
        signal = {j: contrast(pointed(logits[clip[j]]), change[j]) for g in groups for j in g}
        result = agreements(groups, truth, signal)
        cells = [f"{_mean(result[k][0]):.3f}" for k in ("all", "clear")]
        print(f"| {a} | {_mean(aucs):.3f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
