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


NoiseBlock = Optional[tuple[int, int, int]]


def block_mean(x: torch.Tensor, block: tuple[int, int, int]) -> torch.Tensor:
    """Means of latents [B, C, T, H, W] over (frames, rows, cols) blocks: [B, C, T/bt, H/bh, W/bw] (fp32)."""
    t, h, w = x.shape[-3:]
    if t % block[0] or h % block[1] or w % block[2]:
        raise InputError(
            f"rollout.noise_block {list(block)} does not tile the latents (frames, rows, cols) = ({t}, {h}, {w}); "
            "pick divisors of each, or [1, 1, 1] for the plain Flow-SDE."
        )
    return torch.nn.functional.avg_pool3d(x.float(), kernel_size=block, stride=block)


def block_project(x: torch.Tensor, block: tuple[int, int, int]) -> torch.Tensor:
    """x projected onto latents that are constant over each block: each block's mean, broadcast back."""
    m = block_mean(x, block)
    for dim, k in zip((-3, -2, -1), block):
        m = m.repeat_interleave(k, dim=dim)
    return m


def _is_blocked(block: NoiseBlock) -> bool:
    return block is not None and tuple(block) != (1, 1, 1)


def step_coordinates(difference: torch.Tensor, std, noise_block: NoiseBlock = None):
    """Where a Flow-SDE step is Gaussian: (the difference of two latents there, the step's std there). Plain: the
    latents themselves and std. With a noise block only the block-constant subspace is random (the rest is
    deterministic), so the block means of the difference, each with std / sqrt(block size). The log-prob and the
    PPO KL of a step both live there."""
    if not _is_blocked(noise_block):
        return difference, std
    return block_mean(difference, tuple(noise_block)), std / math.sqrt(math.prod(noise_block))


def gaussian_step_log_prob(
    sample: torch.Tensor, mean: torch.Tensor, std: float, noise_block: NoiseBlock = None
) -> torch.Tensor:
    """log N(sample; mean, std^2) per element, averaged per sample: [B]; with a noise block, that of the block means
    u = block_mean(sample - mean) ~ N(0, std^2 / block size), averaged over the blocks (`step_coordinates`)."""
    r, s = step_coordinates(sample.float() - mean.float(), std, noise_block)
    log_prob = -(r**2) / (2 * s**2) - math.log(s) - 0.5 * math.log(2 * math.pi)
    return log_prob.mean(dim=tuple(range(1, r.ndim)))


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
    noise_block: NoiseBlock = None,
) -> SDEStep:
    """Flow-SDE step (Flow-GRPO): same marginals as the ODE, Gaussian transition with a known log-density.

    std_t = a*sqrt(sigma/(1-sigma)) (at sigma=1 the denominator uses sigma_max = sigmas[1]);
    mean = x + v dt + std_t^2/(2 sigma) (x + (1-sigma) v) dt; x' = mean + std_t sqrt(-dt) z.
    With `prev_sample` the log-prob of that given sample is returned (PPO ratio); a = 0 is the Euler step.

    `noise_block` (frames, rows, cols) restricts the SDE to latents constant over such blocks (P: the block-mean
    projection): x' = x + v dt + P[std_t^2/(2 sigma) (x + (1-sigma) v)] dt + std_t sqrt(-dt) P z, the plain SDE's
    noise and drift correction projected, the ODE step on the rest (which keeps the marginals: the diffusion and its
    score correction act on the same subspace). It credits only the coarse directions a verifier reacts to, meant to
    cut the policy gradient's noise (docs/small_models.md, section 50 measures it)."""
    x, v = x.float(), v.float()
    dt = sigma_next - sigma
    denom = 1 - (sigma_max if sigma >= 1.0 else sigma)
    std_t = noise_level * math.sqrt(sigma / denom) if sigma > 0 else 0.0
    blocked = _is_blocked(noise_block)
    block = tuple(noise_block) if blocked else None
    mean = x + v * dt
    if std_t > 0:
        correction = std_t**2 / (2 * sigma) * (x + (1 - sigma) * v) * dt
        mean = mean + (block_project(correction, block) if blocked else correction)
    std = std_t * math.sqrt(-dt)
    if std == 0.0:
        return SDEStep(mean if prev_sample is None else prev_sample.float(), None, mean, 0.0)
    if prev_sample is None:
        z = noise if noise is not None else torch.randn(x.shape, generator=generator, device="cpu").to(x.device)
        z = z.float()
        prev_sample = mean + std * (block_project(z, block) if blocked else z)
    prev_sample = prev_sample.float()
    return SDEStep(prev_sample, gaussian_step_log_prob(prev_sample, mean, std, block), mean, std)


VelocityFn = Callable[[torch.Tensor, float], torch.Tensor]  # (x_sigma fp32, sigma) -> v fp32


def _schedule(steps: int, shift: float, sampler: str, first: int):
    """(UniPC scheduler or None, the steps+1 sigmas) of a run whose first step is `first`."""
    if sampler not in SAMPLERS:
        raise InputError(f"sampler '{sampler}' is not one of {SAMPLERS}.")
    if sampler != "unipc":
        return None, shifted_sigmas(steps, shift)
    from diffusers import UniPCMultistepScheduler

    sched = UniPCMultistepScheduler(
        num_train_timesteps=NUM_TRAIN_TIMESTEPS,
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=shift,
    )
    sched.set_timesteps(steps, device="cpu")
    sched.set_begin_index(first)
    return sched, sched.sigmas.float()


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
    stop: Optional[int] = None,
    resume: Optional[tuple[int, torch.Tensor]] = None,
) -> torch.Tensor:
    """Integrate from a (noised) start to sigma = 0. With strength < 1 the start is the source latents noised to
    the first sigma that is run (img2img-style). Every step checks for NaN/Inf and calls `progress` with the clean
    latents it predicts (for previews; also the point where an app can interrupt). `stop`: return the latents
    before that step runs; `resume` (step, latents): start there instead (`noise` and `strength` unused), as a
    candidate branched off a shared trunk does (`shared_trunk`). A UniPC run resumed mid-way restarts its multistep
    history, so it is not bit-equal to the uninterrupted run; an Euler run is."""
    first = start_step(steps, strength) if resume is None else resume[0]
    last = steps if stop is None else stop
    if not 0 <= first < last <= steps:
        raise InputError(f"sampling steps {first}..{last} are not inside 0..{steps}; check shared_steps.")
    sched, sigmas = _schedule(steps, shift, sampler, first)
    if resume is not None:
        x = resume[1].float()
    else:
        s0 = float(sigmas[first])
        x = (1 - s0) * source_latents.float() + s0 * noise.float() if first > 0 else noise.float()
    total = steps - first
    for i in range(first, last):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        v = _finite_velocity(velocity, x, sigma, i, steps)
        denoised = x - sigma * v  # the clean latents this step predicts (x = (1 - s) x0 + s eps, v = eps - x0)
        if sched is not None:
            x = sched.step(v, sched.timesteps[i], x, return_dict=False)[0].float()
        else:
            x = euler_step(x, v, sigma, sigma_next)
        progress(i - first + 1, total, denoised)
    return x


def _finite_velocity(velocity: VelocityFn, x: torch.Tensor, sigma: float, i: int, steps: int) -> torch.Tensor:
    v = velocity(x, sigma).float()
    if not torch.isfinite(v).all():
        raise NonFiniteError(
            f"the DiT produced NaN/Inf at step {i + 1}/{steps} (sigma {sigma:.3f}); nothing was "
            "saved. Run the DiT in bf16 or fp32 (fp16 overflows in Wan), or check the LoRA "
            "strengths and the conditioning."
        )
    return v


@dataclass(frozen=True)
class Trunk:
    """The first `step` steps of a sampling run, shared by candidates that branch off it (best-of-N's
    `shared_steps`): its latents at sigma[step] and the clean latents predicted there."""

    step: int
    sigma: float
    latents: torch.Tensor
    denoised: torch.Tensor


def shared_trunk(
    velocity: VelocityFn,
    noise: torch.Tensor,
    source_latents: torch.Tensor,
    *,
    shared_steps: int,
    steps: int,
    shift: float,
    strength: float = 1.0,
    sampler: str = "euler",
    progress: ProgressFn = no_progress,
) -> Trunk:
    """Run `shared_steps` steps of `sample` once, then one more velocity call for the clean latents predicted at the
    branch point (what `branch_starts` re-noises). At least one step must be left to the branches."""
    first = start_step(steps, strength)
    step = first + shared_steps
    if shared_steps < 1 or step >= steps:
        raise InputError(
            f"shared_steps must be 1..{steps - first - 1} (the steps run minus one, so each candidate runs at least "
            f"one step of its own), got {shared_steps}."
        )
    x = sample(
        velocity,
        noise,
        source_latents,
        steps=steps,
        shift=shift,
        strength=strength,
        sampler=sampler,
        progress=progress,
        stop=step,
    )
    sigma = float(_schedule(steps, shift, sampler, first)[1][step])
    return Trunk(step, sigma, x, x - sigma * _finite_velocity(velocity, x, sigma, step, steps))


def branch_starts(trunk: Trunk, noise: torch.Tensor, continues: torch.Tensor) -> torch.Tensor:
    """Start latents of candidates branched off `trunk` (rows of `trunk` repeated to the candidates' rows): a row
    where `continues` is True goes on from the trunk's latents (the candidate whose noise started it); the others
    restart from the trunk's clean prediction noised with their own `noise` row to the branch sigma, so they share
    the trunk's work but not its noise:  x = (1 - sigma) denoised + sigma * noise."""
    group = noise.shape[0] // trunk.latents.shape[0]
    if group * trunk.latents.shape[0] != noise.shape[0]:
        raise InputError(f"{noise.shape[0]} candidate rows do not divide over {trunk.latents.shape[0]} trunk rows.")
    x = trunk.latents.repeat_interleave(group, 0).float()
    fresh = (1 - trunk.sigma) * trunk.denoised.repeat_interleave(group, 0).float() + trunk.sigma * noise.float()
    keep = continues.to(x.device).view(-1, *([1] * (x.dim() - 1)))
    return torch.where(keep, x, fresh.to(x.device))
