"""A judge's agreement with the verifiers on balanced labels: each clip's ground-truth edit (a "Yes", EA 1) and
its unedited source (a "No", EA ~0), scored with `viva_core.eval.evaluate` (the editor is replaced by the ground
truth); the ROC-AUC is the EA question's alone. An editor's own outputs rarely pass the verifiers, which leaves too
few positives to measure a judge. For npz manifests it also prints each question's AUC over the candidate edits the
judge trains on (`CandidateSet`: the corruptions that fail a question are its negatives).

    python recipes/small/judge_check.py MANIFEST JUDGE_FOLDER [REPORT_DIR] [--record [--outputs-report DIR]]

--outputs-report DIR (with --record) also records the judge's per-question ROC-AUC on an editor's own outputs, from
a `viva eval --editor E --judge JUDGE_FOLDER` report (`editor_output_aucs`).

--record writes the ROC-AUC into the judge folder's viva_judge.json (`held_out_roc_auc`, and for npz clips each
question's `held_out_question_aucs`): the CLI, best-of-N and the Judge node then warn with its scores when it is
near chance, or name the questions that rank corrupted edits poorly (viva_core.judge.judge_caveat).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from viva_core.data import read_frames
from viva_core.errors import InputError
from viva_core.eval import evaluate
from viva_core.judge import DIMENSIONS, JUDGE_INFO_FILE, Judge, judge_info
from viva_core.safe_io import write_text_atomic
from viva_core.train.pretrain import CandidateSet, JudgeSection, candidate_aucs, load_clip_set
from viva_core.vlm import load_vlm


def _fmt(values: dict) -> str:
    return "  ".join(f"{k} {v:.2f}" for k, v in values.items())


def output_aucs(report_dir: str) -> dict:
    """From a `viva eval --editor E --judge J` report: J's ROC-AUC per question against the verifiers on E's outputs
    (EA over the outputs alone, not with the unedited sources), as viva_judge.json records it."""
    report = json.loads((Path(report_dir) / "report.json").read_text())
    j = report["judge_agreement"]
    aucs = {q: j["per_question"][q]["roc_auc"] for q in DIMENSIONS if q != "EA"}
    aucs["EA"] = j["ea_edits_only"]["roc_auc"]
    return {
        "editor_output_aucs": {q: round(aucs[q], 3) for q in DIMENSIONS if aucs.get(q) is not None},
        "editor_output_items": j["ea_edits_only"]["n"],
        "editor_output_manifest": Path(report["manifest"]).name,
    }


def main(
    manifest: str, judge_folder: str, report: str | None = None, record: bool = False, outputs_report: str | None = None
) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    judge = Judge(load_vlm(judge_folder, dtype="fp32", device=device))
    result = evaluate(
        manifest, lambda rec, frames: read_frames(rec.target_video, None, "target_video")[0], judge=judge, previews=0
    )
    j = result.judge_agreement
    print(
        f"{judge_folder}: EA question, ground truth vs unedited source: accuracy {j['accuracy']:.2f}, "
        f"ROC-AUC {j['roc_auc']:.2f} ({j['positives']} positives, {j['negatives']} negatives)"
    )
    try:
        clips = load_clip_set(manifest)
    except InputError:
        clips = None  # an mp4 manifest: the per-question check needs npz clips
    aucs = {}
    if clips is not None:
        info = judge_info(judge_folder) or {}
        sec = JudgeSection(frames=int(info.get("frames", 4)), difference=judge.difference)
        aucs, p_ea = candidate_aucs(judge.vlm, CandidateSet(clips, sec))
        print("per question, over the candidate edits of CANDIDATE_LABELS: ROC-AUC " + _fmt(aucs))
        print("mean EA P(Yes) per candidate: " + _fmt(p_ea))
    if report:
        result.write(report)
    if record:
        info_path = Path(judge_folder) / JUDGE_INFO_FILE
        info = judge_info(judge_folder) or {}
        info.update(
            held_out_roc_auc=round(j["roc_auc"], 3),
            held_out_pairs=j["positives"] + j["negatives"],
            held_out_manifest=Path(manifest).name,
        )
        if aucs:  # each question's ranking of correct over corrupted edits: judge_caveat names the weak ones
            info["held_out_question_aucs"] = {k: round(v, 3) for k, v in aucs.items() if k in DIMENSIONS}
        if outputs_report:  # each question's ranking of an editor's own outputs against its verifier
            info.update(output_aucs(outputs_report))
        write_text_atomic(info_path, json.dumps(info) + "\n")
        print(f"recorded in {info_path}")


if __name__ == "__main__":
    argv = sys.argv[1:]
    outputs = None
    if "--outputs-report" in argv:
        k = argv.index("--outputs-report")
        outputs, argv = argv[k + 1], argv[:k] + argv[k + 2 :]
    main(*[a for a in argv if a != "--record"], record="--record" in argv, outputs_report=outputs)
