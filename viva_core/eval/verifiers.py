"""Edit accuracy (EA): one verifier per operation places the output between the source (0) and the ground
truth (1); a verifier that cannot judge an edit falls back to the generic check (package docstring)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from .metrics import MASK_DERIVE_TOL, _mean, colour_distance, dilate

COLOUR_TOL = 0.2  # RGB Euclidean distance (0..√3) under which two colours count as the same
MIN_SEPARATION = 0.05  # a verifier whose q(source) and q(ground truth) are closer than this falls back
MIN_CHANGE = 0.02  # generic check: floor of the source's error (an edit that changes almost nothing)
SEARCH_MARGIN = 2  # pixels the object search of replace/move looks beyond the mask and box
OPERATION_ALIASES = {
    "recolor": "recolour",
    "color": "recolour",
    "colour": "recolour",
    "delete": "remove",
    "insert": "add",
    "translate": "move",
    "scale": "resize",
    "swap": "replace",
}


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
    return anchored(q_out, q_src, q_gt), {
        "verifier": "recolour",
        "colour_distance": q_out,
        "source_colour_distance": q_src,
        "truth_colour_distance": q_gt,
        "pixels": int(region.sum()),
    }


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
    return anchored(q_out, q_src, q_gt), {
        "verifier": "add" if present else "remove",
        "want_present": present,
        "object_seen": object_fraction > 0.5,
        "wanted_fraction": q_out,
        "truth_wanted_fraction": q_gt,
        "pixels": int(region.sum()),
    }


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
    return anchored(q_out, q_src, 1.0), {
        "verifier": "replace",
        "iou": q_out,
        "source_iou": q_src,
        "object_rgb": [round(float(v), 4) for v in c],
    }


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
            box = (
                None
                if ys.numel() == 0
                else [float(xs.min()), float(ys.min()), float(xs.max()) + 1, float(ys.max()) + 1]
            )
            total += _box_iou(box, boxes[t].tolist())
        return total / len(kept)

    q_out, q_src, q_gt = q(output), q(source), q(target)
    _separated(q_src, q_gt, "box IoUs")
    return anchored(q_out, q_src, q_gt), {
        "verifier": "position",
        "box_iou": q_out,
        "source_box_iou": q_src,
        "truth_box_iou": q_gt,
        "frames": len(kept),
        "object_rgb": [round(float(v), 4) for v in c],
    }


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
    return anchored(q_out, q_src, q_gt), {
        "verifier": "grayscale",
        "chroma": q_out,
        "source_chroma": q_src,
        "truth_chroma": q_gt,
    }


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
    return _mean([ea for ea, _ in results]), {
        "verifier": "hybrid",
        "parts": {p: {"ea": ea, **d} for p, (ea, d) in zip(parts, results)},
    }
