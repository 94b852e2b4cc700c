"""Flow-SDE rollouts with log-probabilities for Edit-GRPO / RWO: a whole group in one batched DiT call per step.

Each member draws its noise from its own generator, so a member's trajectory does not depend on the group size
or on how the group is batched; only the DiT call is shared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..errors import NonFiniteError
from ..sampling import euler_step, sde_step_with_logprob


@dataclass
class Transition:
    """One SDE step of every group member, kept (on the rollout's device) for the policy update: x -> x_next with
    log p_old."""

    step: int
    x: torch.Tensor  # [G, C, T, H, W] fp32
    x_next: torch.Tensor
    log_prob: torch.Tensor  # [G]


@torch.no_grad()
def sde_rollout(
    velocity: Callable[[torch.Tensor, float], torch.Tensor],
    latent_shape: Sequence[int],
    sigmas: torch.Tensor,
    sde_steps: Sequence[int],
    noise_level: float,
    generators: Sequence[torch.Generator],
    device: torch.device | str,
    start: torch.Tensor | None = None,
    noise_block: tuple[int, int, int] | None = None,
) -> tuple[torch.Tensor, list[Transition]]:
    """Sample len(generators) trajectories from sigma=1 to 0: SDE (with log-prob) on `sde_steps`, Euler ODE on the
    others. Returns the final latents [G, ...] (fp32) and the SDE transitions, both on `device`, where the decoder
    and every inner update's policy pass read them (no host round trip of the transitions per pass). `start`
    [G, ...] is the noise at sigma 1 when given (a group sharing it differs only by the SDE steps' noise); else each
    generator draws it. Each generator draws on its own device (the trainer's are on the rollout device).
    `noise_block`: the SDE steps' noise restricted to block-constant latents (`sampling.sde_step_with_logprob`)."""

    def noise() -> torch.Tensor:
        return torch.stack([torch.randn(tuple(latent_shape), generator=g, device=g.device) for g in generators]).to(
            device
        )

    x = noise() if start is None else start.to(device=device, dtype=torch.float32)
    sde, transitions = set(sde_steps), []
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        v = velocity(x, s)
        if i in sde:
            st = sde_step_with_logprob(
                x, v, s, s_next, noise_level, float(sigmas[1]), noise=noise(), noise_block=noise_block
            )
            transitions.append(Transition(i, x, st.sample, st.log_prob))
            x = st.sample
        else:
            x = euler_step(x, v, s, s_next)
    if not torch.isfinite(x).all():
        raise NonFiniteError("a rollout produced NaN/Inf latents; lower optim.lr or check the data.")
    return x, transitions
