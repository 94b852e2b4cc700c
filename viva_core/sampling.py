"""Flow-matching sampling: the sigma schedule, the Euler ODE step, the Flow-SDE step with its log-probability,
and the sampling loop. sigma runs 1 -> 0 and x_sigma = (1 - sigma) x0 + sigma * eps, so v = eps - x0 and
dt = sigma_next - sigma < 0. All sampler math is fp32 whatever the model dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .errors import InputError, NonFiniteError
from .runtime import ProgressFn, no_progress
from .settings import SAMPLERS

NUM_TRAIN_TIMESTEPS = 1000  # Wan's timestep = sigma * 1000


def shifted_sigmas(steps: int, shift: float) -> torch.Tensor:
    """steps+1 sigmas from 1 to 0, warped by Wan's shift: s' = shift*s / (1 + (shift-1)*s)."""
    if steps < 1:
        raise InputError(f"steps must be >= 1, got {steps}.")
    if shift <= 0:
        raise InputError(f"shift must be > 0, got {shift}.")
    s = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return (shift * s / (1 + (shift - 1) * s)).float()


def start_step(steps: int, strength: float) -> int:
    """First step to run when starting from a noised source: strength 1 runs all steps, 0.5 the last half."""
    if not 0.0 < strength <= 1.0:
        raise InputError(f"strength must be in (0, 1], got {strength}.")
    return min(steps - 1, int(round(steps * (1.0 - strength))))


def euler_step(x: torch.Tensor, v: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    return x + (sigma_next - sigma) * v


@dataclass
class SDEStep:
    sample: torch.Tensor  # x' (fp32)
    log_prob: Optional[torch.Tensor]  # [B], mean over latent elements; None when the step is deterministic
    mean: torch.Tensor
    std: float  # std of x' given x: a * sqrt(sigma / (1 - sigma)) * sqrt(-dt)


def sde_step_with_logprob(
    x: torch.Tensor,
    v: torch.Tensor,
    sigma: float,
    sigma_next: float,
    noise_level: float,
    sigma_max: float,
    *,
    noise: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
    prev_sample: Optional[torch.Tensor] = None,
) -> SDEStep:
    """Flow-SDE step (Flow-GRPO): same marginals as the ODE, Gaussian transition with a known log-density.

    std_t = a*sqrt(sigma/(1-sigma)) (at sigma=1 the denominator uses sigma_max = sigmas[1]);
    mean = x + v dt + std_t^2/(2 sigma) (x + (1-sigma) v) dt; x' = mean + std_t sqrt(-dt) z.
    With `prev_sample` the log-prob of that given sample is returned (PPO ratio); a = 0 is the Euler step."""
    x, v = x.float(), v.float()
    dt = sigma_next - sigma
    denom = 1 - (sigma_max if sigma >= 1.0 else sigma)
    std_t = noise_level * math.sqrt(sigma / denom) if sigma > 0 else 0.0
    mean = x + v * dt
    if std_t > 0:
        mean = mean + std_t**2 / (2 * sigma) * (x + (1 - sigma) * v) * dt
    std = std_t * math.sqrt(-dt)
    if std == 0.0:
        return SDEStep(mean if prev_sample is None else prev_sample.float(), None, mean, 0.0)
    if prev_sample is None:
        z = noise if noise is not None else torch.randn(x.shape, generator=generator, device="cpu").to(x.device)
        prev_sample = mean + std * z.float()
    prev_sample = prev_sample.float()
    log_prob = -((prev_sample - mean) ** 2) / (2 * std**2) - math.log(std) - 0.5 * math.log(2 * math.pi)
    return SDEStep(prev_sample, log_prob.mean(dim=tuple(range(1, x.ndim))), mean, std)


VelocityFn = Callable[[torch.Tensor, float], torch.Tensor]  # (x_sigma fp32, sigma) -> v fp32


def sample(
    velocity: VelocityFn,
    noise: torch.Tensor,
    source_latents: torch.Tensor,
    *,
    steps: int,
    shift: float,
    strength: float = 1.0,
    sampler: str = "euler",
    progress: ProgressFn = no_progress,
) -> torch.Tensor:
    """Integrate from a (noised) start to sigma = 0. With strength < 1 the start is the source latents noised to
    the first sigma that is run (img2img-style). Every step checks for NaN/Inf and calls `progress` with the clean
    latents it predicts (for previews; also the point where an app can interrupt)."""
    if sampler not in SAMPLERS:
        raise InputError(f"sampler '{sampler}' is not one of {SAMPLERS}.")
    first = start_step(steps, strength)
    if sampler == "unipc":
        from diffusers import UniPCMultistepScheduler

        sched = UniPCMultistepScheduler(
            num_train_timesteps=NUM_TRAIN_TIMESTEPS,
            prediction_type="flow_prediction",
            use_flow_sigmas=True,
            flow_shift=shift,
        )
        sched.set_timesteps(steps, device="cpu")
        sched.set_begin_index(first)
        sigmas = sched.sigmas.float()
    else:
        sigmas = shifted_sigmas(steps, shift)
    s0 = float(sigmas[first])
    x = (1 - s0) * source_latents.float() + s0 * noise.float() if first > 0 else noise.float()
    total = steps - first
    for i in range(first, steps):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        v = velocity(x, sigma).float()
        if not torch.isfinite(v).all():
            raise NonFiniteError(
                f"the DiT produced NaN/Inf at step {i + 1}/{steps} (sigma {sigma:.3f}); nothing was "
                "saved. Run the DiT in bf16 or fp32 (fp16 overflows in Wan), or check the LoRA "
                "strengths and the conditioning."
            )
        denoised = x - sigma * v  # the clean latents this step predicts (x = (1 - s) x0 + s eps, v = eps - x0)
        if sampler == "unipc":
            x = sched.step(v, sched.timesteps[i], x, return_dict=False)[0].float()
        else:
            x = euler_step(x, v, sigma, sigma_next)
        progress(i - first + 1, total, denoised)
    return x
