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


def _np_block_means(a, block):
    """Block means of an array [B, C, T, H, W] by explicit loops over the blocks (the reference for avg_pool3d)."""
    import numpy as np

    bt, bh, bw = block
    b, c, t, h, w = a.shape
    out = np.zeros((b, c, t // bt, h // bh, w // bw))
    for i in range(t // bt):
        for j in range(h // bh):
            for k in range(w // bw):
                out[:, :, i, j, k] = a[:, :, i * bt : (i + 1) * bt, j * bh : (j + 1) * bh, k * bw : (k + 1) * bw].mean(
                    axis=(2, 3, 4)
                )
    return out


def _np_broadcast(m, block):
    import numpy as np

    for axis, k in zip((2, 3, 4), block):
        m = np.repeat(m, k, axis=axis)
    return m


def test_block_noise_sde_step_matches_a_numpy_reference():
    """noise_block restricts the Flow-SDE to block-constant latents: the drift correction and the noise are the plain
    step's projected onto the block means, the rest is the Euler step, and the log-density is that of the block means
    of x' - mean, N(0, std^2 / block size) each, averaged over the blocks; written out in float64 numpy."""
    import numpy as np

    g = torch.Generator().manual_seed(3)
    shape, block = (2, 3, 4, 6, 8), (2, 3, 4)
    x, v, z = (torch.randn(shape, generator=g) for _ in range(3))
    sigma, sigma_next, a, sigma_max = 0.8, 0.6, 0.7, 0.95
    step = sde_step_with_logprob(x, v, sigma, sigma_next, a, sigma_max, noise=z, noise_block=block)

    xd, vd, zd = (t.double().numpy() for t in (x, v, z))
    dt = sigma_next - sigma
    std_t = a * math.sqrt(sigma / (1 - sigma))
    std = std_t * math.sqrt(-dt)
    project = lambda arr: _np_broadcast(_np_block_means(arr, block), block)  # noqa: E731
    mean = xd + vd * dt + project(std_t**2 / (2 * sigma) * (xd + (1 - sigma) * vd) * dt)
    sample = mean + std * project(zd)
    u = _np_block_means(sample - mean, block)
    s = std / math.sqrt(np.prod(block))
    log_prob = (-(u**2) / (2 * s**2) - math.log(s) - 0.5 * math.log(2 * math.pi)).mean(axis=(1, 2, 3, 4))
    np.testing.assert_allclose(step.mean.double().numpy(), mean, rtol=0, atol=2e-6)
    np.testing.assert_allclose(step.sample.double().numpy(), sample, rtol=0, atol=2e-6)
    np.testing.assert_allclose(step.log_prob.double().numpy(), log_prob, rtol=1e-5, atol=1e-5)
    # off the block-constant subspace the step is exactly the ODE's
    euler = xd + vd * dt
    np.testing.assert_allclose(
        step.sample.double().numpy() - project(step.sample.double().numpy()), euler - project(euler), atol=2e-6
    )
    # PPO's re-evaluation of the stored sample gives the same log-prob; [1, 1, 1] is the plain step bit for bit
    again = sde_step_with_logprob(x, v, sigma, sigma_next, a, sigma_max, prev_sample=step.sample, noise_block=block)
    torch.testing.assert_close(again.log_prob, step.log_prob)
    plain = sde_step_with_logprob(x, v, sigma, sigma_next, a, sigma_max, noise=z)
    ones = sde_step_with_logprob(x, v, sigma, sigma_next, a, sigma_max, noise=z, noise_block=(1, 1, 1))
    assert torch.equal(plain.sample, ones.sample) and torch.equal(plain.log_prob, ones.log_prob)


def test_block_noise_block_means_have_the_stated_spread():
    """Drawn from a generator, x' - mean is constant over each block and its block means have variance std^2 / block
    size (the projection of the plain step's noise): the density the log-prob assumes."""
    g = torch.Generator().manual_seed(4)
    block = (1, 2, 4)
    x, v = torch.zeros(64, 2, 3, 4, 8), torch.zeros(64, 2, 3, 4, 8)
    step = sde_step_with_logprob(x, v, 0.7, 0.5, 0.9, 0.95, generator=g, noise_block=block)
    r = (step.sample - step.mean).reshape(64, 2, 3, 2, 2, 2, 4)  # rows in 2 blocks of 2, cols in 2 blocks of 4
    assert torch.allclose(r, r[:, :, :, :, :1, :, :1].expand_as(r), atol=1e-6)
    u = r[:, :, :, :, 0, :, 0]
    assert float(u.var()) == pytest.approx(step.std**2 / 8, rel=0.1)  # 64 x 2 x 3 x 2 x 2 = 1,536 draws
    with pytest.raises(InputError, match=r"noise_block \[1, 3, 4\] does not tile"):
        sde_step_with_logprob(x, v, 0.7, 0.5, 0.9, 0.95, generator=g, noise_block=(1, 3, 4))


def test_block_kl_to_reference_matches_a_numpy_reference():
    import numpy as np

    from viva_core.train.losses import kl_to_reference

    g = torch.Generator().manual_seed(5)
    m1, m2 = torch.randn(2, 3, 2, 4, 4, generator=g), torch.randn(2, 3, 2, 4, 4, generator=g)
    block, std = (2, 2, 2), 0.3
    d = _np_block_means(m1.double().numpy() - m2.double().numpy(), block)
    want = (d**2 / (2 * (std**2 / 8))).mean(axis=(1, 2, 3, 4))
    np.testing.assert_allclose(kl_to_reference(m1, m2, std, block).double().numpy(), want, rtol=1e-5)
    torch.testing.assert_close(kl_to_reference(m1, m2, std, (1, 1, 1)), kl_to_reference(m1, m2, std))
