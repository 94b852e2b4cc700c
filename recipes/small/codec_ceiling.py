"""How sharp must a codec be for the object edits' verifiers? The ground truth through fixed linear codecs (each frame
averaged over k x k pixel blocks, then interpolated back to full size), scored like `viva eval --ceiling` scores a
VAE's round trip: the most an editor decoding through such a codec could score. Set beside the bundled VAE's ceiling
on the same clips, it says which blur the verifiers tolerate and how sharp the VAE already is.

    PYTHONPATH=. python recipes/small/codec_ceiling.py data/objects/train.jsonl --report runs/codec
docs/small_models.md, section 77.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from viva_core.data import read_frames
from viva_core.eval import evaluate

CODECS = "1:nearest,2:bilinear,4:bilinear,4:bicubic,8:bicubic"


def box_codec(frames: torch.Tensor, k: int, mode: str) -> torch.Tensor:
    """[T, H, W, 3] frames in 0..1, averaged over k x k blocks and interpolated back (k = 1: unchanged); clamped to
    the input's range, as a decoder's output would be clipped."""
    if k == 1:
        return frames.clone()
    x = frames.permute(0, 3, 1, 2).float()
    small = F.avg_pool2d(x, k)
    back = F.interpolate(small, size=x.shape[-2:], mode=mode, align_corners=None if mode == "nearest" else False)
    return back.clamp(float(frames.min()), float(frames.max())).permute(0, 2, 3, 1).to(frames.dtype)


def parse_codecs(text: str) -> list[tuple[int, str]]:
    codecs = []
    for item in text.split(","):
        k, _, mode = item.partition(":")
        if not k.isdigit() or int(k) < 1 or mode not in ("nearest", "bilinear", "bicubic"):
            raise SystemExit(f"--codecs {item!r}: write k:mode, k a block size >= 1, mode nearest|bilinear|bicubic")
        codecs.append((int(k), mode))
    return codecs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("manifest", help="a synth manifest with ground truth (e.g. recipes/small/object_edits.sh's clips)")
    ap.add_argument("--report", required=True, help="folder: one eval report per codec, <k>_<mode>/")
    ap.add_argument("--codecs", default=CODECS, help=f"comma-separated k:mode (default {CODECS})")
    args = ap.parse_args()
    for k, mode in parse_codecs(args.codecs):

        def through_codec(record, frames, k=k, mode=mode):
            truth = read_frames(record.target_video, None, "target_video")[0]
            return box_codec(truth, k, mode)

        report = evaluate(args.manifest, through_codec, previews=0)
        report.write(Path(args.report) / f"{k}_{mode}")
        print(f"## {k}x{k} blocks, {mode} back\n{report.table()}\n")


if __name__ == "__main__":
    main()
