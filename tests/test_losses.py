"""Training losses pinned to hand-computed values and plain-loop reference implementations."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from viva_core.errors import InputError
from viva_core.train.losses import (
    clipped_policy_loss,
    flow_matching_pair,
    group_advantages,
    kl_to_reference,
    latent_mask,
    masked_fm_loss,
    reward_weighted_fm_loss,
    rwo_weights,
    sample_sigmas,
)


def _close(a, b, rtol=1.3e-6, atol=1e-5):
    """torch.allclose with a message (torch.testing.assert_close costs a 2 s lazy import)."""
    assert a.shape == b.shape and torch.allclose(a, b, rtol=rtol, atol=atol), f"{a} != {b}"


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------- flow matching


def test_flow_matching_pair_matches_formula_per_sample():
    x0, eps = _rand(2, 3, 2, 4, 4, seed=1), _rand(2, 3, 2, 4, 4, seed=2)
    sigma = torch.tensor([0.25, 0.8])
    x_t, v = flow_matching_pair(x0, eps, sigma)
    for b, s in enumerate([0.25, 0.8]):
        _close(x_t[b], (1 - s) * x0[b] + s * eps[b])
        _close(v[b], eps[b] - x0[b])
    assert x_t.dtype == torch.float32 and v.dtype == torch.float32


def test_straight_path_velocity_is_consistent():
    x0, eps = _rand(3, 4, 5, seed=3), _rand(3, 4, 5, seed=4)
    sigma = torch.tensor([0.1, 0.5, 0.9])
    x_t, v = flow_matching_pair(x0, eps, sigma)
    s = sigma.view(-1, 1, 1)
    _close(x_t + (0 - s) * v, x0, rtol=1e-5, atol=1e-6)  # Euler to sigma = 0 lands on x0
    _close(x_t + (1 - s) * v, eps, rtol=1e-5, atol=1e-6)  # and to sigma = 1 on the noise
    x_scalar, _ = flow_matching_pair(x0, eps, 0.5)
    _close(x_scalar, 0.5 * x0 + 0.5 * eps)


def test_flow_matching_pair_rejects_mismatch():
    with pytest.raises(InputError):
        flow_matching_pair(torch.zeros(2, 3), torch.zeros(2, 4), torch.tensor([0.5, 0.5]))
    with pytest.raises(InputError):
        flow_matching_pair(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0.5, 0.5, 0.5]))


def test_sample_sigmas_logit_normal_and_shift():
    s = sample_sigmas(6, torch.Generator().manual_seed(5))
    n = torch.randn(6, generator=torch.Generator().manual_seed(5))
    for got, z in zip(s.tolist(), n.tolist()):
        assert got == pytest.approx(1 / (1 + math.exp(-z)), abs=1e-6)
    shifted = sample_sigmas(6, torch.Generator().manual_seed(5), shift=3.0, mean=0.5, std=2.0)
    for got, z in zip(shifted.tolist(), n.tolist()):
        u = 1 / (1 + math.exp(-(0.5 + 2.0 * z)))
        assert got == pytest.approx(min(max(3 * u / (1 + 2 * u), 1e-5), 1 - 1e-5), abs=1e-6)
    uni = sample_sigmas(4, torch.Generator().manual_seed(6), mode="uniform", shift=5.0)
    u = torch.rand(4, generator=torch.Generator().manual_seed(6))
    for got, x in zip(uni.tolist(), u.tolist()):
        assert got == pytest.approx(5 * x / (1 + 4 * x), abs=1e-6)


def test_sample_sigmas_range_and_errors():
    s = sample_sigmas(20000, torch.Generator().manual_seed(0), std=8.0)  # wide: many would round to 0 / 1
    assert s.shape == (20000,) and bool(((s > 0) & (s < 1)).all())
    base = sample_sigmas(20000, torch.Generator().manual_seed(1))
    assert abs(float(base.median()) - 0.5) < 0.02
    assert float(sample_sigmas(20000, torch.Generator().manual_seed(1), shift=5.0).mean()) > float(base.mean()) + 0.2
    with pytest.raises(InputError, match="not one of"):
        sample_sigmas(2, None, mode="cosine")
    with pytest.raises(InputError):
        sample_sigmas(2, None, shift=0.0)


# ------------------------------------------------------------------------------------------- masked loss


def test_masked_fm_loss_equals_plain_loop():
    B, C, T, H, W = 2, 3, 2, 3, 4
    v_pred, v_tgt = _rand(B, C, T, H, W, seed=7), _rand(B, C, T, H, W, seed=8)
    mask = (_rand(B, 1, T, H, W, seed=9) > 0).float()
    w = 2.5
    per = masked_fm_loss(v_pred, v_tgt, mask, w, reduce=False)
    expected = []
    for b in range(B):
        total = 0.0
        for c, t, h, x in itertools.product(range(C), range(T), range(H), range(W)):
            d = float(v_pred[b, c, t, h, x]) - float(v_tgt[b, c, t, h, x])
            total += (1 + w * float(mask[b, 0, t, h, x])) * d * d
        expected.append(total / (C * T * H * W))
    assert per.tolist() == pytest.approx(expected, rel=1e-5)
    assert float(masked_fm_loss(v_pred, v_tgt, mask, w)) == pytest.approx(sum(expected) / B, rel=1e-5)


def test_masked_fm_loss_without_mask_is_mse_and_mask_broadcasts():
    v_pred, v_tgt = _rand(2, 4, 3, 2, 2, seed=10), _rand(2, 4, 3, 2, 2, seed=11)
    plain = float(((v_pred - v_tgt) ** 2).mean())
    assert float(masked_fm_loss(v_pred, v_tgt)) == pytest.approx(plain, rel=1e-6)
    ones = torch.ones(1, 1, 3, 2, 2)
    assert float(masked_fm_loss(v_pred, v_tgt, ones, 1.0)) == pytest.approx(2 * plain, rel=1e-6)
    assert float(masked_fm_loss(v_pred, v_tgt, ones, 0.0)) == pytest.approx(plain, rel=1e-6)
    with pytest.raises(InputError, match="latent_mask"):
        masked_fm_loss(v_pred, v_tgt, torch.ones(1, 1, 5, 2, 2), 1.0)


def test_latent_mask_hand_built():
    # 9 frames -> 3 latent frames (Wan causal: frame 0 -> 0, frames 1..4 -> 1, frames 5..8 -> 2); 16 px -> 2 cells.
    m = torch.zeros(9, 16, 16)
    m[5, 9, 2] = 1.0  # one edited pixel in frame 5, row block 1, column block 0
    out = latent_mask(m, (3, 2, 2))
    expected = torch.zeros(1, 1, 3, 2, 2)
    expected[0, 0, 2, 1, 0] = 1.0
    assert torch.equal(out, expected)

    m = torch.zeros(9, 16, 16)
    m[0, 0, 15] = 0.3  # frame 0 alone -> latent 0 (soft values keep their max)
    m[4, 15, 15] = 1.0  # last frame of latent 1
    m[1, 8, 8] = 0.5
    out = latent_mask(m, (3, 2, 2))
    expected = torch.zeros(1, 1, 3, 2, 2)
    expected[0, 0, 0, 0, 1] = 0.3
    expected[0, 0, 1, 1, 1] = 1.0
    assert torch.allclose(out, expected)

    one = latent_mask(torch.ones(1, 8, 8), (1, 1, 1))  # an image pair: 1 frame -> 1 latent frame
    assert one.shape == (1, 1, 1, 1, 1) and float(one) == 1.0


def test_latent_mask_rejects_wrong_frame_count_and_range():
    with pytest.raises(InputError, match="need 9"):
        latent_mask(torch.zeros(8, 16, 16), (3, 2, 2))
    with pytest.raises(InputError):
        latent_mask(torch.full((1, 8, 8), 2.0), (1, 1, 1))
    with pytest.raises(InputError):
        latent_mask(torch.zeros(1, 1, 8, 8), (1, 1, 1))


# ------------------------------------------------------------------------------------------- advantages


def test_group_advantages_hand_computed():
    # Two reward terms, weights (1, 0.5); rows of group 7 and group 3 interleaved; eps = 1e-4.
    rewards = torch.tensor(
        [
            [1.0, 0.2],  # g7
            [0.0, 0.5],  # g3
            [3.0, 0.6],  # g7
            [0.0, 0.5],  # g3
            [3.0, 0.5],
        ]
    )  # g3
    groups = torch.tensor([7, 3, 7, 3, 3])
    adv, zero_frac = group_advantages(rewards, groups, torch.tensor([1.0, 0.5]))
    # g7: term 1 (1, 3): mean 2, population std 1 -> z = ∓1/1.0001 = ∓0.99990001
    #     term 2 (0.2, 0.6): mean 0.4, std 0.2 -> z = ∓0.2/0.2001 = ∓0.99950025, weighted ∓0.49975012
    #     A = ∓1.49965013
    # g3: term 1 (0, 0, 3): mean 1, std sqrt(2) = 1.41421356 -> z = (-1, -1, 2)/1.41431356
    #     = (-0.70705678, -0.70705678, 1.41411356); term 2 constant -> contributes 0
    expected = [-1.49965013, -0.70705678, 1.49965013, -0.70705678, 1.41411356]
    assert adv.tolist() == pytest.approx(expected, abs=1e-6)
    assert zero_frac == 0.0


def test_group_advantages_zero_variance_group_dropped_and_counted():
    rewards = torch.tensor([[1.0, 0.2], [3.0, 0.6], [0.7, 0.1], [0.7, 0.1], [0.7, 0.1], [5.0, 9.0]])
    groups = torch.tensor([0, 0, 1, 1, 1, 2])  # group 1: every term constant; group 2: a single sample
    adv, zero_frac = group_advantages(rewards, groups, torch.tensor([1.0, 0.5]))
    assert adv[2:].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert adv[:2].tolist() == pytest.approx([-1.49965013, 1.49965013], abs=1e-6)
    assert zero_frac == pytest.approx(2 / 3)
    # A group where only a zero-weight term varies carries no signal either.
    adv, zero_frac = group_advantages(
        torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([0, 0]), torch.tensor([1.0, 0.0])
    )
    assert adv.tolist() == [0.0, 0.0] and zero_frac == 1.0


def test_group_advantages_clipped():
    # One term with weight 10: z = ∓1/1.0001, A = ∓9.999 -> clipped to ∓5.
    adv, _ = group_advantages(
        torch.tensor([[0.0], [1.0], [2.0], [2.0]]), torch.tensor([0, 0, 1, 1]), torch.tensor([10.0])
    )
    assert adv.tolist() == [-5.0, 5.0, 0.0, 0.0]
    adv, _ = group_advantages(torch.tensor([0.0, 1.0]), torch.tensor([0, 0]), torch.tensor([10.0]), clip=2.0)
    assert adv.tolist() == [-2.0, 2.0]
    with pytest.raises(InputError):
        group_advantages(torch.zeros(3, 2), torch.zeros(3), torch.ones(3))


# ------------------------------------------------------------------------------------------- policy loss


def test_clipped_policy_loss_hand_computed():
    eps = 0.2
    ratios = [1.5, 0.5, 1.5, 0.5, 1.1]
    advs = [1.0, 1.0, -1.0, -1.0, 2.0]
    logp = torch.tensor([math.log(r) for r in ratios], requires_grad=True)
    loss, st = clipped_policy_loss(logp, torch.zeros(5), torch.tensor(advs), eps)
    # per sample max(-A ρ, -A clip(ρ, 0.8, 1.2)):
    #   ρ 1.5 A +1: max(-1.5, -1.2) = -1.2 (clipped, no grad)   ρ 0.5 A +1: max(-0.5, -0.8) = -0.5
    #   ρ 1.5 A -1: max( 1.5,  1.2) =  1.5                      ρ 0.5 A -1: max( 0.5,  0.8) =  0.8 (clipped)
    #   ρ 1.1 A +2: -2.2 both
    assert float(loss.detach()) == pytest.approx((-1.2 - 0.5 + 1.5 + 0.8 - 2.2) / 5, abs=1e-6)  # -0.32
    assert st["clip_frac"] == pytest.approx(4 / 5)  # |ρ - 1| > 0.2 for all but 1.1
    assert st["ratio_mean"] == pytest.approx(5.1 / 5, abs=1e-6)
    assert st["ratio_std"] == pytest.approx(math.sqrt(sum((r - 1.02) ** 2 for r in ratios) / 5), abs=1e-6)
    assert st["approx_kl"] == pytest.approx(0.5 * sum(math.log(r) ** 2 for r in ratios) / 5, abs=1e-6)
    loss.backward()
    # d/dlogp of -A ρ / 5 is -A ρ / 5 where the unclipped term is taken, 0 where the clipped one is.
    assert logp.grad.tolist() == pytest.approx([0.0, -0.1, 0.3, 0.0, -0.44], abs=1e-6)


def test_on_policy_ratio_is_exactly_one():
    logp = _rand(6, seed=12)
    adv = _rand(6, seed=13)
    loss, st = clipped_policy_loss(logp.clone().requires_grad_(), logp.clone(), adv, 1e-4)
    assert st["ratio_mean"] == 1.0 and st["ratio_std"] == 0.0
    assert st["clip_frac"] == 0.0 and st["approx_kl"] == 0.0
    assert float(loss.detach()) == pytest.approx(-float(adv.mean()), abs=1e-7)
    with pytest.raises(InputError):
        clipped_policy_loss(logp, logp, adv[:3], 1e-4)


def test_policy_loss_without_stats_is_the_same_loss():
    """stats=False (the trainer's PPO pass, no host syncs) changes nothing but the statistics it skips."""
    logp, old, adv = _rand(6, seed=14), _rand(6, seed=15), _rand(6, seed=16)
    a, b = logp.clone().requires_grad_(), logp.clone().requires_grad_()
    with_stats, st = clipped_policy_loss(a, old, adv, 0.2)
    without, none = clipped_policy_loss(b, old, adv, 0.2, stats=False)
    assert none == {} and st and torch.equal(with_stats.detach(), without.detach())
    with_stats.backward()
    without.backward()
    assert torch.equal(a.grad, b.grad)


def test_kl_to_reference():
    mu = _rand(2, 3, 4, seed=14)
    assert kl_to_reference(mu, mu.clone(), 0.3).tolist() == [0.0, 0.0]
    ref = _rand(2, 3, 4, seed=15)
    got = kl_to_reference(mu, ref, 0.3)
    for b in range(2):
        vals = [(float(a) - float(r)) ** 2 / (2 * 0.3**2) for a, r in zip(mu[b].flatten(), ref[b].flatten())]
        assert float(got[b]) == pytest.approx(sum(vals) / len(vals), rel=1e-5)
    per_std = kl_to_reference(mu, ref, torch.tensor([0.3, 0.6]))
    assert float(per_std[1]) == pytest.approx(float(got[1]) / 4, rel=1e-5)
    with pytest.raises(InputError, match="std"):
        kl_to_reference(mu, ref, 0.0)


# ------------------------------------------------------------------------------------------- RWO


def test_rwo_softmax_weights():
    rewards = torch.tensor([0.0, 1.0, 0.2, 0.5, 0.9, 0.3, 0.3])
    groups = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    w = rwo_weights(rewards, groups)
    # group 0: A = ∓0.5/(0.5 + 1e-4) = ∓0.99980004; w = 2 softmax(A) = 2 e^{±a} / (e^a + e^-a)
    a = 0.5 / 0.5001
    assert w[:2].tolist() == pytest.approx(
        [2 * math.exp(-a) / (math.exp(a) + math.exp(-a)), 2 * math.exp(a) / (math.exp(a) + math.exp(-a))], abs=1e-6
    )
    for idx in ([0, 1], [2, 3, 4], [5, 6]):
        assert float(w[idx].mean()) == pytest.approx(1.0, abs=1e-6)
    assert float(w[2]) < float(w[3]) < float(w[4])  # higher reward -> higher weight
    assert w[5:].tolist() == [1.0, 1.0]  # equal rewards -> plain flow matching
    assert rwo_weights(torch.full((4,), 0.7), torch.zeros(4)).tolist() == [1.0] * 4
    hot = rwo_weights(rewards, groups, temperature=100.0)
    assert float((hot[:5] - 1).abs().max()) < float((w[:5] - 1).abs().max())  # high temperature -> flatter


def test_rwo_advantage_weights():
    w = rwo_weights(
        torch.tensor([0.0, 1.0, 0.0, 0.0, 3.0, 2.0, 2.0]), torch.tensor([0, 0, 1, 1, 1, 2, 2]), mode="advantage"
    )
    # group 0: max(A, 0) = (0, a) -> (0, 2); group 1: A ∝ (-1, -1, 2) -> (0, 0, 3); group 2 equal -> ones
    assert w.tolist() == pytest.approx([0.0, 2.0, 0.0, 0.0, 3.0, 1.0, 1.0], abs=1e-6)
    with pytest.raises(InputError):
        rwo_weights(torch.zeros(2), torch.zeros(2), mode="best")
    with pytest.raises(InputError):
        rwo_weights(torch.zeros(2), torch.zeros(2), temperature=0.0)


def test_rwo_signed_weights_are_the_group_advantages():
    """Signed weights: (r - mean_g) / (population std_g + eps), zero mean per group, zeros for equal rewards."""
    rewards = torch.tensor([0.0, 1.0, 0.0, 0.0, 3.0, 2.0, 2.0])
    w = rwo_weights(rewards, torch.tensor([0, 0, 1, 1, 1, 2, 2]), mode="signed")
    std1 = math.sqrt(((0 - 1) ** 2 * 2 + (3 - 1) ** 2) / 3)
    want = [-0.5 / 0.5001, 0.5 / 0.5001, -1 / (std1 + 1e-4), -1 / (std1 + 1e-4), 2 / (std1 + 1e-4), 0.0, 0.0]
    assert w.tolist() == pytest.approx(want, abs=1e-6)


def test_reward_weighted_fm_loss_equals_weighted_loop():
    v_pred, v_tgt = _rand(3, 2, 1, 2, 2, seed=16), _rand(3, 2, 1, 2, 2, seed=17)
    weights = torch.tensor([0.5, 2.0, 0.5])
    mask = torch.zeros(1, 1, 1, 2, 2)
    mask[..., 0, 0] = 1.0
    got = reward_weighted_fm_loss(v_pred, v_tgt, weights, mask, 3.0)
    total = 0.0
    for b in range(3):
        per = 0.0
        for c, h, x in itertools.product(range(2), range(2), range(2)):
            d = float(v_pred[b, c, 0, h, x] - v_tgt[b, c, 0, h, x])
            per += (1 + 3.0 * (h == 0 and x == 0)) * d * d
        total += float(weights[b]) * per / 8
    assert float(got) == pytest.approx(total / 3, rel=1e-5)
    ones = reward_weighted_fm_loss(v_pred, v_tgt, torch.ones(3))
    assert float(ones) == pytest.approx(float(masked_fm_loss(v_pred, v_tgt)), rel=1e-6)


def test_scheduled_lr_reaches_lr_after_warmup_then_cosine_to_zero():
    """The warm-up ends at the set rate whatever its share of the run (a run of 594 steps with 300 warm-up steps
    once peaked at half of it), then the cosine falls from there to 0 at the last step."""
    from viva_core.train.config import scheduled_lr

    lr, steps, warm = 5e-4, 594, 300
    got = [scheduled_lr(lr, s, steps, warm) for s in range(steps + 1)]
    assert max(got) == pytest.approx(lr) and got[warm - 1] == pytest.approx(lr)
    assert got[0] == pytest.approx(lr / warm)
    for s in (warm, 400, 500, steps):  # independent form: half-cosine over the post-warm-up steps
        assert got[s] == pytest.approx(lr * (1 + math.cos(math.pi * (s - warm) / (steps - warm))) / 2, abs=1e-12)
    assert got[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(got[warm:], got[warm + 1 :]))  # never rises after the warm-up
    assert scheduled_lr(lr, 10, 100, 0, "constant") == lr and scheduled_lr(lr, 4, 100, 10, "constant") == lr / 2
