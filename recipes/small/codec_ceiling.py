"""How sharp must a codec be for the object edits' verifiers? The ground truth through fixed linear codecs (each frame
averaged over k x k pixel blocks, then interpolated back to full size), scored like `viva eval --ceiling` scores a
VAE's round trip: the most an editor decoding through such a codec could score. Set beside the bundled VAE's ceiling
on the same clips, it says which blur the verifiers tolerate and how sharp the VAE already is.

    PYTHONPATH=. python recipes/small/codec_ceiling.py data/objects/train.jsonl --report runs/codec
    PYTHONPATH=. python recipes/small/codec_ceiling.py MANIFEST --report runs/vaes --vae z32=runs/small/vae_z32/vae

`--vae label=FOLDER` scores a bare diffusers VAE folder's round trip (posterior mode, as `viva eval --ceiling` does
through an editor's VAE), so a VAE of another latent shape is measured before any editor is trained on it.
docs/small_models.md, sections 77 and 80.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from functools import partial
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


def vae_codec(folder: str, device: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """[T, H, W, 3] frames in 0..1 through the AutoencoderKLWan in `folder` and back (fp32, posterior mode), as
    `viva_core.pipeline.reconstruct` does through an editor's VAE; T must be 4k+1 and H, W multiples of the VAE's
    spatial factor (synth clips are), since a bare VAE has no editor to conform the clip to."""
    from diffusers import AutoencoderKLWan

    vae = AutoencoderKLWan.from_pretrained(folder, torch_dtype=torch.float32).to(device).eval()
    space = vae.config.scale_factor_spatial

    def through(frames: torch.Tensor) -> torch.Tensor:
        t, h, w = frames.shape[:3]
        if (t - 1) % 4 or h % space or w % space:
            raise SystemExit(f"--vae {folder}: a {t}x{h}x{w} clip; it needs 4k+1 frames and sides that {space} divides")
        x = frames.permute(3, 0, 1, 2)[None].to(device, torch.float32) * 2 - 1
        with torch.no_grad():
            video = vae.decode(vae.encode(x).latent_dist.mode()).sample
        return ((video.float().clamp(-1, 1) + 1) / 2)[0].permute(1, 2, 3, 0).cpu()

    return through


def parse_codecs(text: str) -> list[tuple[int, str]]:
    codecs = []
    for item in filter(None, text.split(",")):
        k, _, mode = item.partition(":")
        if not k.isdigit() or int(k) < 1 or mode not in ("nearest", "bilinear", "bicubic"):
            raise SystemExit(f"--codecs {item!r}: write k:mode, k a block size >= 1, mode nearest|bilinear|bicubic")
        codecs.append((int(k), mode))
    return codecs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("manifest", help="a synth manifest with ground truth (e.g. recipes/small/object_edits.sh's clips)")
    ap.add_argument("--report", required=True, help="folder: one eval report per codec, <k>_<mode>/")
    ap.add_argument("--codecs", help=f"comma-separated k:mode (default {CODECS}; none with --vae unless given)")
    ap.add_argument("--vae", action="append", default=[], metavar="LABEL=FOLDER", help="a VAE folder's round trip")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="for --vae")
    args = ap.parse_args()
    codecs: list[tuple[str, str, Callable[[torch.Tensor], torch.Tensor]]] = [
        (f"{k}_{mode}", f"{k}x{k} blocks, {mode} back", partial(box_codec, k=k, mode=mode))
        for k, mode in parse_codecs(args.codecs or ("" if args.vae else CODECS))
    ]
    for spec in args.vae:
        label, _, folder = spec.partition("=")
        if not label or not folder or not Path(folder, "config.json").is_file():
            raise SystemExit(f"--vae {spec!r}: write LABEL=FOLDER, FOLDER a diffusers VAE folder with config.json")
        codecs.append((f"vae_{label}", f"the VAE {folder}", vae_codec(folder, args.device)))
    for name, title, through in codecs:

        def through_codec(record, frames, through=through):
            return through(read_frames(record.target_video, None, "target_video")[0])

        report = evaluate(args.manifest, through_codec, previews=0)
        report.write(Path(args.report) / name)
        print(f"## {title}\n{report.table()}\n")


if __name__ == "__main__":
    main()
