"""Latent previews of the bundled small VAE (issue 12): its own latent -> RGB projection (vae/latent_rgb.json,
fitted by recipes/small/preview_factors.py) shows the colours the latents decode to; ComfyUI's Wan2.1 factors,
which the nodes used for every z-16 VAE before, do not."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from viva_core import bundled
from viva_core.errors import ModelLoadError
from viva_core.pipeline import normalize_latents
from viva_core.preview import LATENT_RGB_FILE, preview_rgb_factors, read_latent_rgb
from viva_core.synth.clips import make_clip

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "recipes" / "small"))
from preview_factors import WAN21_BIAS, WAN21_FACTORS  # noqa: E402  (ComfyUI's Wan2.1 factors, one copy)

VAE_DIR = bundled.EDITOR / "vae"


def fake_editor(vae_dir: Path | str, z_dim: int = 16) -> SimpleNamespace:
    """What preview_rgb_factors reads of an Editor: where its VAE came from and its latent width."""
    return SimpleNamespace(files={"vae": str(vae_dir)}, z_dim=z_dim)


def test_the_file_belongs_to_the_shipped_vae_weights():
    """latent_rgb.json records the weights it was fitted to: a retrained VAE without a re-fit fails here."""
    info = json.loads((VAE_DIR / LATENT_RGB_FILE).read_text())
    weights = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in VAE_DIR.glob("*.safetensors")}
    assert info["vae_weights_sha256"] == weights, "re-run recipes/small/preview_factors.py --write"


def test_projection_of_the_bundled_editor_and_none_elsewhere(tmp_path):
    factors, bias = preview_rgb_factors(fake_editor(VAE_DIR))
    assert len(factors) == 16 and all(len(r) == 3 for r in factors) and len(bias) == 3
    assert preview_rgb_factors(fake_editor(tmp_path)) is None  # a VAE folder without the file: ComfyUI's factors
    assert preview_rgb_factors(fake_editor(tmp_path / "wan_2.1_vae.safetensors")) is None  # a single-file VAE
    assert preview_rgb_factors(SimpleNamespace(files={}, z_dim=16)) is None


def test_damaged_or_foreign_files_are_refused(tmp_path):
    path = tmp_path / LATENT_RGB_FILE
    path.write_text("{not json")
    with pytest.raises(ModelLoadError, match="unreadable latent preview factors"):
        read_latent_rgb(path, 16)
    path.write_text(json.dumps({"latent_rgb_factors": WAN21_FACTORS, "latent_rgb_factors_bias": WAN21_BIAS}))
    with pytest.raises(ModelLoadError, match="VAE has 48 latent channels"):
        preview_rgb_factors(fake_editor(tmp_path, z_dim=48))
    assert read_latent_rgb(path, 16) == (WAN21_FACTORS, WAN21_BIAS)


def latent2rgb(z: torch.Tensor, factors, bias) -> torch.Tensor:
    """ComfyUI's Latent2RGBPreviewer on [1, C, T, H, W]: the first latent frame, linear(x, factors.T, bias), in
    [-1, 1] clamped as preview_to_image clamps -> [H, W, 3]."""
    x0 = z[0, :, 0].movedim(0, -1)
    return F.linear(x0, torch.tensor(factors).T, torch.tensor(bias)).clamp(-1, 1)


def test_fitted_factors_show_the_decoded_colours_and_wan21_does_not():
    """On four held-out synth videos (seed 7, not the recipe's seeds 0 / 1): PSNR of the preview against the decode
    of frame 0 averaged to the latent grid. The recipe measured 8.9 dB (Wan21) vs 25.6 dB (fitted) on 64 videos."""
    from diffusers import AutoencoderKLWan

    vae = AutoencoderKLWan.from_pretrained(
        str(VAE_DIR), torch_dtype=torch.float32, use_safetensors=True, local_files_only=True
    ).eval()
    rng = np.random.default_rng(7)
    videos = []
    for _ in range(2):
        c = make_clip(rng, frames=5)
        videos += [c.source[:1], c.target[:1]]  # frame 0 alone: the causal VAE codes it as in the whole clip
    x = torch.from_numpy(np.stack(videos)).float().div(255).permute(0, 4, 1, 2, 3) * 2 - 1
    with torch.inference_mode():
        z = vae.encode(x).latent_dist.mode()
        truth = F.avg_pool2d(vae.decode(z).sample.clamp(-1, 1)[:, :, 0], 4)  # on the latent grid
        z = normalize_latents(vae, z)  # the sampler's latents, which the previewer is handed
    own = preview_rgb_factors(fake_editor(VAE_DIR))
    psnr = {}
    for name, (f, b) in (("fitted", own), ("wan21", (WAN21_FACTORS, WAN21_BIAS))):
        mse = torch.stack(
            [((latent2rgb(z[i : i + 1], f, b) - truth[i].movedim(0, -1)) / 2).pow(2).mean() for i in range(len(z))]
        )
        psnr[name] = float((10 * torch.log10(1 / mse)).mean())
    assert psnr["fitted"] > 20 and psnr["fitted"] > psnr["wan21"] + 8, psnr
