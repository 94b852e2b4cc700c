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


def _rgb(verify: dict, *keys: str, device: torch.device | None = None) -> torch.Tensor | None:
    """The first of `keys` in verify as an RGB colour in 0..1 (0..255 values are divided by 255), on `device`."""
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
        return (c / 255.0 if float(c.max()) > 1.0 else c).to(device)
    return None


def _weighted_mean(values: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Mean of values [B,T,H,W] over the pixels where w [T,H,W] is set (w sums to > 0), per output: [B]."""
    return (values * w).sum(dim=(1, 2, 3)) / w.sum()


def generic_accuracy(source, outputs, target, mask) -> list[tuple[float, dict]]:
    """EA = clip(1 − MAE_R(o, y) / max(MAE_R(s, y), MIN_CHANGE)) over R = the mask pixels the edit changes
    (source and ground truth differ by > MASK_DERIVE_TOL in a channel); all of the mask when none does,
    the whole frame when the mask is empty. One result per output of `outputs` [B,T,H,W,3]."""
    region = mask if mask.any() else torch.ones_like(mask)
    changed = region & ((source - target).abs().amax(dim=-1) > MASK_DERIVE_TOL)
    region = changed if changed.any() else region
    w = region.float()

    def mae(x: torch.Tensor) -> torch.Tensor:
        return _weighted_mean((x - target).abs().mean(dim=-1), w)

    err_src, pixels = float(mae(source[None])[0]), int(region.sum())
    return [
        (
            min(1.0, max(0.0, 1.0 - err_out / max(err_src, MIN_CHANGE))),
            {"verifier": "generic", "error": err_out, "source_error": err_src, "pixels": pixels},
        )
        for err_out in mae(outputs).tolist()
    ]


def _anchored_all(q_outputs: torch.Tensor, q_source: float, q_truth: float) -> list[tuple[float, float]]:
    """(EA, q) of each output: `anchored` per value of q_outputs [B]."""
    return [(anchored(q, q_source, q_truth), q) for q in q_outputs.tolist()]


def recolour_accuracy(source, outputs, target, mask, verify: dict) -> list[tuple[float, dict]]:
    """q = mean |x − c| over pixels where the ground truth shows colour c and the source did not."""
    c = _rgb(verify, "target_rgb", "rgb", device=target.device)
    if c is None:
        raise _Fallback("verify has no target_rgb")
    region = mask & (colour_distance(target, c) < COLOUR_TOL) & (colour_distance(source, c) >= COLOUR_TOL)
    if not region.any():
        raise _Fallback("no pixel of the mask shows target_rgb in the ground truth")
    w = region.float()

    def q(x: torch.Tensor) -> torch.Tensor:
        return _weighted_mean(colour_distance(x, c), w)

    q_src, q_gt = (float(v) for v in q(torch.stack([source, target])))
    _separated(q_src, q_gt, "colour distances")
    pixels = int(region.sum())
    return [
        (
            ea,
            {
                "verifier": "recolour",
                "colour_distance": q_out,
                "source_colour_distance": q_src,
                "truth_colour_distance": q_gt,
                "pixels": pixels,
            },
        )
        for ea, q_out in _anchored_all(q(outputs), q_src, q_gt)
    ]


def presence_accuracy(source, outputs, target, mask, verify: dict, *, present: bool) -> list[tuple[float, dict]]:
    """q = fraction of the changed mask pixels where x is closer to the wanted look than to the unwanted one
    (add: the object (rgb, else the ground truth) rather than the source; remove: the ground truth's
    background rather than the object (the source, or rgb))."""
    present = bool(verify.get("present", present))
    c = _rgb(verify, "rgb", "object_rgb", device=target.device)
    region = mask & (colour_distance(source, target) >= COLOUR_TOL)
    if c is not None:  # only where the object's colour is (add: in the ground truth; remove: in the source)
        region &= colour_distance(target if present else source, c) < COLOUR_TOL
    if not region.any():
        raise _Fallback("no mask pixel differs between source and ground truth")
    wanted = (c if c is not None else target) if present else target
    unwanted = source if present else (c if c is not None else source)
    w = region.float()

    def q(x: torch.Tensor) -> torch.Tensor:
        closer = colour_distance(x, wanted) < colour_distance(x, unwanted)
        return _weighted_mean(closer.float(), w)

    q_src, q_gt = (float(v) for v in q(torch.stack([source, target])))
    _separated(q_src, q_gt, "wanted-look fractions")
    pixels = int(region.sum())
    return [
        (
            ea,
            {
                "verifier": "add" if present else "remove",
                "want_present": present,
                "object_seen": (q_out if present else 1.0 - q_out) > 0.5,
                "wanted_fraction": q_out,
                "truth_wanted_fraction": q_gt,
                "pixels": pixels,
            },
        )
        for ea, q_out in _anchored_all(q(outputs), q_src, q_gt)
    ]


def _iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of each mask of a [B,...] with b [...], pooled over the rest (0 where both are empty): [B] float64."""
    dims = tuple(range(1, a.ndim))
    inter, union = (a & b).sum(dim=dims).double(), (a | b).sum(dim=dims).double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(union))


def dominant_colour(pixels: torch.Tensor, levels: int = 16) -> torch.Tensor:
    """The most common colour of pixels [N,3]: the fullest cell of a `levels`³ RGB grid, then the per-channel
    median of the pixels in it (robust to codec noise and to a minority of other colours)."""
    q = (pixels * levels).long().clamp_(0, levels - 1)
    cell = (q[:, 0] * levels + q[:, 1]) * levels + q[:, 2]
    return pixels[cell == torch.bincount(cell).argmax()].median(dim=0).values


def _object_colour(verify: dict, target: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """The edited object's colour: verify rgb/target_rgb, else the ground truth's dominant colour in `where`."""
    c = _rgb(verify, "rgb", "target_rgb", device=target.device)
    if c is not None:
        return c
    if not where.any():
        raise _Fallback("no pixel to read the object's colour from")
    return dominant_colour(target[where])


def replace_accuracy(source, outputs, target, mask, verify: dict) -> list[tuple[float, dict]]:
    """q = IoU of the blob of the new object's colour in x with the ground truth's, pooled over frames. The
    colour is verify's rgb, else the ground truth's dominant colour in the mask (inside the bboxes if given)."""
    where = mask
    if verify.get("bbox") is not None:
        box_masks, _ = _box_masks(verify, *target.shape[:3], device=target.device)
        where = mask & box_masks if (mask & box_masks).any() else mask
    c = _object_colour(verify, target, where)
    area = dilate(mask, SEARCH_MARGIN)

    def blob(x: torch.Tensor) -> torch.Tensor:
        return area & (colour_distance(x, c) < COLOUR_TOL)

    truth = blob(target)
    if not truth.any():
        raise _Fallback("the ground truth shows no blob of the object's colour in the mask")
    q_src = float(_iou(blob(source[None]), truth)[0])
    _separated(q_src, 1.0, "blob IoUs")
    object_rgb = [round(float(v), 4) for v in c]
    return [
        (ea, {"verifier": "replace", "iou": q_out, "source_iou": q_src, "object_rgb": object_rgb})
        for ea, q_out in _anchored_all(_iou(blob(outputs), truth), q_src, 1.0)
    ]


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


def _box_masks(
    verify: dict, frames: int, height: int, width: int, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """[T,H,W] bool of the verify boxes (empty where a frame has none) on `device`, and the frames that have one."""
    boxes, valid = _boxes(verify, frames, height, width)
    masks = torch.zeros(frames, height, width, dtype=torch.bool)
    for t in torch.nonzero(valid).flatten().tolist():
        masks[t] = _box_mask(boxes[t].tolist(), height, width)
    return masks.to(device), valid


def _box_mask(box: Sequence[float], height: int, width: int) -> torch.Tensor:
    m = torch.zeros(height, width, dtype=torch.bool)
    x0, y0 = max(0, math.floor(box[0])), max(0, math.floor(box[1]))
    x1, y1 = min(width, math.ceil(box[2])), min(height, math.ceil(box[3]))
    if x1 > x0 and y1 > y0:
        m[y0:y1, x0:x1] = True
    return m


def _extent(any_along: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First index and last index + 1 of the set entries along the last dim of a bool [..., N] (0, 0 where none
    is set; callers mask those)."""
    n = any_along.shape[-1]
    first = any_along.byte().argmax(dim=-1)  # argmax returns the first maximal index
    last = n - any_along.flip(-1).byte().argmax(dim=-1)
    return first.double(), last.double()


def detected_box_ious(found: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """IoU of the bounding box of each frame's found pixels (found [B,K,H,W] bool; end-exclusive pixel box) with
    boxes [K,4] (x0, y0, x1, y1), 0 where nothing is found or the union is empty: [B,K] float64."""
    rows, cols = found.any(dim=-1), found.any(dim=-2)  # [B,K,H], [B,K,W]
    y0, y1 = _extent(rows)
    x0, x1 = _extent(cols)
    bx0, by0, bx1, by1 = boxes.unbind(-1)
    iw = (torch.minimum(x1, bx1) - torch.maximum(x0, bx0)).clamp(min=0.0)
    ih = (torch.minimum(y1, by1) - torch.maximum(y0, by0)).clamp(min=0.0)
    inter = iw * ih
    union = (x1 - x0) * (y1 - y0) + (bx1 - bx0) * (by1 - by0) - inter
    seen = rows.any(dim=-1) & (union > 0)
    return torch.where(seen, inter / torch.where(seen, union, torch.ones_like(union)), torch.zeros_like(union))


def position_accuracy(source, outputs, target, mask, verify: dict) -> list[tuple[float, dict]]:
    """q = mean over the frames with a verify box of IoU(detected box of the object, bbox_t); the object is
    the set of pixels of its colour (verify rgb, else the ground truth's dominant colour inside the boxes)
    in dilate(M ∪ bbox_t)."""
    frames, height, width = target.shape[:3]
    boxes, valid = _boxes(verify, frames, height, width)
    box_masks, _ = _box_masks(verify, frames, height, width, device=target.device)
    c = _object_colour(verify, target, box_masks & mask if (box_masks & mask).any() else box_masks)
    kept = torch.nonzero(valid).flatten().to(target.device)
    boxes = boxes.to(target.device)[kept]
    area = dilate(mask | box_masks, SEARCH_MARGIN)[kept]

    def q(x: torch.Tensor) -> torch.Tensor:
        found = area & (colour_distance(x[:, kept], c) < COLOUR_TOL)
        return detected_box_ious(found, boxes).mean(dim=-1)

    q_src, q_gt = (float(v) for v in q(torch.stack([source, target])))
    _separated(q_src, q_gt, "box IoUs")
    object_rgb = [round(float(v), 4) for v in c]
    return [
        (
            ea,
            {
                "verifier": "position",
                "box_iou": q_out,
                "source_box_iou": q_src,
                "truth_box_iou": q_gt,
                "frames": int(kept.numel()),
                "object_rgb": object_rgb,
            },
        )
        for ea, q_out in _anchored_all(q(outputs), q_src, q_gt)
    ]


def style_accuracy(source, outputs, target, mask, verify: dict) -> list[tuple[float, dict]]:
    """grayscale: q = mean chroma (max − min over RGB) over the mask; other styles fall back."""
    style = str(verify.get("style", "")).lower()
    if style not in ("grayscale", "greyscale", "gray", "grey"):
        raise _Fallback(f"no verifier for style {style!r}")
    region = (mask if mask.any() else torch.ones_like(mask)).float()

    def q(x: torch.Tensor) -> torch.Tensor:
        return _weighted_mean(x.amax(dim=-1) - x.amin(dim=-1), region)

    q_src, q_gt = (float(v) for v in q(torch.stack([source, target])))
    _separated(q_src, q_gt, "chroma")
    return [
        (ea, {"verifier": "grayscale", "chroma": q_out, "source_chroma": q_src, "truth_chroma": q_gt})
        for ea, q_out in _anchored_all(q(outputs), q_src, q_gt)
    ]


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


def edit_accuracies(
    source, outputs, target, mask, verify: dict | None, operation: str | None
) -> list[tuple[float, dict]]:
    """EA of each output of `outputs` [B,T,H,W,3] against one source, ground truth and mask: the operation's
    verifier (mean over the parts of a hybrid), generic where none fits. What a verifier measures on the source and
    the ground truth, and whether it can judge the edit at all, is computed once for the batch (a GRPO group's
    rollouts share them)."""
    parts = operation_parts(operation)
    raw = [p.strip() for p in (operation or "").split("+")]
    if not parts:
        return generic_accuracy(source, outputs, target, mask)
    per_part: list[list[tuple[float, dict]]] = []
    for part in parts:
        check = VERIFIERS.get(part)
        try:
            if check is None:
                raise _Fallback(f"no verifier for operation '{part}'")
            per_part.append(check(source, outputs, target, mask, _part_verify(verify, part, raw)))
        except _Fallback as why:
            fallback = generic_accuracy(source, outputs, target, mask)
            per_part.append([(ea, {**details, "fallback": str(why)}) for ea, details in fallback])
    if len(per_part) == 1:
        return per_part[0]
    return [
        (
            _mean([ea for ea, _ in results]),
            {"verifier": "hybrid", "parts": {p: {"ea": ea, **d} for p, (ea, d) in zip(parts, results)}},
        )
        for results in zip(*per_part)
    ]


def edit_accuracy(source, output, target, mask, verify: dict | None, operation: str | None) -> tuple[float, dict]:
    """EA of one edit (`edit_accuracies` of a batch of one)."""
    return edit_accuracies(source, output[None], target, mask, verify, operation)[0]
