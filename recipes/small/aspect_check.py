"""How to fit a non-square source to the bundled editor's 64x64 frame: squash (the old behaviour), center-crop,
or keep the aspect and pad (edge or reflect). The measurement behind `viva_core.pipeline.conform_for_editor`.

    python recipes/small/aspect_check.py [CLIPS] [STEPS]

Sources: `viva synth` worlds rendered at 96x96 and cut to 96x48 (landscape) and 48x96 (portrait), CLIPS of each
(default 3). The edit is "Invert the colours." (the one the bundled models do well; its ground truth is 1 - source
everywhere, so every pixel of the frame is scored), bundled editor (text conditioning), fp32 CPU, STEPS
(default 20) steps, CFG 5, seed 0, as in `viva edit`. (Measured in docs/small_models.md with the
earlier bundled editor and its instructor.)
Each variant's output is brought back to the source's size, then scored by PSNR against the ground truth over the
whole frame and over the central square (the part a center crop edits), and the VAE round trip of the source
(no edit) by PSNR against the source.

As run (2 clips of each orientation, 20 steps, 2-core CPU), mean PSNR dB, edit vs truth over the whole frame /
over the central square / VAE round trip vs source:

    squash       14.65 / 14.37 / 24.03   (per clip 13.87 11.99 16.26 16.48)
    crop          5.50 / 14.23 / 26.28   (the border stays the source: unedited)
    pad edge     14.40 / 14.20 / 25.93   (per clip 13.59 13.04 16.57 14.40)
    pad reflect  14.19 / 13.97 / 25.52   (per clip 13.86 11.49 16.42 15.01)

The edit scores of squash and pad differ by less than their spread over clips (±2 dB); padding keeps the shapes'
geometry and the best round trip, edge beats reflect on both, and a crop leaves the border unedited.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from viva_core import bundled
from viva_core.conditioning import build_conditioning
from viva_core.editor import EditorOptions, load_editor
from viva_core.pipeline import EditSettings, decode_latents, edit, encode_frames
from viva_core.synth import make_clip
from viva_core.video import _resize, conform_frames, unconform_frames

NATIVE = (64, 64)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean().clamp_min(1e-10)))


def center_square(h: int, w: int) -> tuple[slice, slice]:
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return slice(top, top + s), slice(left, left + s)


def variants(run):
    """name -> function(source [T,H,W,3]) -> output at the source's size, where `run` maps 64x64 frames to 64x64."""

    def squash(src):
        return _resize(run(_resize(src, NATIVE)), tuple(src.shape[1:3]))

    def crop(src):
        rows, cols = center_square(*src.shape[1:3])
        out = src[: run.frames(src)].clone()  # the border keeps the source: a crop leaves it unedited
        part = src[:, rows, cols]
        out[:, rows, cols] = _resize(run(_resize(part, NATIVE)), tuple(part.shape[1:3]))
        return out

    def pad(mode):
        def f(src):
            x, report = conform_frames(src, 4, 16, resize_to=NATIVE, fit="pad", pad_mode=mode)
            return unconform_frames(run(x), report)

        return f

    return {"squash": squash, "crop": crop, "pad edge": pad("replicate"), "pad reflect": pad("reflect")}


class Runner:
    """64x64 frames -> the editor's (or the VAE's) 64x64 output; `frames` says how many come back."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        assert tuple(x.shape[1:3]) == NATIVE
        return self.fn(x)

    @staticmethod
    def frames(src: torch.Tensor) -> int:
        return (src.shape[0] - 1) // 4 * 4 + 1


def sources(n: int) -> list[tuple[str, torch.Tensor]]:
    out = []
    for i in range(n):
        clip = make_clip(np.random.default_rng(1000 + i), size=96, category="basic")
        src = torch.from_numpy(clip.source).float() / 255
        out.append((f"landscape 96x48 #{i}", src[:, 24:72].contiguous()))
        out.append((f"portrait 48x96 #{i}", src[:, :, 24:72].contiguous()))
    return out


def main(n: int = 3, steps: int = 20) -> None:
    editor = load_editor(str(bundled.EDITOR), options=EditorOptions(dtype="fp32", device="cpu"))
    settings = EditSettings(steps=steps, cfg=5.0, seed=0)
    instruction = "Invert the colours."
    totals: dict[str, list[list[float]]] = {}
    for name, src in sources(n):
        cond, _ = build_conditioning(editor, instruction, src[0], mode="text")
        edit_run = Runner(lambda x, cond=cond: edit(editor, x, cond, settings=settings).frames)
        vae_run = Runner(lambda x: decode_latents(editor, encode_frames(editor, x)))
        rows, cols = center_square(*src.shape[1:3])
        cells = []
        for label, fn in variants(edit_run).items():
            out = fn(src)
            assert out.shape == src[: out.shape[0]].shape, (label, out.shape)
            truth = 1 - src[: out.shape[0]]
            recon = variants(vae_run)[label](src)
            row = [psnr(out, truth), psnr(out[:, rows, cols], truth[:, rows, cols]), psnr(recon, src[: recon.shape[0]])]
            totals.setdefault(label, []).append(row)
            cells.append(f"{label}: {row[0]:.2f} / {row[1]:.2f} / {row[2]:.2f}")
        print(f"{name} | " + " | ".join(cells), flush=True)
    print("mean PSNR dB (edit vs truth whole frame / central square / VAE round trip vs source):")
    for label, rows_ in totals.items():
        m = np.mean(rows_, axis=0)
        print(f"  {label:12s} {m[0]:.2f} / {m[1]:.2f} / {m[2]:.2f}")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
