"""What the bundled editor does with everyday instructions on the bundled example clip (README, "Small models").

    python recipes/small/example_instructions.py [OUT.png]

Edits `viva edit example` as the CLI does (bundled editor, text conditioning, its 12 steps, CFG 5, seed 0, fp32 CPU)
for each instruction below and prints a measured check of each (computed on the 64x64 frames, all 17 of them):
the example's own instruction against its ground truth, the others against what the instruction asks of the
source (the cyan background is where the source is within 0.25 of cyan in every channel). Saves a grid of frame 8
of the source and of each edit (default docs/img/example_instructions.png).
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Callable

import torch

from viva_core import bundled
from viva_core.conditioning import build_conditioning, negative_conditioning
from viva_core.editor import EditorOptions, load_editor
from viva_core.pipeline import edit
from viva_core.settings import BUNDLED_STEPS, EditSettings
from viva_core.video import read_video

Frames = torch.Tensor  # [T, H, W, 3], 0..1


def psnr(a: Frames, b: Frames) -> float:
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean().clamp_min(1e-10)))


def saturation(x: Frames) -> float:
    return float((x.amax(-1) - x.amin(-1)).mean())


def colour_share(x: Frames, rgb: tuple[float, float, float], tol: float = 0.3) -> float:
    """Share of pixels within `tol` of `rgb` in every channel."""
    return float(((x - torch.tensor(rgb)).abs() <= tol).all(-1).float().mean())


def checks(source: Frames, target: Frames) -> dict[str, Callable[[Frames], str]]:
    """instruction -> (out -> one line saying what was measured, source value -> edit value)."""
    background = ((source - torch.tensor([0.0, 1.0, 1.0])).abs() <= 0.25).all(-1)  # [T, H, W]

    def bg(x: Frames) -> Frames:
        return x[background]  # [N, 3]

    return {
        "Invert the colours.": lambda out: (
            f"PSNR vs ground truth {psnr(out, target):.1f} dB (source vs ground truth {psnr(source, target):.1f} dB)"
        ),
        "Make the video black and white.": lambda out: f"saturation {saturation(source):.2f} -> {saturation(out):.2f}",
        "Make the video darker.": lambda out: f"mean brightness {float(source.mean()):.2f} -> {float(out.mean()):.2f}",
        "Change the background to plain red.": lambda out: (
            "background mean RGB "
            f"{[round(float(v), 2) for v in bg(source).mean(0)]} -> {[round(float(v), 2) for v in bg(out).mean(0)]}"
        ),
        "Replace the background with a checkerboard.": lambda out: (
            f"background pixel std {float(bg(source).std(0).mean()):.2f} -> {float(bg(out).std(0).mean()):.2f}"
        ),
        "Remove the black diamond.": lambda out: (
            f"near-black pixels {colour_share(source, (0, 0, 0), 0.2):.3f} -> {colour_share(out, (0, 0, 0), 0.2):.3f}"
        ),
        "Make the green ring red.": lambda out: (
            f"green pixels {colour_share(source, (0, 1, 0)):.3f} -> "
            f"{colour_share(out, (0, 1, 0)):.3f}, red {colour_share(source, (1, 0, 0)):.3f} -> "
            f"{colour_share(out, (1, 0, 0)):.3f}"
        ),
    }


def main(out_png: str = "docs/img/example_instructions.png") -> None:
    folder = bundled.EXAMPLE.parent
    source = read_video(str(bundled.EXAMPLE)).frames
    target = read_video(str(folder / "shapes_target.mp4")).frames
    editor = load_editor(str(bundled.EDITOR), options=EditorOptions(dtype="fp32", device="cpu"))
    settings = EditSettings(steps=BUNDLED_STEPS, cfg=5.0, seed=0)
    cells = [("source", source[8])]
    for instruction, check in checks(source, target).items():
        cond, _ = build_conditioning(editor, instruction, source[0], mode="text")
        out = edit(editor, source, cond, negative=negative_conditioning(editor, ""), settings=settings).frames
        print(f"{instruction:45s} {check(out)}", flush=True)
        cells.append((instruction, out[8]))
    save_grid(cells, Path(out_png))


def save_grid(cells: list[tuple[str, torch.Tensor]], path: Path, scale: int = 3) -> None:
    """Frames side by side, each scaled `scale`x (nearest) with its label under it."""
    from PIL import Image, ImageDraw

    h, w = cells[0][1].shape[:2]
    cw, lh = w * scale, 34
    grid = Image.new("RGB", (cw * len(cells), h * scale + lh), "white")
    draw = ImageDraw.Draw(grid)
    for i, (label, frame) in enumerate(cells):
        img = Image.fromarray((frame.clamp(0, 1) * 255).round().byte().numpy()).resize((cw, h * scale), Image.NEAREST)
        grid.paste(img, (i * cw, 0))
        lines = textwrap.wrap(label, width=cw // 6)
        draw.multiline_text((i * cw + 3, h * scale + 2), "\n".join(lines[:3]), fill="black", spacing=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main(*sys.argv[1:])
