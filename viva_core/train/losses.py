"""Training losses: one formula per function, all math in fp32 (the methods: README.md, "Training").

Flow matching (sigma runs 1 -> 0, as in `viva_core.sampling`):
    x_sigma = (1 - sigma) x0 + sigma eps,   v = eps - x0
SFT (VIVA): per sample, mean over latent elements of (1 + w M) (v_theta - v)^2, M the latent edit mask.
Edit-GRPO (Flow-GRPO): group-normalized advantages, PPO-clipped ratio loss, Gaussian KL to the reference
policy's step mean. RWO (ReViSE): flow matching weighted per sample by group-normalized rewards; ReViSE does
not publish its exact weighting, so `rwo_weights` is our reconstruction (documented there).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..errors import InputError
from ..sampling import step_coordinates

SIGMA_MODES = ("logit_normal", "uniform")
RWO_MODES = ("softmax", "advantage", "signed")
_SIGMA_EPS = 1e-5  # sampled sigmas lie in [eps, 1 - eps]: sigma = 0 or 1 makes x_t or the target degenerate


# ------------------------------------------------------------------------------------------- flow matching


def _per_sample(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """[B] (or scalar) -> [B, 1, ..., 1] so it broadcasts over a [B, ...] tensor of `ndim` dims."""
    t = torch.as_tensor(t, dtype=torch.float32)
    return t.reshape(-1, *([1] * (ndim - 1))) if t.ndim else t


def flow_matching_pair(
    x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor | float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_sigma, v_target) = ((1 - sigma) x0 + sigma eps, eps - x0); `sigma` is [B] (or a scalar), fp32.

    The path is straight, so x_sigma - sigma v = x0 and x_sigma + (1 - sigma) v = eps."""
    if x0.shape != noise.shape:
        raise InputError(f"flow_matching_pair: x0 {tuple(x0.shape)} and noise {tuple(noise.shape)} differ in shape.")
    x0, noise = x0.float(), noise.float()
    s = _per_sample(sigma, x0.ndim).to(x0.device)
    if s.ndim and s.shape[0] not in (1, x0.shape[0]):
        raise InputError(f"flow_matching_pair: {s.shape[0]} sigmas for a batch of {x0.shape[0]}.")
    return (1 - s) * x0 + s * noise, noise - x0


def sample_sigmas(
    batch: int,
    generator: Optional[torch.Generator] = None,
    *,
    shift: float = 1.0,
    mode: str = "logit_normal",
    mean: float = 0.0,
    std: float = 1.0,
) -> torch.Tensor:
    """Training sigmas [B] in (0, 1): SD3's logit-normal u = sigmoid(mean + std n) (or uniform u), then
    Wan's shift s = shift u / (1 + (shift - 1) u), the same warp as the sampler's schedule, so training
    puts its weight where sampling spends its steps. Clamped to [1e-5, 1 - 1e-5]."""
    if batch < 1:
        raise InputError(f"sample_sigmas: batch must be >= 1, got {batch}.")
    if mode not in SIGMA_MODES:
        raise InputError(f"sigma sampling mode '{mode}' is not one of {SIGMA_MODES}.")
    if shift <= 0 or std <= 0:
        raise InputError(f"sample_sigmas: shift and std must be > 0, got shift={shift}, std={std}.")
    device = generator.device if generator is not None else None  # a CUDA generator draws on the GPU: no copy
    if mode == "logit_normal":
        u = torch.sigmoid(mean + std * torch.randn(batch, generator=generator, dtype=torch.float32, device=device))
    else:
        u = torch.rand(batch, generator=generator, dtype=torch.float32, device=device)
    s = shift * u / (1 + (shift - 1) * u)
    return s.clamp(_SIGMA_EPS, 1 - _SIGMA_EPS)


def masked_fm_loss(
    v_pred: torch.Tensor,
    v_target: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
    mask_weight: float = 0.0,
    *,
    reduce: bool = True,
) -> torch.Tensor:
    """VIVA's SFT loss: mean over elements of (1 + w M) (v_pred - v_target)^2, per sample [B] or its mean.

    The edited region counts (1 + w) times as much, so a mostly-unchanged video does not teach "copy the
    source" only. `mask` [B or 1, 1 or C, T', H', W'] is already at latent resolution (see `latent_mask`);
    None (or w = 0) gives plain flow matching. The weights are not renormalized: w raises the loss scale."""
    if v_pred.shape != v_target.shape:
        raise InputError(
            f"masked_fm_loss: v_pred {tuple(v_pred.shape)} and v_target {tuple(v_target.shape)} differ in shape."
        )
    err = (v_pred.float() - v_target.float()) ** 2
    if mask is not None and mask_weight != 0.0:
        if mask.ndim != err.ndim or any(m not in (1, e) for m, e in zip(mask.shape, err.shape)):
            raise InputError(
                f"masked_fm_loss: mask {tuple(mask.shape)} does not broadcast to the latents "
                f"{tuple(err.shape)}; build it with latent_mask(frames, latent_shape)."
            )
        err = err * (1.0 + mask_weight * mask.to(err.device, torch.float32))
    per_sample = err.flatten(1).mean(dim=1)
    return per_sample.mean() if reduce else per_sample


def latent_mask(
    mask_frames: torch.Tensor, latent_shape: tuple[int, int, int], temporal_factor: int = 4
) -> torch.Tensor:
    """Pixel edit mask [T, H, W] (0..1) -> latent mask [1, 1, T', H', W'] by max-pooling, so that a latent
    cell counts as edited when any pixel it encodes is.

    Time follows Wan's causal VAE: latent 0 encodes frame 0 alone, latent k >= 1 encodes frames
    (k-1)·f+1 .. k·f, so T must be (T'-1)·f + 1. Space uses adaptive max-pooling (exact blocks when H, W
    are multiples of H', W')."""
    if mask_frames.ndim != 3:
        raise InputError(f"latent_mask: expected a mask [T,H,W], got shape {tuple(mask_frames.shape)}.")
    lt, lh, lw = (int(n) for n in latent_shape)
    t, h, w = mask_frames.shape
    if temporal_factor < 1 or min(lt, lh, lw) < 1:
        raise InputError(f"latent_mask: bad latent shape {tuple(latent_shape)} or temporal factor {temporal_factor}.")
    if t != (lt - 1) * temporal_factor + 1:
        raise InputError(
            f"latent_mask: the mask has {t} frames but {lt} latent frames need "
            f"{(lt - 1) * temporal_factor + 1} (frames = {temporal_factor}·k + 1); load the mask with "
            "the same frame count as the source video."
        )
    m = mask_frames.float()
    if m.numel() and (m.min() < 0 or m.max() > 1):
        raise InputError(f"latent_mask: mask values must be in [0, 1], got [{float(m.min())}, {float(m.max())}].")
    rest = m[1:].reshape(lt - 1, temporal_factor, h, w).amax(dim=1)
    per_latent_frame = torch.cat([m[:1], rest], dim=0)  # [T', H, W]
    pooled = F.adaptive_max_pool2d(per_latent_frame.unsqueeze(1), (lh, lw))  # [T', 1, H', W']
    return pooled.permute(1, 0, 2, 3).unsqueeze(0).contiguous()


# ------------------------------------------------------------------------------------------- Edit-GRPO


def _groups(group_ids: torch.Tensor, n: int, what: str) -> list[torch.Tensor]:
    """Index tensors (CPU) of the rows of each group, groups sorted by id."""
    group_ids = torch.as_tensor(group_ids).reshape(-1).cpu()
    if group_ids.shape[0] != n:
        raise InputError(f"{what}: {group_ids.shape[0]} group ids for {n} rewards.")
    _, inverse = torch.unique(group_ids, return_inverse=True)
    return [torch.nonzero(inverse == g).flatten() for g in range(int(inverse.max()) + 1)] if n else []


def group_advantages(
    rewards: torch.Tensor, group_ids: torch.Tensor, weights: torch.Tensor, *, eps: float = 1e-4, clip: float = 5.0
) -> tuple[torch.Tensor, float]:
    """Edit-GRPO advantages [N] and the fraction of groups dropped for zero variance.

    `rewards` [N, K] holds K reward terms; rows with the same `group_ids` are the G samples of one
    (video, instruction). Each term is normalized within its group, (r - mean_g) / (std_g + eps) with the
    population std (unbiased=False: a group is the whole population being compared), so terms of
    different scales weigh as `weights` [K] say; then A = Σ_k weights_k · z_k, clipped to ±clip.
    A term that is constant in a group contributes exactly 0; a group where every term with a non-zero
    weight is constant (incl. groups of one) has no signal, gets A = 0 and is counted as dropped."""
    rewards = rewards.float()
    if rewards.ndim == 1:
        rewards = rewards[:, None]
    if rewards.ndim != 2:
        raise InputError(f"group_advantages: rewards must be [N, K], got shape {tuple(rewards.shape)}.")
    weights = torch.as_tensor(weights, dtype=torch.float32).reshape(-1).to(rewards.device)
    if weights.shape[0] != rewards.shape[1]:
        raise InputError(f"group_advantages: {weights.shape[0]} weights for {rewards.shape[1]} reward terms.")
    groups = _groups(group_ids, rewards.shape[0], "group_advantages")
    adv = torch.zeros(rewards.shape[0], dtype=torch.float32, device=rewards.device)
    dropped = 0
    for idx in groups:
        r = rewards[idx.to(rewards.device)]  # [G, K]
        varies = r.amax(dim=0) > r.amin(dim=0)  # exact test: a mean of equal floats may leave a rounding residue
        if not bool((varies & (weights != 0)).any()):
            dropped += 1
            continue
        z = (r - r.mean(dim=0)) / (r.std(dim=0, unbiased=False) + eps)
        z = torch.where(varies, z, torch.zeros_like(z))
        adv[idx.to(rewards.device)] = (z * weights).sum(dim=1)
    return adv.clamp(-clip, clip), (dropped / len(groups) if groups else 0.0)


def clipped_policy_loss(
    logp: torch.Tensor, logp_old: torch.Tensor, adv: torch.Tensor, clip_range: float, *, stats: bool = True
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO-clip loss mean(max(-A ρ, -A clip(ρ, 1-ε, 1+ε))), ρ = exp(logp - logp_old), and statistics.

    `logp_old` and `adv` are treated as constants. Stats (floats): ratio_mean, ratio_std (population),
    clip_frac = fraction with |ρ - 1| > ε (Flow-GRPO's definition), approx_kl = mean((logp_old - logp)^2) / 2
    (the k2 estimator Flow-GRPO logs). On-policy (logp == logp_old): ρ = 1, clip_frac = 0, loss = -mean(A).
    `stats=False` returns {} instead: the four floats are host syncs, which a training loop on a GPU avoids."""
    if clip_range <= 0:
        raise InputError(f"clip_range must be > 0, got {clip_range}.")
    logp = logp.float()
    logp_old = logp_old.detach().float().to(logp.device)
    adv = adv.detach().float().to(logp.device)
    if logp.shape != logp_old.shape or adv.shape != logp.shape:
        raise InputError(
            f"clipped_policy_loss: logp {tuple(logp.shape)}, logp_old {tuple(logp_old.shape)} and "
            f"adv {tuple(adv.shape)} must have the same shape."
        )
    log_ratio = logp - logp_old
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    if not stats:
        return loss, {}
    with torch.no_grad():
        out = {
            "ratio_mean": float(ratio.mean()),
            "ratio_std": float(ratio.std(unbiased=False)),
            "clip_frac": float(((ratio - 1.0).abs() > clip_range).float().mean()),
            "approx_kl": float(0.5 * (log_ratio**2).mean()),
        }
    return loss, out


def kl_to_reference(
    mean_theta: torch.Tensor,
    mean_ref: torch.Tensor,
    std: torch.Tensor | float,
    noise_block: tuple[int, int, int] | None = None,
) -> torch.Tensor:
    """KL(N(mu_theta, std²) || N(mu_ref, std²)) per latent element, averaged per sample: [B].

    Both Flow-SDE steps share std (it depends on sigma only), so the KL is (mu_theta - mu_ref)^2 / (2 std^2);
    `std` is the step's std of x' (SDEStep.std), a float or [B]. The reference (LoRA off) gets no grad. With the
    step's `noise_block` the Gaussians live on the block means (`sampling.step_coordinates`): the KL of those,
    std / sqrt(block size) each, averaged over the blocks."""
    if mean_theta.shape != mean_ref.shape:
        raise InputError(f"kl_to_reference: means {tuple(mean_theta.shape)} and {tuple(mean_ref.shape)} differ.")
    s = _per_sample(std, mean_theta.ndim).to(mean_theta.device)
    if not bool((s > 0).all()):
        raise InputError("kl_to_reference: std must be > 0 (a deterministic ODE step has no KL; train SDE steps).")
    d, s = step_coordinates(mean_theta.float() - mean_ref.detach().float(), s, noise_block)
    return (d**2 / (2 * s**2)).flatten(1).mean(dim=1)


# ------------------------------------------------------------------------------------------- RWO


def rwo_weights(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    temperature: float = 1.0,
    mode: str = "softmax",
    eps: float = 1e-4,
) -> torch.Tensor:
    """Per-sample weights [N] for reward-weighted flow matching (ReViSE RWO; our reconstruction, since the
    paper gives no formula). Rewards are first normalized within each group, A = (r - mean_g)/(std_g + eps)
    (population std), so the weights do not depend on the reward's scale or offset. Then per group of n:

    - "softmax" (default): w = n · softmax(A / temperature) — always positive; temperature → ∞ gives plain FM;
    - "advantage": w = max(A, 0) / mean_g(max(A, 0)) — only better-than-average samples are imitated;
    - "signed": w = A — better samples pulled, worse pushed, nothing else (advantage-weighted matching).

    "softmax" and "advantage" average exactly 1 per group (so the loss scale matches SFT; groups of equal rewards get
    all ones): flow matching on the model's own samples plus a reward-decided part. That plain part is not neutral:
    at CFG 5 it drew the bundled editor toward weaker edits (EA 0.33 -> 0.16 in 33 steps, docs/small_models.md,
    section 40). "signed" averages 0 per group (equal rewards: all zeros), the reward-decided part alone.
    Weights carry no grad."""
    if mode not in RWO_MODES:
        raise InputError(f"RWO weighting mode '{mode}' is not one of {RWO_MODES}.")
    if not temperature > 0:
        raise InputError(f"RWO temperature must be > 0, got {temperature}.")
    r = rewards.detach().float().reshape(-1)
    w = torch.ones_like(r)
    for idx in _groups(group_ids, r.shape[0], "rwo_weights"):
        idx = idx.to(r.device)
        rg = r[idx]
        if not bool(rg.amax() > rg.amin()):
            if mode == "signed":
                w[idx] = 0.0
            continue
        a = (rg - rg.mean()) / (rg.std(unbiased=False) + eps)
        if mode == "signed":
            w[idx] = a
        elif mode == "softmax":
            w[idx] = rg.shape[0] * torch.softmax(a / temperature, dim=0)
        else:
            pos = a.clamp(min=0.0)
            w[idx] = pos / pos.mean()
    return w


def reward_weighted_fm_loss(
    v_pred: torch.Tensor,
    v_target: torch.Tensor,
    weights: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
    mask_weight: float = 0.0,
) -> torch.Tensor:
    """RWO loss: mean_b w_b · masked_fm_loss_b, with `weights` [B] from `rwo_weights` (constants)."""
    per_sample = masked_fm_loss(v_pred, v_target, mask, mask_weight, reduce=False)
    weights = torch.as_tensor(weights, dtype=torch.float32).detach().reshape(-1).to(per_sample.device)
    if weights.shape != per_sample.shape:
        raise InputError(f"reward_weighted_fm_loss: {weights.shape[0]} weights for a batch of {per_sample.shape[0]}.")
    return (weights * per_sample).mean()
