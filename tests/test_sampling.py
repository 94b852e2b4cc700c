"""Flow-matching sampler math against independent computations."""

import math

import pytest
import torch

from viva_core.errors import InputError, NonFiniteError
from viva_core.sampling import euler_step, sample, sde_step_with_logprob, shifted_sigmas, start_step


def test_shifted_sigmas_match_formula():
    s = shifted_sigmas(10, 3.0)
    assert s.shape == (11,) and s[0] == 1.0 and s[-1] == 0.0
    for i, raw in enumerate([1 - k / 10 for k in range(11)]):
        assert math.isclose(float(s[i]), 3 * raw / (1 + 2 * raw), abs_tol=1e-6)
    assert torch.all(s[1:] < s[:-1])


def test_sde_with_zero_noise_is_euler():
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(2, 4, 3, 5, 5, generator=g), torch.randn(2, 4, 3, 5, 5, generator=g)
    step = sde_step_with_logprob(x, v, 0.8, 0.6, noise_level=0.0, sigma_max=0.9, generator=g)
    assert torch.equal(step.sample, euler_step(x, v, 0.8, 0.6))
    assert step.log_prob is None


def test_sde_log_prob_matches_torch_normal():
    g = torch.Generator().manual_seed(1)
    x, v = torch.randn(3, 4, 2, 4, 4, generator=g), torch.randn(3, 4, 2, 4, 4, generator=g)
    sigma, sigma_next, a = 0.7, 0.55, 0.7
    step = sde_step_with_logprob(x, v, sigma, sigma_next, noise_level=a, sigma_max=0.95, generator=g)
    dt = sigma_next - sigma
    std_t = a * math.sqrt(sigma / (1 - sigma))
    mean = x * (1 + std_t**2 / (2 * sigma) * dt) + v * (1 + std_t**2 * (1 - sigma) / (2 * sigma)) * dt
    ref = torch.distributions.Normal(mean.double(), std_t * math.sqrt(-dt)).log_prob(step.sample.double())
    torch.testing.assert_close(step.mean, mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(step.log_prob.double(), ref.mean(dim=(1, 2, 3, 4)), rtol=1e-5, atol=1e-5)
    again = sde_step_with_logprob(x, v, sigma, sigma_next, a, 0.95, prev_sample=step.sample)
    torch.testing.assert_close(again.log_prob, step.log_prob)


def test_sde_at_sigma_one_uses_sigma_max():
    x, v = torch.zeros(1, 1, 1, 2, 2), torch.ones(1, 1, 1, 2, 2)
    step = sde_step_with_logprob(x, v, 1.0, 0.9, noise_level=0.5, sigma_max=0.9, noise=torch.zeros_like(x))
    assert math.isclose(step.std, 0.5 * math.sqrt(1.0 / 0.1) * math.sqrt(0.1), rel_tol=1e-6)


@pytest.mark.parametrize("sampler", ["euler", "unipc"])
def test_sampler_follows_the_straight_path_to_x0(sampler):
    g = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(1, 4, 2, 3, 3, generator=g), torch.randn(1, 4, 2, 3, 3, generator=g)
    calls = []

    def velocity(x, sigma):  # exact velocity of the straight path through x0
        calls.append(sigma)
        return (x - x0) / sigma

    out = sample(velocity, eps, torch.zeros_like(x0), steps=8, shift=3.0, sampler=sampler)
    torch.testing.assert_close(out, x0, rtol=1e-4, atol=1e-4)
    assert len(calls) == 8


def test_strength_starts_from_noised_source():
    src, eps = torch.full((1, 1, 1, 2, 2), 2.0), torch.zeros(1, 1, 1, 2, 2)
    seen = []

    def velocity(x, sigma):
        seen.append((x.clone(), sigma))
        return torch.zeros_like(x)

    sample(velocity, eps, src, steps=10, shift=1.0, strength=0.5, sampler="euler")
    assert len(seen) == 5 == 10 - start_step(10, 0.5)
    x_first, s0 = seen[0]
    torch.testing.assert_close(x_first, (1 - s0) * src)
    assert math.isclose(s0, 0.5, abs_tol=1e-6)


def test_bad_settings_and_nan_are_reported():
    with pytest.raises(InputError):
        shifted_sigmas(0, 5.0)
    with pytest.raises(InputError):
        start_step(10, 0.0)
    with pytest.raises(NonFiniteError, match="NaN"):
        sample(
            lambda x, s: torch.full_like(x, float("nan")),
            torch.zeros(1, 1, 1, 1, 1),
            torch.zeros(1, 1, 1, 1, 1),
            steps=2,
            shift=1.0,
        )


@pytest.mark.parametrize("sampler", ["euler", "unipc"])
def test_progress_gets_the_predicted_clean_latents(sampler):
    """The preview each step passes to `progress` is the x0 the step's velocity implies. With the exact velocity of
    a single clean sample x0 (v = (x - x0) / sigma, from x = (1 - sigma) x0 + sigma eps, v = eps - x0) every
    preview is x0 itself, and the update count is the step count."""
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(1, 4, 2, 3, 3, generator=g), torch.randn(1, 4, 2, 3, 3, generator=g)
    seen = []
    sample(
        lambda x, sigma: (x - x0) / sigma,
        noise,
        torch.zeros_like(x0),
        steps=5,
        shift=3.0,
        sampler=sampler,
        progress=lambda done, total, preview: seen.append((done, total, preview)),
    )
    assert [(d, t) for d, t, _ in seen] == [(i, 5) for i in range(1, 6)]
    for _, _, preview in seen:
        torch.testing.assert_close(preview, x0, rtol=1e-4, atol=1e-4)


def test_euler_sampler_equals_diffusers_flow_match_euler_on_a_curved_field():
    """The Euler grid and steps against diffusers' FlowMatchEulerDiscreteScheduler (Wan's shift, given the unshifted
    linear sigmas as Wan's sampler spaces them): same sigmas, and the same trajectory on a velocity field that is not
    straight (so a wrong step size or sign would not cancel out)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    steps, shift = 7, 5.0
    ref = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    ref.set_timesteps(sigmas=torch.linspace(1.0, 0.0, steps + 1)[:-1].tolist())
    torch.testing.assert_close(ref.sigmas.float(), shifted_sigmas(steps, shift), rtol=0, atol=1e-6)

    g = torch.Generator().manual_seed(3)
    noise, w = torch.randn(1, 2, 1, 2, 2, generator=g), torch.randn(1, 2, 1, 2, 2, generator=g)

    def velocity(x, sigma):
        return torch.sin(3 * x) * (1 + sigma) + w

    ours = sample(velocity, noise, torch.zeros_like(noise), steps=steps, shift=shift, sampler="euler")
    x = noise.clone()
    for t, sigma in zip(ref.timesteps, ref.sigmas[:-1]):
        x = ref.step(velocity(x, float(sigma)), t, x, return_dict=False)[0]
    torch.testing.assert_close(ours, x.float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shift", [3.0, 5.0])  # Wan2.1 1.3B ships flow_shift 3.0; Lucy-Edit-Dev and Wan2.2 5.0
def test_unipc_sampler_equals_diffusers_unipc_as_wan_ships_it(shift):
    """The UniPC sampler against diffusers' UniPCMultistepScheduler built from Wan's scheduler_config.json
    (flow_prediction, use_flow_sigmas, flow_shift, solver_order 2, bh2, final sigma 0): the grid is Wan's shift
    applied to linspace(1, 1/1000, steps + 1) without its last point, then 0 (unlike the Euler grid, which runs
    to 0 in `steps` equal raw steps), and the trajectory on a curved velocity field matches step for step."""
    from diffusers import UniPCMultistepScheduler
    from tiny_editor import WAN_SCHEDULER

    steps = 7
    ref = UniPCMultistepScheduler.from_config({**WAN_SCHEDULER, "flow_shift": shift})
    ref.set_timesteps(steps, device="cpu")
    raw = [1 - (1 - 1 / 1000) * k / steps for k in range(steps)]  # linspace(1, 1/1000, steps + 1)[:-1]
    want = torch.tensor([shift * r / (1 + (shift - 1) * r) for r in raw] + [0.0])
    torch.testing.assert_close(ref.sigmas.float(), want, rtol=0, atol=2e-6)  # diffusers starts at 1 - 1e-6

    g = torch.Generator().manual_seed(4)
    noise, w = torch.randn(1, 2, 1, 2, 2, generator=g), torch.randn(1, 2, 1, 2, 2, generator=g)

    def velocity(x, sigma):
        return torch.sin(3 * x) * (1 + sigma) + w

    seen = []
    ours = sample(
        lambda x, s: seen.append(s) or velocity(x, s),
        noise,
        torch.zeros_like(noise),
        steps=steps,
        shift=shift,
        sampler="unipc",
    )
    torch.testing.assert_close(torch.tensor(seen), want[:-1], rtol=0, atol=2e-6)
    x = noise.clone()
    for t, sigma in zip(ref.timesteps, ref.sigmas[:-1]):
        x = ref.step(velocity(x, float(sigma)), t, x, return_dict=False)[0]
    torch.testing.assert_close(ours, x.float(), rtol=1e-5, atol=1e-5)
    euler = sample(velocity, noise, torch.zeros_like(noise), steps=steps, shift=shift, sampler="euler")
    assert not torch.allclose(ours, euler, atol=1e-3)  # the field is curved enough to tell the two solvers apart


# ----------------------------------------------------------------------------------- shared trunk and branches


def _toy_velocity(calls: list):
    """A nonlinear velocity with no fixed structure the sampler could exploit; records each call's batch size."""

    def v(x, sigma):
        calls.append(x.shape[0])
        return torch.tanh(x) + sigma * x - 0.3

    return v


def _reference_branches(eps: torch.Tensor, group: int, k: int, steps: int, shift: float) -> torch.Tensor:
    """By hand, Euler: trunk rows (each group's first noise row) run k steps; at sigma_k each group's first row goes
    on, the others restart from (1 - s_k) x0_hat + s_k eps_j, x0_hat = x - s_k v; then all rows finish."""
    t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    s = [float(x) for x in (shift * t / (1 + (shift - 1) * t))]

    def v(x, sigma):
        return torch.tanh(x) + sigma * x - 0.3

    x = eps[::group].clone()
    for i in range(k):
        x = x + (s[i + 1] - s[i]) * v(x, s[i])
    x0_hat = x - s[k] * v(x, s[k])
    rows = []
    for r in range(eps.shape[0]):
        trunk_row = r // group
        rows.append(x[trunk_row] if r % group == 0 else (1 - s[k]) * x0_hat[trunk_row] + s[k] * eps[r])
    x = torch.stack(rows)
    for i in range(k, steps):
        x = x + (s[i + 1] - s[i]) * v(x, s[i])
    return x


def test_branches_off_a_shared_trunk_match_a_hand_computation_and_cost_its_steps_once():
    from viva_core.sampling import branch_starts, shared_trunk

    steps, shift, k, group = 6, 3.0, 2, 3
    eps = torch.randn(2 * group, 4, 5, generator=torch.Generator().manual_seed(1))
    calls: list = []
    trunk = shared_trunk(
        _toy_velocity(calls), eps[::group], torch.zeros(2, 4, 5), shared_steps=k, steps=steps, shift=shift
    )
    continues = torch.tensor([r % group == 0 for r in range(eps.shape[0])])
    start = branch_starts(trunk, eps, continues)
    out = sample(_toy_velocity(calls), eps, torch.zeros_like(eps), steps=steps, shift=shift, resume=(k, start))
    torch.testing.assert_close(out, _reference_branches(eps, group, k, steps, shift), atol=1e-5, rtol=0)
    assert calls == [2] * (k + 1) + [6] * (steps - k)  # trunk steps + the branch point once, then every row
    plain = sample(_toy_velocity([]), eps[::group], torch.zeros(2, 4, 5), steps=steps, shift=shift)
    torch.testing.assert_close(out[::group], plain, atol=1e-6, rtol=0)  # Euler: the trunk's own rows are unbroken
    assert (out[1] - out[2]).abs().max() > 1e-2  # branches keep their own noise


@pytest.mark.parametrize("sampler", ["euler", "unipc"])
def test_stop_then_resume_is_the_whole_run(sampler):
    """Euler resumes bit-for-bit; UniPC restarts its multistep history at the resume step, so it stays close."""
    eps = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(2))
    whole = sample(_toy_velocity([]), eps, torch.zeros_like(eps), steps=8, shift=5.0, sampler=sampler)
    part = sample(_toy_velocity([]), eps, torch.zeros_like(eps), steps=8, shift=5.0, sampler=sampler, stop=3)
    rest = sample(_toy_velocity([]), eps, torch.zeros_like(eps), steps=8, shift=5.0, sampler=sampler, resume=(3, part))
    if sampler == "euler":
        torch.testing.assert_close(rest, whole, atol=1e-6, rtol=0)
    else:
        assert (rest - whole).abs().max() < 0.05 * whole.abs().max()


def test_shared_steps_outside_the_run_are_refused():
    from viva_core.sampling import Trunk, branch_starts, shared_trunk

    eps = torch.randn(1, 2, 2)
    for bad in (0, 4, 9):
        with pytest.raises(InputError, match="shared_steps must be 1..3"):
            shared_trunk(_toy_velocity([]), eps, eps, shared_steps=bad, steps=4, shift=1.0)
    with pytest.raises(InputError, match="shared_steps must be 1..1"):  # strength 0.5 runs 2 of the 4 steps
        shared_trunk(_toy_velocity([]), eps, eps, shared_steps=2, steps=4, shift=1.0, strength=0.5)
    trunk = Trunk(1, 0.5, torch.zeros(2, 2), torch.zeros(2, 2))
    with pytest.raises(InputError, match="3 candidate rows do not divide over 2 trunk rows"):
        branch_starts(trunk, torch.zeros(3, 2), torch.zeros(3, dtype=torch.bool))
