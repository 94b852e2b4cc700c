"""What in an edit tells the GN (temporal naturalness) verifier's verdict, among what a judge could be shown?

GN compares the edit's frame-to-frame change with the ground truth's (`viva_core.eval.metrics.naturalness`). A judge
is shown a few frames of the source and the edit, uniformly spaced (4 of 17 for the bundled judge); this probe scores
the outputs of a `viva eval --editor ... --judge ...` run (its report and saved outputs) with statistics of the source
and the edit alone, and prints each one's ROC-AUC against the verifier's GN >= 0.5, beside the judge's:
- `*_all`: over every pair of adjacent frames; `*_shown`: between the spaced frames a judge sees; `*_pairs`: over
  the pair (t, t+1) at each frame a judge sees (what a judge shown two adjacent frames per moment could read);
- `flicker_gap`: |mean frame-to-frame change of the edit - of the source| (GN's flicker term, the source for the
  truth); `temporal`: mean |change of the edit - change of the source| over the pixels where the edit differs from the
  source (GN's temporal term, the source for the truth).
Higher statistic = more natural (each is negated). docs/small_models.md, section 83, has the numbers.

    viva eval data/eval_heldout/heldout.jsonl --editor bundled --judge bundled --report runs/gn
    PYTHONPATH=. python recipes/small/gn_probe.py data/eval_heldout/heldout.jsonl runs/gn [--frames 4]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from viva_core.data import load_manifest, load_sample
from viva_core.eval import roc_auc
from viva_core.judge import shown_moments
from viva_core.video import read_video, uniform_frame_indices

CHANGED = 0.1  # a pixel whose edit differs from the source by more than this (0..1, any channel) is edited


def statistics(edit: torch.Tensor, source: torch.Tensor, frames: int) -> dict[str, float]:
    """The probe's statistics of one edit [T,H,W,3] and its source (0..1), higher = more natural."""
    t = min(edit.shape[0], source.shape[0])
    e, s = edit[:t].float(), source[:t].float()
    de, ds = e[1:] - e[:-1], s[1:] - s[:-1]
    edited = (e - s).abs().amax(-1) > CHANGED
    region = (edited[1:] | edited[:-1]).float()  # either frame of a transition edited
    gap = (de - ds).abs().mean(-1)
    shown = uniform_frame_indices(t, frames)
    pairs = [a for a, _ in shown_moments(t, frames, pairs=True)]  # the transition a frame-pairs judge sees
    es, ss = e[shown], s[shown]

    def temporal(g: torch.Tensor, r: torch.Tensor) -> float:
        return -float((g * r).sum() / r.sum()) if r.sum() > 0 else 0.0

    return {
        "flicker_gap_all": -abs(float(de.abs().mean()) - float(ds.abs().mean())),
        "flicker_gap_shown": -abs(float((es[1:] - es[:-1]).abs().mean()) - float((ss[1:] - ss[:-1]).abs().mean())),
        "temporal_all": temporal(gap, region),
        "temporal_shown": temporal(
            ((es[1:] - es[:-1]) - (ss[1:] - ss[:-1])).abs().mean(-1), (edited[shown][1:] | edited[shown][:-1]).float()
        ),
        "temporal_pairs": temporal(gap[pairs], region[pairs]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("manifest")
    ap.add_argument("report", help="a `viva eval --judge` report folder with its outputs/")
    ap.add_argument("--frames", type=int, default=4, help="frames a judge is shown of each video")
    args = ap.parse_args()
    report = json.loads((Path(args.report) / "report.json").read_text())
    records = load_manifest(args.manifest)
    stats, labels, judge = [], [], []
    for score in report["scores"]:
        i = score["index"]
        edit = read_video(Path(args.report) / "outputs" / f"{i}.mp4").frames.float()
        sample = load_sample(records[i])
        source = sample.source.float()
        edit, source = (x / 255 if x.max() > 1.5 else x for x in (edit, source))
        stats.append(statistics(edit, source, args.frames))
        labels.append(score["gn"] >= 0.5)
        judge.append(score["details"].get("judge", {}).get("GN"))
    print(f"{len(labels)} outputs, {sum(labels)} with GN >= 0.5")
    if None not in judge:
        print(f"{'judge P(Yes) to GN':22s} ROC-AUC {roc_auc(judge, labels):.3f}")
    for key in stats[0]:
        print(f"{key:22s} ROC-AUC {roc_auc([s[key] for s in stats], labels):.3f}")


if __name__ == "__main__":
    main()
