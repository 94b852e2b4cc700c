"""A tiny paired-edit data set on disk (source, target, mask mp4s + JSONL manifest) for training tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from viva_core.video import write_video

COLOURS = {"red": (0.9, 0.1, 0.1), "green": (0.1, 0.8, 0.2), "blue": (0.1, 0.2, 0.9)}


def clip(colour, *, frames: int = 9, size: int = 32, offset: int = 0):
    """A coloured square moving right on a grey background; returns (video, mask of the square)."""
    video = torch.full((frames, size, size, 3), 0.5)
    mask = torch.zeros(frames, size, size, 3)
    for t in range(frames):
        x = 4 + offset + t
        video[t, 10:20, x : x + 10] = torch.tensor(colour)
        mask[t, 10:20, x : x + 10] = 1.0
    return video, mask


def build_dataset(root: Path, n: int = 4, *, frames: int = 9) -> Path:
    """n recolouring edits ("make the square red") with exact targets and masks; returns the manifest path."""
    root.mkdir(parents=True, exist_ok=True)
    names = list(COLOURS)
    lines = []
    for i in range(n):
        src_c, dst_c = names[i % 3], names[(i + 1) % 3]
        src, mask = clip(COLOURS[src_c], frames=frames, offset=i)
        tgt, _ = clip(COLOURS[dst_c], frames=frames, offset=i)
        for kind, v in (("src", src), ("tgt", tgt), ("mask", mask)):
            write_video(root / f"{i}_{kind}.mp4", v, 8.0)
        lines.append(
            {
                "source_video": f"{i}_src.mp4",
                "target_video": f"{i}_tgt.mp4",
                "mask_video": f"{i}_mask.mp4",
                "instruction": f"make the square {dst_c}",
                "source_caption": f"a {src_c} square",
                "target_caption": f"a {dst_c} square",
                "type": "recolour",
            }
        )
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest
