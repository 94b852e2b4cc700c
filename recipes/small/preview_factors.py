"""Latent-preview colours of the bundled small VAE (issue 12): fit its latent -> RGB projection and measure it.

    python recipes/small/preview_factors.py                 # fit on 256 synth videos, measure on 64 held-out ones
    python recipes/small/preview_factors.py --write         # ... and store the result with the model
    python recipes/small/preview_factors.py --vae-folder DIR --write   # another project-trained VAE
    python recipes/small/preview_factors.py --edits-only    # the shipped factors on two edits' predicted latents

ComfyUI's Latent2RGB previewer (latent_preview.py) shows `linear(x0[0, :, 0].movedim(0, -1), factors.T, bias)`,
mapped from [-1, 1] to 0..255: one linear map of the latent channels at every position of the first latent frame,
applied to the latents the sampler predicts, i.e. in the *model's* latent space ((z - latents_mean) / latents_std,
what viva_core.pipeline.normalize_latents gives; ComfyUI's own formats likewise see process_in'd latents). ComfyUI's
Wan21 factors describe the released Wan2.1 VAE's space, not ours, so this script fits ours by least squares.

Data: `make_clip` sources and targets (seeds 0 / 1: the held-out clips are different worlds), 64x64x17. Each clip
is encoded with the VAE (posterior mode), normalized, and decoded; the fit pairs every latent position with the mean
of the decoded pixels it stands for (4x4 pixels; latent frame 0 = pixel frame 0, latent frame t = pixel frames
4t-3..4t, the causal Wan VAE's grouping), in [-1, 1]. Fitted on latent frame 0 alone, because that is the frame
ComfyUI shows, and this VAE codes its first frame (encoded alone, causally) in a space of its own: a fit on every
latent frame is dominated by the later frames and previews frame 0 poorly (printed below). Fitted to the decode, not
to the source pixels, because the preview stands for what the latents will decode to (a DiT's prediction has no
source pixels); the source-pixel fit is printed too.

Measured on the held-out clips: PSNR (0..1 scale, the preview clamped as ComfyUI clamps it) and mean absolute error
(0..255) of the preview against the decode averaged to the latent grid, on frame 0 (what ComfyUI shows) and on every
latent frame, for ComfyUI's Wan21 factors (what the nodes used before) and the fitted ones.

`--write` stores the factors as vae/latent_rgb.json beside the VAE's config.json (viva_core.preview: read by
preview_rgb_factors(editor), which the ComfyUI nodes turn into the preview's LatentFormat); the file records the
sha256 of the VAE weights it was fitted to, and tests/test_preview.py fails when they no longer match (re-run this
after retraining the VAE).

`--edits` (or `--edits-only`) also scores the shipped factors where previews are used: the bundled editor's
predicted clean latents while it edits the example clip (two instructions, 12 steps, CFG 5, seed 0), against the
decode of those same latents, at the middle and the last step.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from viva_core import bundled
from viva_core.pipeline import normalize_latents
from viva_core.preview import LATENT_RGB_FILE
from viva_core.synth.clips import make_clip

# ComfyUI's comfy.latent_formats.Wan21 (0.3.64), the factors the nodes used for every z-16 VAE before issue 12.
WAN21_FACTORS = [
    [-0.1299, -0.1692, 0.2932],
    [0.0671, 0.0406, 0.0442],
    [0.3568, 0.2548, 0.1747],
    [0.0372, 0.2344, 0.1420],
    [0.0313, 0.0189, -0.0328],
    [0.0296, -0.0956, -0.0665],
    [-0.3477, -0.4059, -0.2925],
    [0.0166, 0.1902, 0.1975],
    [-0.0412, 0.0267, -0.1364],
    [-0.1293, 0.0740, 0.1636],
    [0.0680, 0.3019, 0.1128],
    [0.0032, 0.0581, 0.0639],
    [-0.1251, 0.0927, 0.1699],
    [0.0060, -0.0633, 0.0005],
    [0.3477, 0.2275, 0.2950],
    [0.1984, 0.0913, 0.1861],
]
WAN21_BIAS = [-0.1835, -0.0868, -0.3360]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_vae(folder: Path) -> torch.nn.Module:
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan.from_pretrained(
        str(folder), torch_dtype=torch.float32, use_safetensors=True, local_files_only=True
    ).eval()


def clips(n: int, seed: int, frames: int = 17, size: int = 64) -> torch.Tensor:
    """`n` synthetic videos [n, T, H, W, 3] uint8: the sources and targets of n // 2 paired edits."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        c = make_clip(rng, frames=frames, size=size)
        out += [c.source, c.target]
    return torch.from_numpy(np.stack(out[:n]))


def to_latent_grid(video: torch.Tensor, t_factor: int, s_factor: int) -> torch.Tensor:
    """[B, 3, T, H, W] -> [B, 3, T', H', W']: the mean of the pixels each latent position stands for (frame 0 alone,
    then groups of `t_factor` frames; `s_factor` x `s_factor` pixels)."""
    first = video[:, :, :1]
    rest = video[:, :, 1:]
    if rest.shape[2]:
        b, c, t, h, w = rest.shape
        rest = rest.reshape(b, c, t // t_factor, t_factor, h, w).mean(3)
        first = torch.cat([first, rest], 2)
    return F.avg_pool3d(first, (1, s_factor, s_factor))


@torch.inference_mode()
def encode_decode(vae: torch.nn.Module, videos: torch.Tensor, batch: int = 8) -> dict[str, torch.Tensor]:
    """Normalized latents [N, z, T', H', W'], and the decode and the source on the latent grid [N, 3, ...], in [-1,
    1]."""
    t_f, s_f = int(vae.config.scale_factor_temporal), int(vae.config.scale_factor_spatial)
    zs, decs, srcs = [], [], []
    for i in range(0, len(videos), batch):
        x = videos[i : i + batch].float().div(255).permute(0, 4, 1, 2, 3) * 2 - 1
        z = vae.encode(x).latent_dist.mode()
        dec = vae.decode(z).sample.clamp(-1, 1)
        zs.append(normalize_latents(vae, z))
        decs.append(to_latent_grid(dec, t_f, s_f))
        srcs.append(to_latent_grid(x, t_f, s_f))
        print(f"  {min(i + batch, len(videos))}/{len(videos)} clips", end="\r", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return {"z": torch.cat(zs), "decode": torch.cat(decs), "source": torch.cat(srcs)}


def rows(t: torch.Tensor) -> torch.Tensor:
    """[N, C, T, H, W] -> [N * T * H * W, C]."""
    return t.movedim(1, -1).reshape(-1, t.shape[1]).double()


def fit(z: torch.Tensor, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares factors [z, 3] and bias [3] with rgb ~ z @ factors + bias."""
    x = rows(z)
    x1 = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    sol = torch.linalg.lstsq(x1, rows(rgb)).solution
    return sol[:-1].float(), sol[-1].float()


def preview(z: torch.Tensor, factors: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """What ComfyUI's Latent2RGB previewer computes, for every clip and latent frame: [N, 3, T', H', W'] in [-1, 1]
    (clamped, as preview_to_image clamps)."""
    return torch.einsum("nzthw,zc->ncthw", z, factors).add(bias.view(1, 3, 1, 1, 1)).clamp(-1, 1)


def scores(pred: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """PSNR (dB, 0..1 scale) and mean absolute error (0..255) per clip, averaged; frame 0 and all latent frames."""
    out = {}
    for label, sl in (("frame0", slice(0, 1)), ("all", slice(None))):
        a, b = (pred[:, :, sl] + 1) / 2, (truth[:, :, sl] + 1) / 2
        mse = ((a - b) ** 2).mean((1, 2, 3, 4)).clamp_min(1e-10)
        out[f"psnr_{label}"] = round(float((10 * torch.log10(1 / mse)).mean()), 2)
        out[f"mae_{label}"] = round(float((a - b).abs().mean() * 255), 2)
    return out


EDIT_INSTRUCTIONS = ("Invert the colours.", "Make the background red.")


def edit_scores(candidates: dict) -> None:
    """Preview vs decode of the bundled editor's predictions on the example clip (frame 0, latent grid)."""
    from viva_core.conditioning import build_conditioning
    from viva_core.editor import EditorOptions, load_editor
    from viva_core.pipeline import EditSettings, decode_latents, edit
    from viva_core.video import read_video

    editor = load_editor(str(bundled.EDITOR), options=EditorOptions(dtype="fp32", device="cpu"))
    frames = read_video(str(bundled.EXAMPLE)).frames
    s_f = editor.spatial_factor
    print("bundled editor on the example clip, 12 steps: preview of the predicted latents vs their decode, frame 0")
    for instruction in EDIT_INSTRUCTIONS:
        seen: list[torch.Tensor] = []
        cond, _ = build_conditioning(editor, instruction, frames[0], mode="text")
        edit(
            editor,
            frames,
            cond,
            settings=EditSettings(steps=12, cfg=5.0, seed=0),
            progress=lambda done, total, preview, seen=seen: seen.append(preview),
        )
        for step in (len(seen) // 2, len(seen)):
            z = seen[step - 1][:, :, :1]
            truth = F.avg_pool2d(decode_latents(editor, z)[0].permute(2, 0, 1)[None] * 2 - 1, s_f)[:, :, None]
            cells = [
                f"{name.split(' (')[0]} {scores(preview(z, f, b), truth)['psnr_frame0']:.2f} dB"
                for name, (f, b) in candidates.items()
                if "source" not in name and "all" not in name
            ]
            print(f"  {instruction!r} step {step}/{len(seen)}: " + ", ".join(cells))


def dump(info: dict) -> str:
    """JSON with one line per factor row (the file is read by people too)."""
    text = json.dumps({**info, "latent_rgb_factors": "@ROWS@"}, indent=2)
    rows = ",\n".join("    " + json.dumps(r) for r in info["latent_rgb_factors"])
    return text.replace('"@ROWS@"', "[\n" + rows + "\n  ]") + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vae-folder", default=str(bundled.EDITOR / "vae"), help="a diffusers AutoencoderKLWan folder")
    p.add_argument("--train", type=int, default=256, help="videos to fit on (sources and targets of seed-0 clips)")
    p.add_argument("--held-out", type=int, default=64, help="videos to measure on (seed-1 clips)")
    p.add_argument("--edits", action="store_true", help="also score the factors on the bundled editor's edits")
    p.add_argument("--edits-only", action="store_true", help="score the shipped factors on edits only (no fit)")
    p.add_argument("--write", action="store_true", help=f"store the factors as {LATENT_RGB_FILE} in the VAE folder")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    folder = Path(args.vae_folder)
    if args.edits_only:
        from viva_core.preview import read_latent_rgb

        z_dim = json.loads((folder / "config.json").read_text())["z_dim"]
        own = [torch.tensor(t) for t in read_latent_rgb(folder / LATENT_RGB_FILE, z_dim)]
        edit_scores(
            {
                "ComfyUI Wan21 factors (before)": (torch.tensor(WAN21_FACTORS), torch.tensor(WAN21_BIAS)),
                "fitted on frame 0 (shipped)": tuple(own),
            }
        )
        return {}
    vae = load_vae(folder)
    print(
        f"VAE {folder}: z {vae.config.z_dim}, x{vae.config.scale_factor_spatial} space, "
        f"x{vae.config.scale_factor_temporal} time"
    )
    train = encode_decode(vae, clips(args.train, seed=0))
    test = encode_decode(vae, clips(args.held_out, seed=1))
    first = slice(0, 1)  # ComfyUI's Latent2RGB shows the first latent frame alone
    factors, bias = fit(train["z"][:, :, first], train["decode"][:, :, first])
    candidates = {
        "ComfyUI Wan21 factors (before)": (torch.tensor(WAN21_FACTORS), torch.tensor(WAN21_BIAS)),
        "fitted on frame 0 (shipped)": (factors, bias),
        "fitted on frame 0, source pixels": fit(train["z"][:, :, first], train["source"][:, :, first]),
        "fitted on all latent frames": fit(train["z"], train["decode"]),
    }
    if int(vae.config.z_dim) != len(WAN21_FACTORS):
        candidates.pop("ComfyUI Wan21 factors (before)")
    results = {}
    print(
        f"held-out: {args.held_out} videos, preview vs the VAE decode averaged to the latent grid "
        f"({tuple(test['z'].shape[2:])} latents per video)"
    )
    for name, (f, b) in candidates.items():
        results[name] = s = scores(preview(test["z"], f, b), test["decode"])
        print(
            f"  {name:33s} frame 0: PSNR {s['psnr_frame0']:6.2f} dB, MAE {s['mae_frame0']:6.2f}/255 | "
            f"all frames: PSNR {s['psnr_all']:6.2f} dB, MAE {s['mae_all']:6.2f}/255"
        )
    ceiling = scores(test["source"], test["decode"])
    print(
        f"  (source pixels vs decode on the same grid, the codec's own error: frame 0 PSNR "
        f"{ceiling['psnr_frame0']:.2f} dB, all {ceiling['psnr_all']:.2f} dB)"
    )
    if args.edits:
        edit_scores(candidates)
    if args.write:
        weights = sorted(folder.glob("*.safetensors"))
        info = {
            "latent_rgb_factors": [[round(float(v), 6) for v in row] for row in factors],
            "latent_rgb_factors_bias": [round(float(v), 6) for v in bias],
            "about": "ComfyUI Latent2RGB preview of this VAE: rgb[-1,1] = normalized_latent @ latent_rgb_factors "
            "+ latent_rgb_factors_bias, where normalized_latent = (z - latents_mean) / latents_std "
            "(config.json). Fitted on the first latent frame (the one ComfyUI shows) by "
            "recipes/small/preview_factors.py; re-run it after retraining the VAE.",
            "vae_weights_sha256": {w.name: sha256(w) for w in weights},
            "held_out": {"videos": args.held_out, **results},
        }
        out = folder / LATENT_RGB_FILE
        out.write_text(dump(info), encoding="utf-8")
        print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
