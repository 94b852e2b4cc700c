"""Exact benchmark: score edits against ground truth (source, target, mask and a per-operation check).

No learned weights: every number comes from the output frames, the manifest's source, target (ground truth)
and mask videos, and the `verify` entry a synthetic manifest writes for each edit. The story of `evaluate`:
read the manifest (and the extra fields `operation`, `verify`, `attribute`, `referring` of each raw line)
→ for each record read source / target / mask → get the output (run `editor_fn`, or read
`outputs_dir/<index>.mp4`) → align it to the references → `score_edit` → optionally ask the judge →
aggregate per category (`type`), per operation and over all → `EvalReport.write` (report.json + report.html).

Notation: s = source, o = output, y = ground truth, all [T,H,W,3] in 0..1; M = mask > 0.5; |a−b| is the
Euclidean RGB distance of a pixel (0..√3); τ = COLOUR_TOL (two colours "match" when |a−b| < τ).

Edit accuracy (EA). Each verifier measures a quantity q on a region where the edit must show, and places
the output between the source (EA 0) and the ground truth (EA 1):

    EA = clip((q(o) − q(s)) / (q(y) − q(s)), 0, 1)                                       (`anchored`)

- recolour  (verify target_rgb c): q(x) = mean |x−c| over R = M ∧ |y−c| < τ ∧ |s−c| ≥ τ
- add/remove (verify present, optional rgb): q(x) = fraction of R = M ∧ |s−y| ≥ τ where x is closer to the
  wanted look than to the unwanted one (add: wanted y (or rgb), unwanted s; remove: wanted y, unwanted s
  (or rgb)). Source → 0, ground truth → ≈1; details say whether the object is seen.
- replace / replace_shape (optional rgb c, else the ground truth's dominant colour in M ∧ bbox):
  blob(x) = dilate(M) ∧ |x−c| < τ; q(x) = IoU(blob(x), blob(y)) pooled over frames.
- move/resize, and synth's no_bounce/speed_change/reverse_direction (verify bbox, per frame [x0,y0,x1,y1],
  pixels (end exclusive) or 0..1 fractions, None = not in view): the bbox of the pixels matching the object
  colour inside dilate(M ∪ bbox_t); q(x) = mean over frames with a box of its IoU with bbox_t (IoU 0 where
  nothing is found). Object colours not in verify: the ground truth's dominant colour (`dominant_colour`)
  inside the mask and boxes.
- style grayscale: q(x) = mean chroma (max − min over RGB) over M.
- generic fallback (other operations, no or unusable `verify`): q(x) = mean |x−y| per channel over
  R = M ∧ (max_c |s−y| > MASK_DERIVE_TOL) (the mask pixels the edit changes; all of M if none), i.e.
  EA = clip(1 − MAE_R(o, y) / max(MAE_R(s, y), MIN_CHANGE), 0, 1).
- hybrid (`"recolour+move"`): the mean of its parts' EA.
A verifier that cannot separate source from ground truth (|q(y) − q(s)| < MIN_SEPARATION, empty region)
falls back to the generic check; details["verifier"] says which one ran and why.

Preservation (PC) outside O = ¬dilate(M, PRESERVE_MARGIN) (the margin leaves out codec bleed at the mask's
edge), output vs source:  PSNR = 10·log10(1 / MSE_O(o, s)) (capped at PSNR_CAP);
SSIM = mean over O of the SSIM map (gaussian window 11, σ 1.5, C1 = 0.01², C2 = 0.03², per channel then
averaged) of (o with dilate(M) filled by s) vs s;  PC = ½ (clip((PSNR − 10) / 40, 0, 1) + SSIM).
None when O is under 1 % of the frame (a whole-frame edit has nothing to preserve).

Temporal naturalness (GN):  flicker(x) = mean |x_{t+1} − x_t|;  F = exp(−|flicker(o) − flicker(y)| / TAU_FLICKER);
inside the mask E = mean over M_t ∪ M_{t+1} of mean_c |Δo − Δy| (Δ = frame-to-frame change),
C = exp(−E / TAU_TEMPORAL);  GN = ½ (F + C).  None for one-frame clips.

Realism proxy (GR): sharpness v(x) = variance of the 3×3 Laplacian of luma, averaged over frames; r = v(o)/v(y);
S = min(r, 1/r);  palette P = Σ min(h_o, h_y) over joint RGB histograms (8 bins per channel, normalised);
GR = ½ (S + P).

overall = mean of EA, PC, GN, GR (those defined). The judge is scored against the verifiers, per question:
label = the verifier's score of that dimension ≥ 0.5, prediction = the judge's P(Yes) to that question, over the
outputs (PC left out where it is undefined). EA's items also include each record's unedited source as an output
(labelled by its own verifier EA, 0 by construction), so EA has both classes; PC, GN and GR may have one class
only on an editor's outputs, and then have no ROC-AUC (`judge_agreement`'s `per_question`; its top level is EA's).

Where each part lives: `metrics` (inputs, PC, GN, GR), `verifiers` (EA), `score` (one edit, aggregates, judge
agreement), `alignment` (output vs references), `report` (JSON, table, HTML), `loop` (`evaluate`). This package
re-exports their public names, so `from viva_core.eval import evaluate` keeps working.
"""

from __future__ import annotations

from .alignment import align
from .loop import CLIP_FPS, evaluate, manifest_extras
from .metrics import (
    MASK_DERIVE_TOL,
    PSNR_CAP,
    SSIM_C1,
    SSIM_C2,
    colour_distance,
    colour_histogram,
    derive_mask,
    dilate,
    flicker,
    laplacian_variance,
    naturalness,
    preservation,
    psnr,
    psnr_score,
    realism,
    ssim,
    ssim_map,
    temporal_error,
)
from .report import EditPreview, EvalReport, make_preview, render_html
from .score import (
    DIMENSION_KEYS,
    JUDGE_QUESTIONS,
    JUDGE_THRESHOLD,
    UNCATEGORISED,
    EditScore,
    aggregate,
    judge_agreement,
    judge_item,
    roc_auc,
    score_edit,
)
from .verifiers import (
    COLOUR_TOL,
    OPERATION_ALIASES,
    VERIFIERS,
    anchored,
    dominant_colour,
    edit_accuracy,
    generic_accuracy,
    operation_parts,
    position_accuracy,
    presence_accuracy,
    recolour_accuracy,
    replace_accuracy,
    style_accuracy,
)

__all__ = [
    "CLIP_FPS",
    "COLOUR_TOL",
    "DIMENSION_KEYS",
    "JUDGE_QUESTIONS",
    "JUDGE_THRESHOLD",
    "MASK_DERIVE_TOL",
    "OPERATION_ALIASES",
    "PSNR_CAP",
    "SSIM_C1",
    "SSIM_C2",
    "UNCATEGORISED",
    "VERIFIERS",
    "EditPreview",
    "EditScore",
    "EvalReport",
    "aggregate",
    "align",
    "anchored",
    "colour_distance",
    "colour_histogram",
    "derive_mask",
    "dilate",
    "dominant_colour",
    "edit_accuracy",
    "evaluate",
    "flicker",
    "generic_accuracy",
    "judge_agreement",
    "judge_item",
    "laplacian_variance",
    "make_preview",
    "manifest_extras",
    "naturalness",
    "operation_parts",
    "position_accuracy",
    "presence_accuracy",
    "preservation",
    "psnr",
    "psnr_score",
    "realism",
    "recolour_accuracy",
    "render_html",
    "replace_accuracy",
    "roc_auc",
    "score_edit",
    "ssim",
    "ssim_map",
    "style_accuracy",
    "temporal_error",
]
