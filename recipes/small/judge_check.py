"""A judge's agreement with the verifiers on balanced labels: each clip's ground-truth edit (a "Yes", EA 1) and
its unedited source (a "No", EA ~0), scored with `viva_core.eval.evaluate` (the editor is replaced by the ground
truth). An editor's own outputs rarely pass the verifiers, which leaves too few positives to measure a judge.

    python recipes/small/judge_check.py MANIFEST JUDGE_FOLDER [REPORT_DIR]
"""
from __future__ import annotations

import sys

import torch

from viva_core.data import read_frames
from viva_core.eval import evaluate
from viva_core.judge import Judge
from viva_core.vlm import load_vlm


def main(manifest: str, judge_folder: str, report: str | None = None) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    judge = Judge(load_vlm(judge_folder, dtype="fp32", device=device))
    result = evaluate(manifest, lambda rec, frames: read_frames(rec.target_video, None, "target_video")[0],
                      judge=judge, previews=0)
    j = result.judge_agreement
    print(f"{judge_folder}: accuracy {j['accuracy']:.2f}, ROC-AUC {j['roc_auc']:.2f} "
          f"({j['positives']} positives, {j['negatives']} negatives)")
    if report:
        result.write(report)


if __name__ == "__main__":
    main(*sys.argv[1:])
