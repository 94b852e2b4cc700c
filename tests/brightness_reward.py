"""Rewards the training tests define (loaded by `callable:brightness_reward:<name>`)."""

import torch


def brightness(batch) -> torch.Tensor:
    """Mean brightness of the edit inside the edit mask (whole frame without one)."""
    edited = batch.edited.mean(dim=-1)  # [N,T,H,W]
    if batch.masks is None:
        return edited.flatten(1).mean(1)
    m = batch.masks.float()
    return (edited * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1e-6)


def latent_brightness(batch) -> torch.Tensor:
    """Mean of the first latent channel: a reward the tiny random VAE cannot blur away (its decoder barely
    responds to latent changes), so it shows whether the policy-gradient machinery itself learns."""
    return batch.latents[:, 0].flatten(1).mean(1)
