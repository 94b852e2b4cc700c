"""Per-frame PSNR of edits against the ground truth, instructor tokens vs text only (docs/small_models.md, section 7):
is frame 0 worse than the rest, and does the instructor's image matter?

    python recipes/small/frame_check.py MANIFEST [MANIFEST ...]
    VIVA_EDITOR=DIR VIVA_INSTRUCTOR=DIR VIVA_REFINER=FILE python recipes/small/frame_check.py MANIFEST ...

Uses the bundled editor (or VIVA_EDITOR), fp32 CPU, 20 steps, CFG 5, seed 0, as the README's benchmark. Prints one
line per clip: frame 0 and frames 3+ PSNR for text conditioning and, when VIVA_INSTRUCTOR and VIVA_REFINER name an
instructor VLM and its refiner (section 7 measured the earlier bundled pair), for the instructor with the first
frame and with a grey image in its place.
"""

from __future__ import annotations

import os
import sys

import torch

from viva_core import bundled
from viva_core.conditioning import build_conditioning
from viva_core.editor import EditorOptions, load_editor
from viva_core.pipeline import EditSettings, edit
from viva_core.train.pretrain import load_clip_set
from viva_core.vlm import load_vlm


def psnr_per_frame(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return 10 * torch.log10(1 / ((a - b) ** 2).mean((1, 2, 3)).clamp_min(1e-10))


def main(manifests: list[str]) -> None:
    editor = load_editor(
        os.environ.get("VIVA_EDITOR", str(bundled.EDITOR)), options=EditorOptions(dtype="fp32", device="cpu")
    )
    instructor, refiner = os.environ.get("VIVA_INSTRUCTOR"), os.environ.get("VIVA_REFINER")
    vlm = load_vlm(instructor, dtype="fp32", device="cpu") if instructor and refiner else None
    variants = [("text", "text", False)] + (
        [("instructor", "instructor", False), ("grey image", "instructor", True)] if vlm is not None else []
    )
    settings = EditSettings(steps=20, cfg=5.0, seed=0)
    for manifest in manifests:
        clips = load_clip_set(manifest, None)
        for i, rec in enumerate(clips.records):
            src, tgt = clips.source[i].float() / 255, clips.target[i].float() / 255
            cells = []
            for label, mode, grey in variants:
                image = torch.full_like(src[0], 0.5) if grey else src[0]
                cond, _ = build_conditioning(
                    editor,
                    rec["instruction"],
                    image,
                    mode=mode,
                    vlm=vlm,
                    refiner_path=refiner if vlm is not None else None,
                )
                p = psnr_per_frame(edit(editor, src, cond, settings=settings).frames, tgt)
                cells.append(f"{label}: f0 {p[0]:.1f} f3+ {p[3:].mean():.1f}")
            print(f"{rec.get('operation')} | " + " | ".join(cells) + f" | {rec['instruction'][:48]}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
