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

overall = mean of EA, PC, GN, GR (those defined). The judge is scored against the verifier: label =
EA ≥ 0.5, prediction = the judge's P(Yes) to the EA question; each record also contributes the unedited
source as an output (labelled by its own verifier EA, 0 by construction), so both classes are present.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from .data import EditRecord, load_manifest, read_frames
from .errors import InputError
from .runtime import ProgressFn
from .video import format_size, read_video, uniform_frame_indices, write_video
from .safe_io import write_text_atomic

if TYPE_CHECKING:
    from .judge import Judge

PathLike = str | os.PathLike

COLOUR_TOL = 0.2            # RGB Euclidean distance (0..√3) under which two colours count as the same
MIN_SEPARATION = 0.05       # a verifier whose q(source) and q(ground truth) are closer than this falls back
MIN_CHANGE = 0.02           # generic check: floor of the source's error (an edit that changes almost nothing)
MASK_DERIVE_TOL = 0.1       # no mask video: pixels where source and target differ by more (any channel)
PRESERVE_MARGIN = 2         # pixels around the mask left out of preservation
MIN_OUTSIDE_FRACTION = 0.01
PSNR_CAP, PSNR_FLOOR, PSNR_SPAN = 100.0, 10.0, 40.0
SSIM_WINDOW, SSIM_SIGMA, SSIM_C1, SSIM_C2 = 11, 1.5, 0.01 ** 2, 0.03 ** 2
TAU_FLICKER = 0.02
TAU_TEMPORAL = 0.05
HIST_BINS = 8
SEARCH_MARGIN = 2           # pixels the object search of replace/move looks beyond the mask and box
JUDGE_THRESHOLD = 0.5
DIMENSION_KEYS = ("ea", "pc", "gn", "gr", "overall", "psnr", "ssim")
UNCATEGORISED = "uncategorised"
CLIP_FPS = 8.0              # frame rate of saved outputs when the source is an npz clip (`viva synth`'s default)
OPERATION_ALIASES = {"recolor": "recolour", "color": "recolour", "colour": "recolour", "delete": "remove",
                     "insert": "add", "translate": "move", "scale": "resize", "swap": "replace"}


# ================================================================================================ inputs

def _frames(x, name: str) -> torch.Tensor:
    """[T,H,W,3] float32 0..1 on CPU from a tensor or array (uint8 arrays are divided by 255)."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name}: expected frames [T,H,W,3] as a tensor or array, got {type(x).__name__}.")
    t = x.detach().cpu()
    t = t.float() / 255.0 if t.dtype == torch.uint8 else t.float()
    if t.ndim == 3 and t.shape[-1] == 3:
        t = t.unsqueeze(0)
    if t.ndim != 4 or t.shape[-1] != 3 or t.shape[0] < 1:
        raise InputError(f"{name}: expected frames [T,H,W,3], got shape {tuple(t.shape)}.")
    if not torch.isfinite(t).all():
        raise InputError(f"{name}: frames contain NaN/Inf.")
    return t.clamp(0.0, 1.0)


def _mask(x, name: str = "mask") -> torch.Tensor:
    """[T,H,W] bool (value > 0.5) from [T,H,W] or [T,H,W,C] (channels averaged)."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    t = x.detach().cpu().float()
    if t.ndim == 4:
        t = t.mean(dim=-1)
    if t.ndim != 3:
        raise InputError(f"{name}: expected [T,H,W] (or [T,H,W,C]), got shape {tuple(t.shape)}.")
    return t > 0.5


def derive_mask(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The edit region when no mask is given: pixels where source and target differ (any channel > 0.1),
    grown by one pixel."""
    return dilate((source - target).abs().amax(dim=-1) > MASK_DERIVE_TOL, 1)


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary dilation of [T,H,W] bool by a (2r+1)² square."""
    if radius <= 0:
        return mask
    m = mask.float().unsqueeze(1)
    return F.max_pool2d(m, 2 * radius + 1, stride=1, padding=radius).squeeze(1) > 0.5


def colour_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-pixel Euclidean RGB distance |a − b| (0..√3), broadcasting (b may be one colour [3])."""
    return torch.linalg.vector_norm(a - b, dim=-1)


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


# ======================================================================================== preservation

def _gaussian_1d(size: int, sigma: float) -> torch.Tensor:
    k = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-k ** 2 / (2 * sigma ** 2))
    return (g / g.sum()).float()


def ssim_map(x: torch.Tensor, y: torch.Tensor, *, window: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA,
             chunk: int = 8) -> torch.Tensor:
    """SSIM (Wang et al. 2004) of frames [T,H,W,C] in 0..1 at every window centre: [T, H−w+1, W−w+1].

    Gaussian-weighted means, variances and covariance per channel (window `w`, shrunk to the largest odd
    size the frames fit; the gaussian is applied as two 1-D passes), then
    SSIM = (2μxμy + C1)(2σxy + C2) / ((μx² + μy² + C1)(σx² + σy² + C2)), averaged over channels.
    fp32, `chunk` frames at a time; identical inputs give exactly 1."""
    if x.shape != y.shape or x.ndim != 4:
        raise InputError(f"ssim needs two frame stacks [T,H,W,C] of one shape, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}.")
    size = min(window, x.shape[1], x.shape[2])
    size -= 1 - size % 2
    g = _gaussian_1d(size, sigma)
    # the 1-D passes as banded matrices ("valid" correlation): one matmul each, ~10x faster than conv2d with
    # a single channel and thousands of planes on the CPU
    band_h = torch.stack([F.pad(g, (i, x.shape[1] - size - i)) for i in range(x.shape[1] - size + 1)])
    band_w = torch.stack([F.pad(g, (i, x.shape[2] - size - i)) for i in range(x.shape[2] - size + 1)])
    out = []
    for i in range(0, x.shape[0], chunk):
        a = x[i:i + chunk].permute(0, 3, 1, 2).float()
        b = y[i:i + chunk].permute(0, 3, 1, 2).float()
        n, c, h, w = a.shape
        # the five blurred quantities of all frames and channels in one separable convolution
        stack = torch.stack([a, b, a * a, b * b, a * b]).reshape(5 * n * c, 1, h, w)
        blurred = (band_h @ stack.reshape(5 * n * c, h, w) @ band_w.T).reshape(5, n, c, h - size + 1, w - size + 1)
        mu_a, mu_b, aa, bb, ab = blurred
        var_a, var_b, cov = aa - mu_a * mu_a, bb - mu_b * mu_b, ab - mu_a * mu_b
        s = ((2 * mu_a * mu_b + SSIM_C1) * (2 * cov + SSIM_C2)) / \
            ((mu_a * mu_a + mu_b * mu_b + SSIM_C1) * (var_a + var_b + SSIM_C2))
        out.append(s.mean(dim=1))
    return torch.cat(out)


def ssim(x: torch.Tensor, y: torch.Tensor, *, weight: torch.Tensor | None = None, **kw) -> float:
    """Mean SSIM of two frame stacks [T,H,W,C]; with `weight` [T,H,W] only window centres where it is set
    count (the map is cropped by the window radius to line up with it)."""
    smap = ssim_map(x, y, **kw)
    if weight is None:
        return float(smap.mean())
    r = (x.shape[1] - smap.shape[1]) // 2
    wt = weight[:, r:r + smap.shape[1], r:r + smap.shape[2]].float()
    if wt.sum() <= 0:
        raise InputError("ssim: the weight leaves no window centre to average over.")
    return float((smap * wt).sum() / wt.sum())


def psnr(x: torch.Tensor, y: torch.Tensor, *, weight: torch.Tensor | None = None) -> float:
    """10·log10(1 / MSE) over the pixels where `weight` [T,H,W] is set (all when None), capped at PSNR_CAP."""
    sq = ((x.double() - y.double()) ** 2).mean(dim=-1)
    mse = float(sq.mean()) if weight is None else float((sq * weight).sum() / weight.sum())
    return PSNR_CAP if mse <= 10 ** (-PSNR_CAP / 10) else 10 * math.log10(1.0 / mse)


def psnr_score(value: float) -> float:
    """PSNR in dB → [0, 1]: clip((PSNR − 10) / 40)."""
    return min(1.0, max(0.0, (value - PSNR_FLOOR) / PSNR_SPAN))


def preservation(source: torch.Tensor, output: torch.Tensor, mask: torch.Tensor
                 ) -> tuple[float | None, float | None, float | None]:
    """(PC, PSNR, SSIM) of the output vs the source outside the (dilated) mask; Nones when too little is outside."""
    edit_region = dilate(mask, PRESERVE_MARGIN)
    outside = ~edit_region
    if outside.float().mean() < MIN_OUTSIDE_FRACTION:
        return None, None, None
    composite = torch.where(edit_region.unsqueeze(-1), source, output)
    value_psnr = psnr(output, source, weight=outside)
    try:
        value_ssim = ssim(composite, source, weight=outside)
    except InputError:  # the outside lies only within a window radius of the border
        value_ssim = None
    return _mean([psnr_score(value_psnr), value_ssim]), value_psnr, value_ssim


# ================================================================================ temporal naturalness

def flicker(frames: torch.Tensor) -> float:
    """Mean absolute frame-to-frame difference (over pixels, channels and transitions)."""
    return float((frames[1:] - frames[:-1]).abs().mean())


def temporal_error(output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> float | None:
    """Mean |Δo − Δy| (per channel) over M_t ∪ M_{t+1} of each transition: how differently the edited
    region changes over time than in the ground truth. None when the mask is empty."""
    region = (mask[1:] | mask[:-1]).float()
    if region.sum() == 0:
        return None
    diff = ((output[1:] - output[:-1]) - (target[1:] - target[:-1])).abs().mean(dim=-1)
    return float((diff * region).sum() / region.sum())


def naturalness(output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> tuple[float | None, dict]:
    """GN = ½ (exp(−|flicker(o) − flicker(y)| / τ_f) + exp(−E / τ_t)); None for one frame."""
    if output.shape[0] < 2:
        return None, {}
    f_out, f_gt = flicker(output), flicker(target)
    flicker_score = math.exp(-abs(f_out - f_gt) / TAU_FLICKER)
    error = temporal_error(output, target, mask)
    temporal_score = None if error is None else math.exp(-error / TAU_TEMPORAL)
    return _mean([flicker_score, temporal_score]), {
        "flicker_out": f_out, "flicker_gt": f_gt, "flicker_score": flicker_score,
        "temporal_error": error, "temporal_score": temporal_score}


# ================================================================================================ realism

LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
LUMA = torch.tensor([0.299, 0.587, 0.114])


def laplacian_variance(frames: torch.Tensor) -> float:
    """Sharpness: variance of the 3×3 Laplacian of luma per frame, averaged over frames (0 below 3×3)."""
    if frames.shape[1] < 3 or frames.shape[2] < 3:
        return 0.0
    luma = (frames.float() @ LUMA).unsqueeze(1)
    lap = F.conv2d(luma, LAPLACIAN.view(1, 1, 3, 3))
    return float(lap.flatten(1).var(dim=1, unbiased=False).mean())


def colour_histogram(frames: torch.Tensor, bins: int = HIST_BINS) -> torch.Tensor:
    """Joint RGB histogram with `bins` per channel over all pixels, normalised to sum 1: [bins³]."""
    q = (frames * bins).long().clamp_(0, bins - 1)
    index = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
    hist = torch.bincount(index.flatten(), minlength=bins ** 3).double()
    return hist / hist.sum()


def realism(output: torch.Tensor, target: torch.Tensor) -> tuple[float, dict]:
    """GR = ½ (min(r, 1/r) with r the sharpness ratio output/ground truth, + histogram intersection)."""
    v_out, v_gt = laplacian_variance(output), laplacian_variance(target)
    ratio = (v_out + 1e-8) / (v_gt + 1e-8)
    sharpness_score = min(ratio, 1.0 / ratio)
    palette = float(torch.minimum(colour_histogram(output), colour_histogram(target)).sum())
    return 0.5 * (sharpness_score + palette), {"sharpness_out": v_out, "sharpness_gt": v_gt,
                                               "sharpness_ratio": ratio, "sharpness_score": sharpness_score,
                                               "palette": palette}


# ========================================================================================= edit accuracy

class _Fallback(Exception):
    """The verifier cannot judge this edit (the message says why); the generic check runs instead."""


def anchored(q_output: float, q_source: float, q_truth: float) -> float:
    """Where the output's measure lies from the source's (0) to the ground truth's (1), clipped to [0, 1]."""
    if abs(q_truth - q_source) < 1e-12:
        raise _Fallback("source and ground truth measure the same")
    return min(1.0, max(0.0, (q_output - q_source) / (q_truth - q_source)))


def _separated(q_source: float, q_truth: float, what: str) -> None:
    if abs(q_truth - q_source) < MIN_SEPARATION:
        raise _Fallback(f"{what} of source ({q_source:.3g}) and ground truth ({q_truth:.3g}) do not differ")


def _rgb(verify: dict, *keys: str) -> torch.Tensor | None:
    """The first of `keys` in verify as an RGB colour in 0..1 (0..255 values are divided by 255)."""
    for key in keys:
        value = verify.get(key)
        if value is None:
            continue
        try:
            c = torch.tensor([float(v) for v in value], dtype=torch.float32)
        except (TypeError, ValueError):
            raise _Fallback(f"verify {key}={value!r} is not a colour") from None
        if c.shape != (3,):
            raise _Fallback(f"verify {key}={value!r} is not an RGB triple")
        return c / 255.0 if float(c.max()) > 1.0 else c
    return None


def generic_accuracy(source, output, target, mask) -> tuple[float, dict]:
    """EA = clip(1 − MAE_R(o, y) / max(MAE_R(s, y), MIN_CHANGE)) over R = the mask pixels the edit changes
    (source and ground truth differ by > MASK_DERIVE_TOL in a channel); all of the mask when none does,
    the whole frame when the mask is empty."""
    region = mask if mask.any() else torch.ones_like(mask)
    changed = region & ((source - target).abs().amax(dim=-1) > MASK_DERIVE_TOL)
    region = changed if changed.any() else region
    w = region.float()

    def mae(x: torch.Tensor) -> float:
        return float(((x - target).abs().mean(dim=-1) * w).sum() / w.sum())

    err_out, err_src = mae(output), mae(source)
    ea = min(1.0, max(0.0, 1.0 - err_out / max(err_src, MIN_CHANGE)))
    return ea, {"verifier": "generic", "error": err_out, "source_error": err_src, "pixels": int(region.sum())}


def recolour_accuracy(source, output, target, mask, verify: dict) -> tuple[float, dict]:
    """q = mean |x − c| over pixels where the ground truth shows colour c and the source did not."""
    c = _rgb(verify, "target_rgb", "rgb")
    if c is None:
        raise _Fallback("verify has no target_rgb")
    region = mask & (colour_distance(target, c) < COLOUR_TOL) & (colour_distance(source, c) >= COLOUR_TOL)
    if not region.any():
        raise _Fallback("no pixel of the mask shows target_rgb in the ground truth")
    w = region.float()

    def q(x: torch.Tensor) -> float:
        return float((colour_distance(x, c) * w).sum() / w.sum())

    q_out, q_src, q_gt = q(output), q(source), q(target)
    _separated(q_src, q_gt, "colour distances")
    return anchored(q_out, q_src, q_gt), {"verifier": "recolour", "colour_distance": q_out,
                                          "source_colour_distance": q_src, "truth_colour_distance": q_gt,
                                          "pixels": int(region.sum())}


def presence_accuracy(source, output, target, mask, verify: dict, *, present: bool) -> tuple[float, dict]:
    """q = fraction of the changed mask pixels where x is closer to the wanted look than to the unwanted one
    (add: the object (rgb, else the ground truth) rather than the source; remove: the ground truth's
    background rather than the object (the source, or rgb))."""
    present = bool(verify.get("present", present))
    c = _rgb(verify, "rgb", "object_rgb")
    region = mask & (colour_distance(source, target) >= COLOUR_TOL)
    if c is not None:  # only where the object's colour is (add: in the ground truth; remove: in the source)
        region &= colour_distance(target if present else source, c) < COLOUR_TOL
    if not region.any():
        raise _Fallback("no mask pixel differs between source and ground truth")
    wanted = (c if c is not None else target) if present else target
    unwanted = source if present else (c if c is not None else source)
    w = region.float()

    def q(x: torch.Tensor) -> float:
        closer = colour_distance(x, wanted) < colour_distance(x, unwanted)
        return float((closer.float() * w).sum() / w.sum())

    q_out, q_src, q_gt = q(output), q(source), q(target)
    _separated(q_src, q_gt, "wanted-look fractions")
    object_fraction = q_out if present else 1.0 - q_out
    return anchored(q_out, q_src, q_gt), {"verifier": "add" if present else "remove", "want_present": present,
                                          "object_seen": object_fraction > 0.5, "wanted_fraction": q_out,
                                          "truth_wanted_fraction": q_gt, "pixels": int(region.sum())}


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = int((a | b).sum())
    return int((a & b).sum()) / union if union else 0.0


def dominant_colour(pixels: torch.Tensor, levels: int = 16) -> torch.Tensor:
    """The most common colour of pixels [N,3]: the fullest cell of a `levels`³ RGB grid, then the per-channel
    median of the pixels in it (robust to codec noise and to a minority of other colours)."""
    q = (pixels * levels).long().clamp_(0, levels - 1)
    cell = (q[:, 0] * levels + q[:, 1]) * levels + q[:, 2]
    return pixels[cell == torch.bincount(cell).argmax()].median(dim=0).values


def _object_colour(verify: dict, target: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """The edited object's colour: verify rgb/target_rgb, else the ground truth's dominant colour in `where`."""
    c = _rgb(verify, "rgb", "target_rgb")
    if c is not None:
        return c
    if not where.any():
        raise _Fallback("no pixel to read the object's colour from")
    return dominant_colour(target[where])


def replace_accuracy(source, output, target, mask, verify: dict) -> tuple[float, dict]:
    """q = IoU of the blob of the new object's colour in x with the ground truth's, pooled over frames. The
    colour is verify's rgb, else the ground truth's dominant colour in the mask (inside the bboxes if given)."""
    where = mask
    if verify.get("bbox") is not None:
        box_masks, _ = _box_masks(verify, *target.shape[:3])
        where = mask & box_masks if (mask & box_masks).any() else mask
    c = _object_colour(verify, target, where)
    area = dilate(mask, SEARCH_MARGIN)

    def blob(x: torch.Tensor) -> torch.Tensor:
        return area & (colour_distance(x, c) < COLOUR_TOL)

    truth = blob(target)
    if not truth.any():
        raise _Fallback("the ground truth shows no blob of the object's colour in the mask")
    q_out, q_src = _iou(blob(output), truth), _iou(blob(source), truth)
    _separated(q_src, 1.0, "blob IoUs")
    return anchored(q_out, q_src, 1.0), {"verifier": "replace", "iou": q_out, "source_iou": q_src,
                                         "object_rgb": [round(float(v), 4) for v in c]}


def _boxes(verify: dict, frames: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """verify["bbox"] as [T,4] pixel boxes (x0, y0, x1, y1) and which frames have one (None entries: the
    object is not in view); one box [x0, y0, x1, y1] is used for every frame."""
    value = verify.get("bbox")
    if not isinstance(value, list) or not value:
        raise _Fallback("verify has no bbox")
    rows = [value] * frames if not isinstance(value[0], (list, type(None))) else value
    if len(rows) < frames:
        raise _Fallback(f"verify bbox has {len(rows)} frames, the clip {frames}")
    valid = torch.tensor([r is not None for r in rows[:frames]])
    try:
        boxes = torch.tensor([r if r is not None else [0, 0, 0, 0] for r in rows[:frames]], dtype=torch.float64)
    except (TypeError, ValueError):
        raise _Fallback("verify bbox is not a list of [x0, y0, x1, y1]") from None
    if boxes.shape != (frames, 4) or not valid.any():
        raise _Fallback("verify bbox has no [x0, y0, x1, y1] box")
    if float(boxes.max()) <= 1.0:  # fractions of the frame
        boxes *= torch.tensor([width, height, width, height], dtype=torch.float64)
    return boxes, valid


def _box_masks(verify: dict, frames: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[T,H,W] bool of the verify boxes (empty where a frame has none) and the frames that have one."""
    boxes, valid = _boxes(verify, frames, height, width)
    masks = torch.zeros(frames, height, width, dtype=torch.bool)
    for t in torch.nonzero(valid).flatten().tolist():
        masks[t] = _box_mask(boxes[t].tolist(), height, width)
    return masks, valid


def _box_iou(a: Sequence[float] | None, b: Sequence[float]) -> float:
    if a is None:
        return 0.0
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _box_mask(box: Sequence[float], height: int, width: int) -> torch.Tensor:
    m = torch.zeros(height, width, dtype=torch.bool)
    x0, y0 = max(0, math.floor(box[0])), max(0, math.floor(box[1]))
    x1, y1 = min(width, math.ceil(box[2])), min(height, math.ceil(box[3]))
    if x1 > x0 and y1 > y0:
        m[y0:y1, x0:x1] = True
    return m


def position_accuracy(source, output, target, mask, verify: dict) -> tuple[float, dict]:
    """q = mean over the frames with a verify box of IoU(detected box of the object, bbox_t); the object is
    the set of pixels of its colour (verify rgb, else the ground truth's dominant colour inside the boxes)
    in dilate(M ∪ bbox_t)."""
    frames, height, width = target.shape[:3]
    boxes, valid = _boxes(verify, frames, height, width)
    box_masks, _ = _box_masks(verify, frames, height, width)
    c = _object_colour(verify, target, box_masks & mask if (box_masks & mask).any() else box_masks)
    area = dilate(mask | box_masks, SEARCH_MARGIN)
    kept = torch.nonzero(valid).flatten().tolist()

    def q(x: torch.Tensor) -> float:
        found = area & (colour_distance(x, c) < COLOUR_TOL)
        total = 0.0
        for t in kept:
            ys, xs = torch.nonzero(found[t], as_tuple=True)
            box = None if ys.numel() == 0 else \
                [float(xs.min()), float(ys.min()), float(xs.max()) + 1, float(ys.max()) + 1]
            total += _box_iou(box, boxes[t].tolist())
        return total / len(kept)

    q_out, q_src, q_gt = q(output), q(source), q(target)
    _separated(q_src, q_gt, "box IoUs")
    return anchored(q_out, q_src, q_gt), {"verifier": "position", "box_iou": q_out, "source_box_iou": q_src,
                                          "truth_box_iou": q_gt, "frames": len(kept),
                                          "object_rgb": [round(float(v), 4) for v in c]}


def style_accuracy(source, output, target, mask, verify: dict) -> tuple[float, dict]:
    """grayscale: q = mean chroma (max − min over RGB) over the mask; other styles fall back."""
    style = str(verify.get("style", "")).lower()
    if style not in ("grayscale", "greyscale", "gray", "grey"):
        raise _Fallback(f"no verifier for style {style!r}")
    region = (mask if mask.any() else torch.ones_like(mask)).float()

    def q(x: torch.Tensor) -> float:
        chroma = x.amax(dim=-1) - x.amin(dim=-1)
        return float((chroma * region).sum() / region.sum())

    q_out, q_src, q_gt = q(output), q(source), q(target)
    _separated(q_src, q_gt, "chroma")
    return anchored(q_out, q_src, q_gt), {"verifier": "grayscale", "chroma": q_out, "source_chroma": q_src,
                                          "truth_chroma": q_gt}


VERIFIERS: dict[str, Callable[..., tuple[float, dict]]] = {
    "recolour": recolour_accuracy,
    "add": lambda s, o, y, m, v: presence_accuracy(s, o, y, m, v, present=True),
    "remove": lambda s, o, y, m, v: presence_accuracy(s, o, y, m, v, present=False),
    "replace": replace_accuracy,
    "replace_shape": replace_accuracy,
    "move": position_accuracy,
    "resize": position_accuracy,
    "style": style_accuracy,
    # re-simulated motion (viva_core.synth's causal edits): where the object is, frame by frame
    "no_bounce": position_accuracy,
    "speed_change": position_accuracy,
    "reverse_direction": position_accuracy,
}


def operation_parts(operation: str | None) -> list[str]:
    """'Recolor+Move' → ['recolour', 'move'] (lower case, aliases resolved); [] for none."""
    if not operation:
        return []
    return [OPERATION_ALIASES.get(p.strip().lower(), p.strip().lower()) for p in operation.split("+") if p.strip()]


def _part_verify(verify: dict | None, part: str, raw_parts: Sequence[str]) -> dict:
    """The verify entry of one operation: verify[part] when keyed by operation, else the flat dict."""
    if not isinstance(verify, dict):
        return {}
    for key in (part, *raw_parts):
        if isinstance(verify.get(key), dict):
            return verify[key]
    return verify


def edit_accuracy(source, output, target, mask, verify: dict | None, operation: str | None) -> tuple[float, dict]:
    """EA of one edit: the operation's verifier (mean over the parts of a hybrid), generic where none fits."""
    parts = operation_parts(operation)
    raw = [p.strip() for p in (operation or "").split("+")]
    if not parts:
        return generic_accuracy(source, output, target, mask)
    results: list[tuple[float, dict]] = []
    for part in parts:
        check = VERIFIERS.get(part)
        try:
            if check is None:
                raise _Fallback(f"no verifier for operation '{part}'")
            results.append(check(source, output, target, mask, _part_verify(verify, part, raw)))
        except _Fallback as why:
            ea, details = generic_accuracy(source, output, target, mask)
            results.append((ea, {**details, "fallback": str(why)}))
    if len(results) == 1:
        return results[0]
    return _mean([ea for ea, _ in results]), {"verifier": "hybrid",
                                              "parts": {p: {"ea": ea, **d} for p, (ea, d) in zip(parts, results)}}


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


def score_edit(source, output, target, mask, verify: dict | None, operation: str | None, *, index: int = 0,
               category: str | None = None) -> EditScore:
    """Score `output` against the source, the ground truth `target` and the edit `mask` (all of one shape:
    frames [T,H,W,3] 0..1, mask [T,H,W] or [T,H,W,C]; None derives the mask from source vs target)."""
    s, o, y = _frames(source, "source"), _frames(output, "output"), _frames(target, "target")
    if not (s.shape == o.shape == y.shape):
        raise InputError(f"source {tuple(s.shape)}, output {tuple(o.shape)} and target {tuple(y.shape)} must have "
                         "one shape [T,H,W,3]; `evaluate` aligns an editor's output before scoring.")
    m = derive_mask(s, y) if mask is None else _mask(mask)
    if m.shape != s.shape[:3]:
        raise InputError(f"mask {tuple(m.shape)} does not match the frames {tuple(s.shape[:3])} (T, H, W).")
    ea, ea_details = edit_accuracy(s, o, y, m, verify, operation)
    pc, value_psnr, value_ssim = preservation(s, o, m)
    gn, gn_details = naturalness(o, y, m)
    gr, gr_details = realism(o, y)
    details = {"ea": ea_details, "pc": {"psnr_score": None if value_psnr is None else psnr_score(value_psnr)},
               "gn": gn_details, "gr": gr_details, "mask_fraction": float(m.float().mean()),
               "mask_derived": mask is None}
    return EditScore(index=index, operation="+".join(operation_parts(operation)) or "unknown",
                     category=category or UNCATEGORISED, ea=ea, pc=pc, gn=gn, gr=gr,
                     overall=_mean([ea, pc, gn, gr]), psnr=value_psnr, ssim=value_ssim, details=details)


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
        ranks[order[i:j + 1]] = (i + j) / 2 + 1  # average of ranks i+1 .. j+1
        i = j + 1
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def judge_agreement(items: list[dict], threshold: float = JUDGE_THRESHOLD) -> dict:
    """Accuracy of `p_yes ≥ threshold` against `label`, and ROC-AUC of p_yes, over items
    {index, kind, p_yes, ea, label}."""
    p = [it["p_yes"] for it in items]
    labels = [bool(it["label"]) for it in items]
    accuracy = sum((pi >= threshold) == li for pi, li in zip(p, labels)) / len(items) if items else None
    return {"n": len(items), "positives": sum(labels), "negatives": len(labels) - sum(labels),
            "threshold": threshold, "accuracy": accuracy, "roc_auc": roc_auc(p, labels), "items": items}


# ============================================================================================ evaluate

def aggregate(scores: Sequence[EditScore]) -> dict:
    """Count and mean of each score (undefined ones left out of their mean)."""
    return {"count": len(scores), **{k: _mean([getattr(s, k) for s in scores]) for k in DIMENSION_KEYS}}


@dataclass
class EditPreview:
    """A few frames of one edit for the HTML report, as PNG data URIs per row (source, output, ground truth)."""

    index: int
    instruction: str
    rows: dict[str, list[str]]


@dataclass
class EvalReport:
    """Per-edit scores and their means per category (`type`), per operation and over all (`aggregate` rows:
    count, ea, pc, gn, gr, overall, psnr, ssim); `judge_agreement` when a judge was scored."""

    manifest: str
    scores: list[EditScore]
    by_category: dict[str, dict]
    by_operation: dict[str, dict]
    overall: dict
    judge_agreement: dict | None = None
    previews: list[EditPreview] = field(default_factory=list)  # HTML only, not in the JSON

    def to_json(self) -> str:
        return json.dumps({"manifest": self.manifest, "overall": self.overall, "by_category": self.by_category,
                           "by_operation": self.by_operation, "judge_agreement": self.judge_agreement,
                           "scores": [asdict(s) for s in self.scores]}, ensure_ascii=False, indent=2)

    def table(self) -> str:
        """Plain-text tables per category and per operation, and the overall row (for the terminal)."""
        lines = []
        for title, groups in (("category", self.by_category), ("operation", self.by_operation),
                              ("", {"all": self.overall})):
            lines.append(f"{title or 'overall':<24}{'n':>5}" + "".join(f"{k.upper():>8}" for k in DIMENSION_KEYS))
            for name, row in groups.items():
                lines.append(f"{name[:23]:<24}{row['count']:>5}"
                             + "".join(_fmt(row[k]).rjust(8) for k in DIMENSION_KEYS))
            lines.append("")
        if self.judge_agreement:
            j = self.judge_agreement
            lines.append(f"judge vs verifier: accuracy {_fmt(j['accuracy'])}, ROC-AUC {_fmt(j['roc_auc'])} "
                         f"({j['positives']} positives, {j['negatives']} negatives)")
        return "\n".join(lines).rstrip()

    def write(self, out_dir: PathLike) -> Path:
        """Write report.json and report.html (self-contained) into `out_dir`; return the folder."""
        out = Path(out_dir).expanduser()
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "report.json", self.to_json())
        write_text_atomic(out / "report.html", render_html(self))
        return out


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"




def manifest_extras(path: PathLike) -> dict[int, dict]:
    """The fields `load_manifest` ignores (operation, verify, attribute, referring, ...) per line number."""
    extras: dict[int, dict] = {}
    for number, line in enumerate(Path(path).expanduser().read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                extras[number] = obj
    return extras


def align(output: torch.Tensor, source: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, dict]:
    """Bring the output and the references to one shape: the first min(T) frames; an output smaller in both
    sides is taken as a center crop (`conform_frames`' crop mode; `edit` itself returns the source's size) and the
    references are cropped alike; any other size is resized (bilinear) to the references'. Returns (output, source,
    target, mask, how)."""
    t = min(output.shape[0], source.shape[0])
    output, source, target = output[:t], source[:t], target[:t]
    mask = None if mask is None else mask[:t]
    how: dict = {"frames": t, "top": 0, "left": 0}
    (h, w), (rh, rw) = output.shape[1:3], source.shape[1:3]
    if (h, w) != (rh, rw):
        if h <= rh and w <= rw:
            top, left = (rh - h) // 2, (rw - w) // 2
            source, target = source[:, top:top + h, left:left + w], target[:, top:top + h, left:left + w]
            mask = None if mask is None else mask[:, top:top + h, left:left + w]
            how.update(top=top, left=left, note=f"references center-cropped to {format_size(h, w)}")
        else:
            output = F.interpolate(output.permute(0, 3, 1, 2), size=(rh, rw), mode="bilinear",
                                   align_corners=False).permute(0, 2, 3, 1).clamp(0, 1)
            how["note"] = f"output resized from {format_size(h, w)} to {format_size(rh, rw)}"
    return output, source, target, mask, how


def _shift_boxes(verify, frames: int, top: int, left: int, height: int, width: int):
    """A copy of verify whose `bbox`/`source_bbox` lists are cut to `frames` and moved into the crop at
    (top, left) of a height x width frame (0..1 fractions become pixels)."""
    if not isinstance(verify, dict):
        return verify
    out = {}
    for key, value in verify.items():
        if key not in ("bbox", "source_bbox") or not isinstance(value, list) or not value:
            out[key] = _shift_boxes(value, frames, top, left, height, width)
            continue
        single = not isinstance(value[0], (list, type(None)))
        rows = [value] if single else value
        numbers = [float(x) for row in rows if row is not None for x in row]
        sx, sy = (width, height) if numbers and max(numbers) <= 1.0 else (1, 1)
        moved = [None if row is None else [row[0] * sx - left, row[1] * sy - top, row[2] * sx - left,
                                           row[3] * sy - top] for row in rows]
        out[key] = moved[0] if single else moved[:frames]
    return out


def _data_uri(frame: torch.Tensor, max_side: int) -> str:
    from .vlm import to_pil_image

    buf = io.BytesIO()
    to_pil_image(frame, max_side=max_side).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def make_preview(index: int, instruction: str, source, output, target, *, frames: int = 3,
                 max_side: int = 192) -> EditPreview:
    """PNG data URIs of `frames` uniformly spaced frames of source, output and ground truth."""
    picks = uniform_frame_indices(output.shape[0], frames)
    return EditPreview(index=index, instruction=instruction,
                       rows={name: [_data_uri(x[i], max_side) for i in picks]
                             for name, x in (("source", source), ("output", output), ("ground truth", target))})


def _as_output(result) -> torch.Tensor:
    """An editor_fn's result: frames, or an object with `.frames` (EditResult)."""
    return _frames(getattr(result, "frames", result), "editor output")


def evaluate(manifest: PathLike, editor_fn: Callable[[EditRecord, torch.Tensor], torch.Tensor] | None = None, *,
             outputs_dir: PathLike | None = None, judge: "Judge | None" = None, limit: int | None = None,
             progress: ProgressFn | None = None, max_frames: int | None = None, judge_frames: int = 4,
             previews: int = 8) -> EvalReport:
    """Score every record of a manifest with ground truth (target_video; mask_video optional).

    Outputs come from `editor_fn(record, source_frames)` (saved as `outputs_dir/<index>.mp4` when
    `outputs_dir` is given), or without `editor_fn` from those files. All inputs are checked before any
    compute. With a `judge`, its P(Yes) to the EA question is compared with the verifier (see module doc).
    `previews` edits get frame strips in the HTML report."""
    if editor_fn is None and outputs_dir is None:
        raise InputError("evaluate needs outputs: pass editor_fn (run an editor) or outputs_dir (a folder of "
                         "<index>.mp4 edits).")
    if limit is not None and limit < 1:
        raise InputError(f"limit={limit} must be at least 1, or None for every record.")
    records = load_manifest(manifest, max_frames=max_frames)[:limit]
    extras = manifest_extras(manifest)
    out_dir = None if outputs_dir is None else Path(outputs_dir).expanduser()
    problems = [f"line {r.line}: no target_video; the exact benchmark needs the ground-truth edit"
                for r in records if r.target_video is None]
    if editor_fn is None:
        problems += [f"line {r.line}: output {out_dir / f'{r.index}.mp4'} not found"
                     for r in records if not (out_dir / f"{r.index}.mp4").is_file()]
    if problems:
        raise InputError(f"{manifest}: {len(problems)} record(s) cannot be scored:\n" +
                         "\n".join(f"  {p}" for p in problems[:50]))

    scores: list[EditScore] = []
    shown: list[EditPreview] = []
    judged: list[dict] = []
    for done, record in enumerate(records, start=1):
        extra = extras.get(record.line, {})
        source_frames, fps = read_frames(record.source_video, max_frames)
        target = read_frames(record.target_video, max_frames, "target_video")[0]
        mask = None if record.mask_video is None else \
            read_frames(record.mask_video, max_frames, "mask_video")[0].mean(dim=-1)
        if editor_fn is not None:
            output = _as_output(editor_fn(record, source_frames))
            if out_dir is not None:
                write_video(out_dir / f"{record.index}.mp4", output, fps or CLIP_FPS)
        else:
            output = read_video(out_dir / f"{record.index}.mp4", max_frames=max_frames, with_audio=False).frames
        output, source, target, mask, how = align(output, source_frames, target, mask)
        verify = extra.get("verify") if isinstance(extra.get("verify"), dict) else None
        if verify is not None and (how["top"] or how["left"] or how["frames"] < source_frames.shape[0]):
            verify = _shift_boxes(verify, how["frames"], how["top"], how["left"], *source_frames.shape[1:3])
        operation = extra.get("operation") if isinstance(extra.get("operation"), str) else None
        score = score_edit(source, output, target, mask, verify, operation, index=record.index,
                           category=record.type)
        score.details.update(instruction=record.instruction, line=record.line, alignment=how,
                             verify_given=verify is not None,
                             **{k: extra[k] for k in ("attribute", "referring") if k in extra})
        if judge is not None:
            verdict = judge.score(source, output, record.instruction, num_frames=judge_frames)
            baseline = judge.score(source, source, record.instruction, num_frames=judge_frames)
            edit_region = derive_mask(source, target) if mask is None else _mask(mask)
            source_ea = edit_accuracy(source, source, target, edit_region, verify, operation)[0]
            score.details["judge"] = dict(verdict.scores)
            for kind, p_yes, ea in (("output", verdict.scores["EA"], score.ea),
                                    ("source", baseline.scores["EA"], source_ea)):
                judged.append({"index": record.index, "kind": kind, "p_yes": float(p_yes), "ea": ea,
                               "label": ea >= JUDGE_THRESHOLD})
        scores.append(score)
        if len(shown) < previews:
            shown.append(make_preview(record.index, record.instruction, source, output, target))
        if progress is not None:
            progress(done, len(records))

    def grouped(key: Callable[[EditScore], str]) -> dict[str, dict]:
        groups: dict[str, list[EditScore]] = {}
        for s in scores:
            groups.setdefault(key(s), []).append(s)
        return {name: aggregate(group) for name, group in sorted(groups.items())}

    return EvalReport(manifest=str(manifest), scores=scores, by_category=grouped(lambda s: s.category),
                      by_operation=grouped(lambda s: s.operation), overall=aggregate(scores),
                      judge_agreement=judge_agreement(judged) if judge is not None else None, previews=shown)


# ================================================================================================ HTML

CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:22px}h2{font-size:18px;margin-top:28px}
table{border-collapse:collapse;margin:8px 0;font-size:13px;background:#fff}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:right}th{background:#f0f0f0}
td.name,th.name{text-align:left}
.edit{background:#fff;border:1px solid #ddd;border-radius:6px;padding:12px;margin:12px 0}
.grid{display:grid;grid-template-columns:110px repeat(var(--n),auto);gap:4px;align-items:center;justify-content:start}
.grid img{image-rendering:pixelated;width:160px;border:1px solid #ccc}
.label{font-weight:600;font-size:13px}.muted{color:#777;font-size:12px}
"""


def _score_table(title: str, groups: dict[str, dict]) -> str:
    head = "".join(f"<th>{k.upper()}</th>" for k in DIMENSION_KEYS)
    rows = "".join(f"<tr><td class=name>{html.escape(name)}</td><td>{row['count']}</td>"
                   + "".join(f"<td>{_fmt(row[k])}</td>" for k in DIMENSION_KEYS) + "</tr>"
                   for name, row in groups.items())
    return f"<h2>{html.escape(title)}</h2><table><tr><th class=name>{html.escape(title.split()[-1])}</th>" \
           f"<th>n</th>{head}</tr>{rows}</table>"


def render_html(report: EvalReport) -> str:
    """One self-contained HTML page: score tables, judge agreement, per-edit scores and frame strips."""
    parts = [f"<!doctype html><html><head><meta charset=utf-8><title>VIVA eval</title><style>{CSS}</style>"
             f"</head><body><h1>VIVA exact benchmark</h1><p class=muted>{html.escape(report.manifest)} · "
             f"{len(report.scores)} edits · scores in [0, 1] (PSNR in dB)</p>",
             _score_table("Overall", {"all": report.overall}),
             _score_table("By category", report.by_category),
             _score_table("By operation", report.by_operation)]
    if report.judge_agreement:
        j = report.judge_agreement
        parts.append(f"<h2>Judge vs verifier</h2><table><tr><th>n</th><th>positives</th><th>negatives</th>"
                     f"<th>accuracy @ {j['threshold']}</th><th>ROC-AUC</th></tr><tr><td>{j['n']}</td>"
                     f"<td>{j['positives']}</td><td>{j['negatives']}</td><td>{_fmt(j['accuracy'])}</td>"
                     f"<td>{_fmt(j['roc_auc'])}</td></tr></table>")
    head = "".join(f"<th>{k.upper()}</th>" for k in DIMENSION_KEYS)
    rows = "".join(f"<tr><td>{s.index}</td><td class=name>{html.escape(s.category)}</td>"
                   f"<td class=name>{html.escape(s.operation)}</td>"
                   f"<td class=name>{html.escape(str(s.details.get('instruction', '')))}</td>"
                   + "".join(f"<td>{_fmt(getattr(s, k))}</td>" for k in DIMENSION_KEYS) + "</tr>"
                   for s in report.scores)
    parts.append(f"<h2>Edits</h2><table><tr><th>#</th><th class=name>category</th><th class=name>operation</th>"
                 f"<th class=name>instruction</th>{head}</tr>{rows}</table>")
    by_index = {s.index: s for s in report.scores}
    if report.previews:
        parts.append("<h2>Frames</h2>")
    for p in report.previews:
        s = by_index.get(p.index)
        line = "" if s is None else " · ".join(f"{k.upper()} {_fmt(getattr(s, k))}" for k in DIMENSION_KEYS)
        n = max(len(v) for v in p.rows.values())
        grid = "".join(f"<div class=label>{html.escape(name)}</div>" +
                       "".join(f"<img src=\"{uri}\" alt=\"{html.escape(name)} frame\">" for uri in uris)
                       for name, uris in p.rows.items())
        parts.append(f"<div class=edit><div><b>#{p.index}</b> {html.escape(p.instruction)}</div>"
                     f"<div class=muted>{html.escape(line)}</div><div class=grid style=\"--n:{n}\">{grid}</div></div>")
    parts.append("</body></html>")
    return "\n".join(parts)
