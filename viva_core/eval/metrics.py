"""The pixel-level scores of the exact benchmark: frame and mask inputs, preservation (PC: PSNR, SSIM),
temporal naturalness (GN) and the realism proxy (GR). Formulas: the package docstring."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError

MASK_DERIVE_TOL = 0.1  # no mask video: pixels where source and target differ by more (any channel)
PRESERVE_MARGIN = 2  # pixels around the mask left out of preservation
MIN_OUTSIDE_FRACTION = 0.01
# spill: cells of SPILL_CELL^2 pixels outside the edit whose mean colour moved by > SPILL_THRESHOLD (any channel)
SPILL_CELL, SPILL_THRESHOLD = 4, 0.15
PSNR_CAP, PSNR_FLOOR, PSNR_SPAN = 100.0, 10.0, 40.0
SSIM_WINDOW, SSIM_SIGMA, SSIM_C1, SSIM_C2 = 11, 1.5, 0.01**2, 0.03**2
TAU_FLICKER = 0.02
TAU_TEMPORAL = 0.05
HIST_BINS = 8


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
    return checked_range(t, name)


def checked_range(t: torch.Tensor, name: str) -> torch.Tensor:
    """Float frames of any leading shape (one clip or a batch) with NaN/Inf refused, clamped to 0..1."""
    if not _finite(t):
        raise InputError(f"{name}: frames contain NaN/Inf.")
    return t.clamp(0.0, 1.0)


def _finite(t: torch.Tensor) -> bool:
    """No NaN/Inf in t: its min and max are finite (NaN propagates through both); one pass, ~15x faster than
    isfinite(t).all() on the CPU."""
    return t.numel() == 0 or bool(torch.isfinite(torch.stack(torch.aminmax(t))).all())


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
    """Binary dilation of [..., H, W] bool by a (2r+1)² square (pixels outside the frame count as unset): OR of
    the shifted masks along W, then along H. The same result as a (2r+1)² max-pool, ~30x faster on the CPU."""
    if radius <= 0:
        return mask
    m = mask if mask.dtype == torch.bool else mask > 0.5
    for dim in (-1, -2):
        grown = m.clone()
        for d in range(1, min(radius, m.shape[dim] - 1) + 1):
            grown.narrow(dim, d, m.shape[dim] - d).logical_or_(m.narrow(dim, 0, m.shape[dim] - d))
            grown.narrow(dim, 0, m.shape[dim] - d).logical_or_(m.narrow(dim, d, m.shape[dim] - d))
        m = grown
    return m


def colour_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-pixel Euclidean RGB distance |a − b| (0..√3), broadcasting (b may be one colour [3])."""
    return torch.linalg.vector_norm(a - b, dim=-1)


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


# ======================================================================================== preservation


def _gaussian_1d(size: int, sigma: float) -> torch.Tensor:
    k = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(k**2) / (2 * sigma**2))
    return (g / g.sum()).float()


@functools.lru_cache(maxsize=16)
def _bands(size: int, sigma: float, length: int) -> torch.Tensor:
    """The 1-D gaussian pass over `length` pixels as a banded matrix [length - size + 1, length] ("valid"
    correlation): one matmul per pass, ~10x faster than conv2d with a single channel and thousands of planes on the
    CPU. Cached: ssim_map runs per clip, and building it is a Python loop. Read-only."""
    g = _gaussian_1d(size, sigma)
    return torch.stack([F.pad(g, (i, length - size - i)) for i in range(length - size + 1)])


def ssim_map(
    x: torch.Tensor, y: torch.Tensor, *, window: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA, chunk: int = 8
) -> torch.Tensor:
    """SSIM (Wang et al. 2004) of frames [T,H,W,C] in 0..1 at every window centre: [T, H−w+1, W−w+1].

    Gaussian-weighted means, variances and covariance per channel (window `w`, shrunk to the largest odd
    size the frames fit; the gaussian is applied as two 1-D passes), then
    SSIM = (2μxμy + C1)(2σxy + C2) / ((μx² + μy² + C1)(σx² + σy² + C2)), averaged over channels.
    fp32, `chunk` frames at a time; identical inputs give exactly 1."""
    if x.shape != y.shape or x.ndim != 4:
        raise InputError(
            f"ssim needs two frame stacks [T,H,W,C] of one shape, got {tuple(x.shape)} and {tuple(y.shape)}."
        )
    size = min(window, x.shape[1], x.shape[2])
    size -= 1 - size % 2
    band_h = _bands(size, float(sigma), x.shape[1]).to(x.device)
    band_w = _bands(size, float(sigma), x.shape[2]).to(x.device)
    out = []
    for i in range(0, x.shape[0], chunk):
        a = x[i : i + chunk].permute(0, 3, 1, 2).float()
        b = y[i : i + chunk].permute(0, 3, 1, 2).float()
        n, c, h, w = a.shape
        # the five blurred quantities of all frames and channels in one separable convolution
        stack = torch.stack([a, b, a * a, b * b, a * b]).reshape(5 * n * c, 1, h, w)
        blurred = (band_h @ stack.reshape(5 * n * c, h, w) @ band_w.T).reshape(5, n, c, h - size + 1, w - size + 1)
        mu_a, mu_b, aa, bb, ab = blurred
        var_a, var_b, cov = aa - mu_a * mu_a, bb - mu_b * mu_b, ab - mu_a * mu_b
        s = ((2 * mu_a * mu_b + SSIM_C1) * (2 * cov + SSIM_C2)) / (
            (mu_a * mu_a + mu_b * mu_b + SSIM_C1) * (var_a + var_b + SSIM_C2)
        )
        out.append(s.mean(dim=1))
    return torch.cat(out)


def ssim(x: torch.Tensor, y: torch.Tensor, *, weight: torch.Tensor | None = None, **kw) -> float:
    """Mean SSIM of two frame stacks [T,H,W,C]; with `weight` [T,H,W] only window centres where it is set
    count (the map is cropped by the window radius to line up with it)."""
    return ssims(x[None], y, weight=weight, **kw)[0]


def ssims(xs: torch.Tensor, y: torch.Tensor, *, weight: torch.Tensor | None = None, **kw) -> list[float]:
    """`ssim` of each frame stack of xs [B,T,H,W,C] against one y [T,H,W,C]: one `ssim_map` over all B·T frames."""
    b, t = xs.shape[:2]
    ys = y.expand(b, *y.shape).reshape(b * t, *y.shape[1:])
    smap = ssim_map(xs.reshape(b * t, *xs.shape[2:]), ys, **kw)
    smap = smap.reshape(b, t, *smap.shape[1:])
    if weight is None:
        return smap.mean(dim=(1, 2, 3)).tolist()
    r = (xs.shape[2] - smap.shape[2]) // 2
    wt = weight[:, r : r + smap.shape[2], r : r + smap.shape[3]].float()
    if wt.sum() <= 0:
        raise InputError("ssim: the weight leaves no window centre to average over.")
    return ((smap * wt).sum(dim=(1, 2, 3)) / wt.sum()).tolist()


def psnr(x: torch.Tensor, y: torch.Tensor, *, weight: torch.Tensor | None = None) -> float:
    """10·log10(1 / MSE) over the pixels where `weight` [T,H,W] is set (all when None), capped at PSNR_CAP."""
    return psnrs(x[None], y, weight=weight)[0]


def psnrs(xs: torch.Tensor, y: torch.Tensor, *, weight: torch.Tensor | None = None) -> list[float]:
    """`psnr` of each frame stack of xs [B,T,H,W,C] against one y [T,H,W,C]."""
    sq = ((xs.double() - y.double()) ** 2).mean(dim=-1)  # [B,T,H,W]
    mse = sq.mean(dim=(1, 2, 3)) if weight is None else (sq * weight).sum(dim=(1, 2, 3)) / weight.sum()
    return [PSNR_CAP if m <= 10 ** (-PSNR_CAP / 10) else 10 * math.log10(1.0 / m) for m in mse.tolist()]


def psnr_score(value: float) -> float:
    """PSNR in dB → [0, 1]: clip((PSNR − 10) / 40)."""
    return min(1.0, max(0.0, (value - PSNR_FLOOR) / PSNR_SPAN))


def preservation(
    source: torch.Tensor, output: torch.Tensor, mask: torch.Tensor
) -> tuple[float | None, float | None, float | None]:
    """(PC, PSNR, SSIM) of the output vs the source outside the (dilated) mask; Nones when too little is outside."""
    return preservations(source, output[None], mask)[0]


def preservations(
    source: torch.Tensor, outputs: torch.Tensor, mask: torch.Tensor
) -> list[tuple[float | None, float | None, float | None]]:
    """`preservation` of each output of outputs [B,T,H,W,3] against one source and mask, batched."""
    edit_region = dilate(mask, PRESERVE_MARGIN)
    outside = ~edit_region
    if outside.float().mean() < MIN_OUTSIDE_FRACTION:
        return [(None, None, None)] * outputs.shape[0]
    composite = torch.where(edit_region.unsqueeze(-1), source, outputs)
    values_psnr = psnrs(outputs, source, weight=outside)
    try:
        values_ssim: list[float | None] = list(ssims(composite, source, weight=outside))
    except InputError:  # the outside lies only within a window radius of the border
        values_ssim = [None] * outputs.shape[0]
    return [(_mean([psnr_score(p), s]), p, s) for p, s in zip(values_psnr, values_ssim)]


def spills(source: torch.Tensor, outputs: torch.Tensor, mask: torch.Tensor) -> list[tuple[float | None, float | None]]:
    """(score, ratio) of each output of outputs [B,T,H,W,3] against one source and mask [T,H,W]: how much the edit
    spilled onto what it should have left alone. ratio = the SPILL_CELL^2 cells outside the (dilated) mask whose mean
    colour moved by more than SPILL_THRESHOLD, over the cells the mask touches (per frame where it touches none);
    score = exp(-ratio). Recolouring a second object the size of the edited one costs ratio ~1 (score 0.37) whatever
    else the edit got wrong, where PC's PSNR, already low on an editor's imperfect background, moves little (Edit-GRPO
    learned exactly that hedge: docs/small_models.md, section 59); cell means ignore the blur an editor leaves on
    edges. (None, None) when no cell lies outside the mask."""

    def cells(x: torch.Tensor) -> torch.Tensor:  # [N,H,W,C] -> [N,C,H',W'] cell means
        return F.avg_pool2d(x.permute(0, 3, 1, 2).float(), SPILL_CELL, ceil_mode=True)

    edit = dilate(mask, PRESERVE_MARGIN).float()[:, None]
    outside = F.max_pool2d(edit, SPILL_CELL, ceil_mode=True)[:, 0] == 0  # [T,H',W']
    if not outside.any():
        return [(None, None)] * outputs.shape[0]
    touched = int((F.max_pool2d(mask.float()[:, None], SPILL_CELL, ceil_mode=True) > 0).sum())
    b, t = outputs.shape[:2]
    moved = (cells(outputs.reshape(b * t, *outputs.shape[2:])) - cells(source).repeat(b, 1, 1, 1)).abs().amax(dim=1)
    changed = (moved.reshape(b, t, *moved.shape[1:]) > SPILL_THRESHOLD) & outside
    ratios = (changed.sum(dim=(1, 2, 3)).double() / max(touched, t)).tolist()
    return [(math.exp(-r), r) for r in ratios]


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
        "flicker_out": f_out,
        "flicker_gt": f_gt,
        "flicker_score": flicker_score,
        "temporal_error": error,
        "temporal_score": temporal_score,
    }


# ================================================================================================ realism

LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
LUMA = torch.tensor([0.299, 0.587, 0.114])


def laplacian_variance(frames: torch.Tensor) -> float:
    """Sharpness: variance of the 3×3 Laplacian of luma per frame, averaged over frames (0 below 3×3)."""
    if frames.shape[1] < 3 or frames.shape[2] < 3:
        return 0.0
    luma = (frames.float() @ LUMA.to(frames.device)).unsqueeze(1)
    lap = F.conv2d(luma, LAPLACIAN.to(frames.device).view(1, 1, 3, 3))
    return float(lap.flatten(1).var(dim=1, unbiased=False).mean())


def colour_histogram(frames: torch.Tensor, bins: int = HIST_BINS) -> torch.Tensor:
    """Joint RGB histogram with `bins` per channel over all pixels, normalised to sum 1: [bins³]."""
    q = (frames * bins).long().clamp_(0, bins - 1)
    index = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
    hist = torch.bincount(index.flatten(), minlength=bins**3).double()
    return hist / hist.sum()


def realism(output: torch.Tensor, target: torch.Tensor) -> tuple[float, dict]:
    """GR = ½ (min(r, 1/r) with r the sharpness ratio output/ground truth, + histogram intersection)."""
    v_out, v_gt = laplacian_variance(output), laplacian_variance(target)
    ratio = (v_out + 1e-8) / (v_gt + 1e-8)
    sharpness_score = min(ratio, 1.0 / ratio)
    palette = float(torch.minimum(colour_histogram(output), colour_histogram(target)).sum())
    return 0.5 * (sharpness_score + palette), {
        "sharpness_out": v_out,
        "sharpness_gt": v_gt,
        "sharpness_ratio": ratio,
        "sharpness_score": sharpness_score,
        "palette": palette,
    }
