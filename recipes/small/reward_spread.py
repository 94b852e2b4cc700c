"""How much say does each reward term get? Edit-GRPO standardizes every term within its group before weighting
(`losses.group_advantages`), so a weight is a term's share in ranking a group's samples whatever its spread; this
prints, over K rollout batches of a recipe's training records (the trainer's own rollouts, steps 0..K-1), each term's
mean, its within-group standard deviation, and the within-group correlation of every pair of terms (with a 95%
bootstrap interval over groups): two terms that move together add their weights, a term that barely varies is mostly
noise once standardized.

    python recipes/small/reward_spread.py CONFIG.toml K [key=value ...]

docs/small_models.md, section 59 (sizing the spill term SP).
"""

from __future__ import annotations

import sys

import torch

from viva_core.train.config import load_config
from viva_core.train.trainer import Trainer

Tables = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def group_stats(rewards: list[torch.Tensor], groups: list[torch.Tensor]) -> Tables:
    """Per group of reward tables [N, K] with their group ids [N]: within-group std [G, K] (population, as the
    advantages use), correlation [G, K, K] (0 where a term does not vary) and which pairs both vary [G, K, K]."""
    stds, corrs, boths = [], [], []
    for r, g in zip(rewards, groups):
        for gid in g.unique():
            x = r[g == gid].double()
            std = x.std(dim=0, unbiased=False)
            z = (x - x.mean(dim=0)) / std.clamp_min(1e-12)
            both = (std[:, None] > 0) & (std[None, :] > 0)
            stds.append(std)
            corrs.append(torch.where(both, z.T @ z / x.shape[0], 0.0))
            boths.append(both.double())
    return torch.stack(stds), torch.stack(corrs), torch.stack(boths)


def spread(rewards: list[torch.Tensor], groups: list[torch.Tensor]) -> Tables:
    """(mean [K], mean within-group std [K], mean within-group correlation [K, K] over the groups where both terms
    vary) of reward tables [N, K] with their group ids [N]."""
    stds, corrs, boths = group_stats(rewards, groups)
    mean = torch.cat(rewards).double().mean(dim=0)
    return mean, stds.mean(dim=0), corrs.sum(0) / boths.sum(0).clamp_min(1)


def corr_interval(corrs: torch.Tensor, boths: torch.Tensor, resamples: int = 2000, seed: int = 0) -> torch.Tensor:
    """95% bootstrap interval over groups of the mean within-group correlation: [2, K, K] (low, high)."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, corrs.shape[0], (resamples, corrs.shape[0]), generator=gen)
    means = corrs[idx].sum(1) / boths[idx].sum(1).clamp_min(1)
    return torch.quantile(means, torch.tensor([0.025, 0.975], dtype=means.dtype), dim=0)


def main(argv: list[str]) -> None:
    config, batches, sets = argv[0], int(argv[1]), argv[2:]
    trainer = Trainer(load_config(config, sets))
    trainer._setup()
    names = [rw.name for rw in trainer.rewards]
    rewards, groups = [], []
    for step in range(batches):
        _, _, _, r, g = trainer._rollouts_and_advantages(step)
        rewards.append(r)
        groups.append(g)
    mean, std, corr = spread(rewards, groups)
    print(f"{batches} batches of {len(groups[0].unique())} records x G {trainer.cfg.rollout.group_size}")
    print("| term | weight | mean | within-group std | " + " | ".join(f"corr {n}" for n in names) + " |")
    print("|---|---|---|---|" + "---|" * len(names))
    for k, n in enumerate(names):
        cells = " | ".join(f"{float(c):+.2f}" for c in corr[k])
        w = float(trainer.reward_weights[k])
        print(f"| {n} | {w:g} | {float(mean[k]):.3f} | {float(std[k]):.4f} | {cells} |")
    _, corrs, boths = group_stats(rewards, groups)
    low, high = corr_interval(corrs, boths)
    print(f"\nwithin-group correlation, 95% bootstrap interval over the {corrs.shape[0]} groups:")
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            ci = f"{float(low[a, b]):+.2f}..{float(high[a, b]):+.2f}"
            print(f"  {names[a]} x {names[b]}: {float(corr[a, b]):+.2f} ({ci})")


if __name__ == "__main__":
    main(sys.argv[1:])
