"""One edit's scores (EA, PC, GN, GR) in an `EditScore`, their means over many edits, and the judge's
agreement with the verifiers (accuracy, ROC-AUC)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from .metrics import _frames, _mask, _mean, derive_mask, naturalness, preservations, psnr_score, realism, spills
from .verifiers import edit_accuracies, operation_parts

JUDGE_THRESHOLD = 0.5
# The judge's questions (viva_core.judge.DIMENSIONS, not imported: it loads the VLM stack); each is checked against
# the verifier score of the same name, EditScore.<code.lower()>.
JUDGE_QUESTIONS = ("EA", "PC", "GN", "GR")
DIMENSION_KEYS = ("ea", "pc", "gn", "gr", "overall", "psnr", "ssim")
UNCATEGORISED = "uncategorised"


# ============================================================================================ one edit


@dataclass
class EditScore:
    """Scores of one edit, each in [0, 1] (None where undefined); `psnr` in dB; `details` holds every
    intermediate quantity (JSON-able)."""

    index: int
    operation: str
    category: str
    ea: float
    pc: float | None
    gn: float | None
    gr: float
    overall: float
    psnr: float | None
    ssim: float | None
    details: dict = field(default_factory=dict)


def dimension_scores(s, o, y, m, verify: dict | None, operation: str | None, dimensions) -> dict[str, tuple]:
    """The requested dimensions' functions on checked frames (`_frames`) and mask, each result as it returns it
    (value first): what `score_edit` assembles."""
    return {
        d: results[0] for d, results in batch_dimension_scores(s, o[None], y, m, verify, operation, dimensions).items()
    }


def batch_dimension_scores(
    s, outputs, y, m, verify: dict | None, operation: str | None, dimensions
) -> dict[str, list[tuple]]:
    """`dimension_scores` of each output of outputs [B,T,H,W,3] against one source, ground truth and mask: EA and PC
    batched (what they measure on the source and ground truth once), GN and GR per output. The verifier reward scores
    a GRPO group's rollouts this way, and pays only for the dimensions it asks for."""
    out: dict[str, list[tuple]] = {}
    if "EA" in dimensions:
        out["EA"] = edit_accuracies(s, outputs, y, m, verify, operation)
    if "PC" in dimensions:
        out["PC"] = preservations(s, outputs, m)
    if "SP" in dimensions:
        out["SP"] = spills(s, outputs, m)
    if "GN" in dimensions:
        out["GN"] = [naturalness(o, y, m) for o in outputs]
    if "GR" in dimensions:
        out["GR"] = [realism(o, y) for o in outputs]
    return out


def score_edit(
    source,
    output,
    target,
    mask,
    verify: dict | None,
    operation: str | None,
    *,
    index: int = 0,
    category: str | None = None,
) -> EditScore:
    """Score `output` against the source, the ground truth `target` and the edit `mask` (all of one shape:
    frames [T,H,W,3] 0..1, mask [T,H,W] or [T,H,W,C]; None derives the mask from source vs target)."""
    s, o, y = _frames(source, "source"), _frames(output, "output"), _frames(target, "target")
    if not (s.shape == o.shape == y.shape):
        raise InputError(
            f"source {tuple(s.shape)}, output {tuple(o.shape)} and target {tuple(y.shape)} must have "
            "one shape [T,H,W,3]; `evaluate` aligns an editor's output before scoring."
        )
    m = derive_mask(s, y) if mask is None else _mask(mask)
    if m.shape != s.shape[:3]:
        raise InputError(f"mask {tuple(m.shape)} does not match the frames {tuple(s.shape[:3])} (T, H, W).")
    r = dimension_scores(s, o, y, m, verify, operation, ("EA", "PC", "GN", "GR", "SP"))
    ea, ea_details = r["EA"]
    pc, value_psnr, value_ssim = r["PC"]
    gn, gn_details = r["GN"]
    gr, gr_details = r["GR"]
    details = {
        "ea": ea_details,
        "pc": {"psnr_score": None if value_psnr is None else psnr_score(value_psnr), "spill": r["SP"][1]},
        "gn": gn_details,
        "gr": gr_details,
        "mask_fraction": float(m.float().mean()),
        "mask_derived": mask is None,
    }
    return EditScore(
        index=index,
        operation="+".join(operation_parts(operation)) or "unknown",
        category=category or UNCATEGORISED,
        ea=ea,
        pc=pc,
        gn=gn,
        gr=gr,
        overall=_mean([ea, pc, gn, gr]),
        psnr=value_psnr,
        ssim=value_ssim,
        details=details,
    )


# ========================================================================================= the judge


def roc_auc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """Area under the ROC curve = P(score of a random positive > a random negative) + ½ P(tie), from the
    rank sum of the positives (Mann-Whitney U, tied scores get their average rank). None without both classes."""
    x = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1  # average of ranks i+1 .. j+1
        i = j + 1
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def judge_item(
    index: int, kind: str, question: str, p_yes: float, verifier: float, threshold: float = JUDGE_THRESHOLD
) -> dict:
    """One judged video for `judge_agreement`: the judge's P(Yes) to `question` and the verifier's score of the same
    dimension (stored under its lower-case code, e.g. "ea", as report.json has always had it), labelled
    verifier ≥ threshold."""
    return {
        "index": index,
        "kind": kind,
        "question": question,
        "p_yes": float(p_yes),
        question.lower(): verifier,
        "label": bool(verifier >= threshold),
    }


def _agreement(items: list[dict], threshold: float) -> dict:
    """Counts, accuracy of `p_yes ≥ threshold` against `label`, ROC-AUC of p_yes (None with one class only) and
    the mean P(Yes) of each class (how far apart the judge puts them, also when the AUC is undefined)."""
    p = [it["p_yes"] for it in items]
    labels = [bool(it["label"]) for it in items]
    accuracy = sum((pi >= threshold) == li for pi, li in zip(p, labels)) / len(items) if items else None
    return {
        "n": len(items),
        "positives": sum(labels),
        "negatives": len(labels) - sum(labels),
        "threshold": threshold,
        "accuracy": accuracy,
        "roc_auc": roc_auc(p, labels),
        "mean_p_yes_positives": _mean([pi for pi, li in zip(p, labels) if li]),
        "mean_p_yes_negatives": _mean([pi for pi, li in zip(p, labels) if not li]),
        "items": items,
    }


def judge_agreement(items: list[dict], threshold: float = JUDGE_THRESHOLD) -> dict:
    """The judge against the verifiers, per question, over items {index, kind, question, p_yes, <question>, label}
    (`judge_item`; an item without "question" is EA's, as earlier callers wrote them).

    `per_question[Q]` holds each question's n, positives, negatives, accuracy, roc_auc, mean P(Yes) per class and
    items. The top level is EA's alone (its keys as before the other questions were scored), so readers of earlier
    report.json files, `judge_check.py` and `recipes/small/table.py` read the same numbers. `ea_edits_only` is EA
    over the "output" items alone (no unedited sources): how well the judge ranks the edits themselves."""
    groups: dict[str, list[dict]] = {q: [] for q in JUDGE_QUESTIONS}  # a row for each, "no items" said as such
    for it in items:
        groups.setdefault(it.get("question", "EA"), []).append(it)
    per_question = {q: _agreement(group, threshold) for q, group in groups.items()}
    # EA over the edits alone: the unedited sources are easy negatives, and the mixed AUC can be high while the
    # judge cannot rank the editor's edits (docs/small_models.md, section 29: 0.80 mixed, 0.51 edits alone).
    edits = _agreement([it for it in groups["EA"] if it.get("kind") == "output"], threshold)
    del edits["items"]  # the same items as per_question["EA"]'s outputs
    return {**per_question["EA"], "per_question": per_question, "ea_edits_only": edits}


# ============================================================================================ aggregate


def aggregate(scores: Sequence[EditScore]) -> dict:
    """Count and mean of each score (undefined ones left out of their mean)."""
    return {"count": len(scores), **{k: _mean([getattr(s, k) for s in scores]) for k in DIMENSION_KEYS}}
