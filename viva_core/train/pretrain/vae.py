"""Stage `vae` of `viva pretrain`: the Wan-architecture VAE, its latent statistics and PSNR."""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F

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
    kept_statistics = None
    if cfg.vae.init:
        from diffusers import AutoencoderKLWan

        vae = AutoencoderKLWan.from_pretrained(cfg.vae.init, torch_dtype=torch.float32)
        kept_statistics = list(vae.config.latents_mean), list(vae.config.latents_std)
        vae.register_to_config(latents_mean=[0.0] * vae.config.z_dim, latents_std=[1.0] * vae.config.z_dim)
        width = cfg.vae.decoder_base_dim
        if width and width != (vae.config.decoder_base_dim or vae.config.base_dim):
            vae = with_fresh_decoder(vae, width)
    else:
        vae = new_vae(cfg.vae)
    vae = vae.to(device).train()
    decoder_only = cfg.vae.decoder_only
    if decoder_only:
        vae.requires_grad_(False)
        trained = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
        for p in trained:
            p.requires_grad_(True)
    else:
        trained = list(vae.parameters())
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
            with torch.set_grad_enabled(not decoder_only):
                posterior = vae.encode(x).latent_dist
            rec = vae.decode(posterior.sample()).sample.float()
        weight, err = edge_weights(x, cfg.vae.edge_weight), rec - x
        recon = (err.abs() * weight).mean() + (err**2 * weight).mean()
        kl = posterior.kl().mean() / x[0].numel()
        loss = recon if decoder_only else recon + cfg.vae.kl_weight * kl
        return {"loss": loss, "recon_l1": err.abs().mean().detach(), "kl": kl.detach()}  # plain L1, any edge_weight

    summary = _loop(cfg, trained, step, out, progress, "VAE")
    vae.eval()
    if decoder_only:  # the same encoder: the editors' latent normalization must not move
        mean, std = kept_statistics
    else:
        mean, std = latent_statistics(vae, videos, device)
    vae.register_to_config(latents_mean=mean, latents_std=std)
    summary["val_psnr"] = vae_psnr(
        vae, load_clip_set(cfg.data.val_manifest, limit=64).source if cfg.data.val_manifest else videos, device, n=64
    )
    save_small(vae, out / "vae")
    _write_json(out / "vae_summary.json", {"config": dataclasses.asdict(cfg), "result": summary})
    log.info("VAE: %s", summary)
    return out / "vae"


def with_fresh_decoder(vae, width: int):
    """The same VAE with a newly initialized decoder of `width` channels at its first level: the encoder, quant_conv
    and post_quant_conv (z -> z, the decoder's input) are copied, so every latent stays as it was."""
    from diffusers import AutoencoderKLWan

    wider = AutoencoderKLWan.from_config({**vae.config, "decoder_base_dim": width})
    kept = {k: v for k, v in vae.state_dict().items() if not k.startswith("decoder.")}
    missing, unexpected = wider.load_state_dict(kept, strict=False)
    if unexpected or any(not k.startswith("decoder.") for k in missing):
        raise InputError(
            f"vae.decoder_base_dim={width}: the init VAE's encoder does not fit this architecture "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}); is vae.init an AutoencoderKLWan folder?"
        )
    return wider


def edge_weights(x: torch.Tensor, edge_weight: float) -> torch.Tensor | float:
    """Per-pixel loss weights [B,1,T,H,W] = 1 + edge_weight * g, g = the largest absolute difference to the right or
    lower neighbour over the colour channels, halved (x in -1..1, so g is in 0..1): the outlines of shapes weigh up
    to 1 + edge_weight. 1.0 (no weighting) when edge_weight is 0."""
    if not edge_weight:
        return 1.0
    with torch.no_grad():
        dx = F.pad((x[..., :, 1:] - x[..., :, :-1]).abs(), (0, 1))
        dy = F.pad((x[..., 1:, :] - x[..., :-1, :]).abs(), (0, 0, 0, 1))
        g = torch.maximum(dx, dy).amax(dim=1, keepdim=True) / 2
    return 1 + edge_weight * g


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
