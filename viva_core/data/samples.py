"""Per-record samples: a record's source, target, mask and reference read from videos, images or npz
clips, aligned in time and size and snapped to the model's sizes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError, VideoError
from ..video import PathLike, conform_frames, read_image, read_video
from .manifest import CLIP_ARRAYS, CLIP_SUFFIX, EditRecord, is_image_path


@dataclass
class EditSample:
    """What the trainer consumes for one record: frames aligned in time and size, snapped to the model.

    `source`/`target`: [T,H,W,3] float32 0..1 (same T, H, W); `mask`: [T,H,W] float32 0..1 (soft values kept,
    1 = edited); `reference`: [H',W',3] as stored. Image pairs have T=1 and `fps` None."""

    source: torch.Tensor
    target: torch.Tensor | None
    mask: torch.Tensor | None
    reference: torch.Tensor | None
    instruction: str
    source_caption: str | None
    target_caption: str | None
    type: str | None
    fps: float | None
    key: str
    index: int
    conform: str  # what conform_frames changed, e.g. "9 frames kept of 10 (4k+1)" or "unchanged"


def mask_unit(mask: torch.Tensor) -> torch.Tensor:
    """An edit mask stored as integers, 0/1 (npz clips) or 0/255 (8-bit mask videos), as float 0..1."""
    m = mask.float()
    return m.div_(255.0) if m.numel() and float(m.max()) > 1.0 else m


def read_frames(
    path: PathLike, max_frames: int | None = None, field: str = "source_video"
) -> tuple[torch.Tensor, float | None]:
    """[T,H,W,3] float frames in 0..1 of a video (the first `max_frames`), an image (T=1) or the `field`'s array
    of an npz clip (a mask as 3 equal channels), and the frame rate (None for images and clips)."""
    path = Path(path)
    if path.suffix.lower() == CLIP_SUFFIX:
        try:
            with np.load(path, allow_pickle=False) as z:
                arr = z[CLIP_ARRAYS[field]][:max_frames]
        except (OSError, KeyError, ValueError) as e:
            raise VideoError(
                f"{path}: not a readable npz clip ({e}); write it again with `viva synth --format npz`."
            ) from e
        frames = torch.from_numpy(np.ascontiguousarray(arr))
        if field == "mask_video":
            return mask_unit(frames).unsqueeze(-1).expand(*arr.shape, 3), None
        return frames.float().div_(255.0), None
    if is_image_path(path):
        return read_image(path).unsqueeze(0), None
    video = read_video(path, max_frames=max_frames, with_audio=False)
    return video.frames, video.fps


def load_sample(
    record: EditRecord,
    *,
    max_frames: int | None = None,
    size: tuple[int, int] | None = None,
    temporal_factor: int = 4,
    spatial_multiple: int = 16,
) -> EditSample:
    """Read one record's frames: source, target and mask take the same frames (the first `max_frames`),
    then each goes through `conform_frames` (T → k·temporal_factor+1, optional resize to `size` (h, w),
    center crop to multiples of `spatial_multiple`). Pass the editor's `temporal_factor` and
    `spatial_multiple`. The mask becomes one channel (mean over RGB). Raises InputError when the files
    disagree in frame count or size (load_manifest reports that before training starts)."""
    source, fps = read_frames(record.source_video, max_frames)
    source_c, report = conform_frames(source, temporal_factor, spatial_multiple, resize_to=size)
    aligned: dict[str, torch.Tensor | None] = {"target": None, "mask": None}
    for name, path in (("target", record.target_video), ("mask", record.mask_video)):
        if path is None:
            continue
        frames, _ = read_frames(path, max_frames, f"{name}_video")
        if frames.shape[:3] != source.shape[:3]:
            raise InputError(
                f"{path}: {name} frames {tuple(frames.shape[:3])} (T, H, W) do not match the source "
                f"{record.source_video.name} {tuple(source.shape[:3])}; run load_manifest on the "
                "manifest to list every such record."
            )
        aligned[name] = conform_frames(frames, temporal_factor, spatial_multiple, resize_to=size)[0]
    mask = aligned["mask"]
    if mask is not None:
        mask = mask.mean(dim=-1).clamp_(0.0, 1.0)
    reference = read_image(record.reference_image) if record.reference_image is not None else None
    return EditSample(
        source=source_c,
        target=aligned["target"],
        mask=mask,
        reference=reference,
        instruction=record.instruction,
        source_caption=record.source_caption,
        target_caption=record.target_caption,
        type=record.type,
        fps=fps,
        key=record.key(),
        index=record.index,
        conform=report.message(),
    )
