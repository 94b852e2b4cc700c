"""Stage `vae` of `viva pretrain`: the Wan-architecture VAE, its latent statistics and PSNR."""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import torch

from ...errors import InputError
from ...runtime import ProgressFn, no_progress, parse_device
from .clips import load_clip_set, video_batch
from .config import ScratchConfig
from .loop import _autocast, _loop, _write_json
from .models import new_vae, save_small

log = logging.getLogger(__name__)


def train_vae(cfg: ScratchConfig, progress: ProgressFn = no_progress) -> Path:
    out = Path(cfg.output_dir)
    device = parse_device(cfg.device)
    clips = load_clip_set(cfg.data.manifest, cfg.data.limit)
    videos = torch.cat([clips.source, clips.target]).to(device)  # both sides are valid videos to reconstruct
    torch.manual_seed(cfg.seed)
    if cfg.vae.init:
        from diffusers import AutoencoderKLWan

        vae = AutoencoderKLWan.from_pretrained(cfg.vae.init, torch_dtype=torch.float32)
        vae.register_to_config(latents_mean=[0.0] * vae.config.z_dim, latents_std=[1.0] * vae.config.z_dim)
    else:
        vae = new_vae(cfg.vae)
    vae = vae.to(device).train()
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    window = min(cfg.vae.frames, videos.shape[1])
    if (window - 1) % 4:
        raise InputError(f"vae.frames={cfg.vae.frames}: windows must have 1 + 4k frames (Wan's causal VAE).")

    def step(i: int) -> dict:
        idx = torch.randint(len(videos), (cfg.optim.batch_size,), generator=gen)
        starts = torch.randint(videos.shape[1] - window + 1, (cfg.optim.batch_size,), generator=gen)
        frames = starts[:, None] + torch.arange(window)
        x = video_batch(videos[idx[:, None].to(device), frames.to(device)])
        with _autocast(device):
            posterior = vae.encode(x).latent_dist
            rec = vae.decode(posterior.sample()).sample.float()
        l1, mse = (rec - x).abs().mean(), ((rec - x) ** 2).mean()
        kl = posterior.kl().mean() / x[0].numel()
        return {"loss": l1 + mse + cfg.vae.kl_weight * kl, "recon_l1": l1.detach(), "kl": kl.detach()}

    summary = _loop(cfg, list(vae.parameters()), step, out, progress, "VAE")
    vae.eval()
    mean, std = latent_statistics(vae, videos, device)
    vae.register_to_config(latents_mean=mean, latents_std=std)
    summary["val_psnr"] = vae_psnr(
        vae, load_clip_set(cfg.data.val_manifest, limit=64).source if cfg.data.val_manifest else videos, device, n=64
    )
    save_small(vae, out / "vae")
    _write_json(out / "vae_summary.json", {"config": dataclasses.asdict(cfg), "result": summary})
    log.info("VAE: %s", summary)
    return out / "vae"


@torch.no_grad()
def encode_clips(vae, frames: torch.Tensor, device: torch.device, batch: int = 64) -> torch.Tensor:
    """uint8 [N,T,H,W,3] -> normalized posterior-mode latents [N,z,T',H',W'] fp32 on `device` (as encode_frames)."""
    from ...pipeline import normalize_latents

    out = []
    for i in range(0, len(frames), batch):
        x = video_batch(frames[i : i + batch].to(device)).to(next(vae.parameters()).dtype)
        out.append(normalize_latents(vae, vae.encode(x).latent_dist.mode().float()))
    return torch.cat(out)


@torch.no_grad()
def latent_statistics(vae, videos: torch.Tensor, device: torch.device, n: int = 512) -> tuple[list, list]:
    z = encode_clips(vae, videos[:n], device)  # config still mean 0 / std 1: these are raw latents
    return z.mean(dim=(0, 2, 3, 4)).tolist(), z.std(dim=(0, 2, 3, 4)).clamp_min(1e-3).tolist()


@torch.no_grad()
def vae_psnr(vae, videos: torch.Tensor, device: torch.device, n: int = 64) -> float:
    """PSNR (dB) of the posterior-mode reconstruction of the first `n` clips."""
    x = video_batch(videos[:n].to(device))
    rec = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
    mse = float((((rec - x) / 2) ** 2).mean())
    return 10 * math.log10(1.0 / max(mse, 1e-12))
