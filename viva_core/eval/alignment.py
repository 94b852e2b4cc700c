"""Bring an editor's output and the references (source, ground truth, mask, verify boxes) to one shape
before scoring."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..video import format_size


def align(
    output: torch.Tensor, source: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None
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
            source, target = source[:, top : top + h, left : left + w], target[:, top : top + h, left : left + w]
            mask = None if mask is None else mask[:, top : top + h, left : left + w]
            how.update(top=top, left=left, note=f"references center-cropped to {format_size(h, w)}")
        else:
            output = (
                F.interpolate(output.permute(0, 3, 1, 2), size=(rh, rw), mode="bilinear", align_corners=False)
                .permute(0, 2, 3, 1)
                .clamp(0, 1)
            )
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
        moved = [
            None if row is None else [row[0] * sx - left, row[1] * sy - top, row[2] * sx - left, row[3] * sy - top]
            for row in rows
        ]
        out[key] = moved[0] if single else moved[:frames]
    return out
