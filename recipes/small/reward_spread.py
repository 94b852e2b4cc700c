"""How much say does each reward term get? Edit-GRPO standardizes every term within its group before weighting
(`losses.group_advantages`), so a weight is a term's share in ranking a group's samples whatever its spread; this
prints, over K rollout batches of a recipe's training records (the trainer's own rollouts, steps 0..K-1), each term's
mean, its within-group standard deviation, and the within-group correlation of every pair of terms: two terms that
move together add their weights, a term that barely varies is mostly noise once standardized.

    python recipes/small/reward_spread.py CONFIG.toml K [key=value ...]

docs/small_models.md, section 59 (sizing the spill term SP).
"""

from __future__ import annotations

import sys

import torch

from viva_core.train.config import load_config
from viva_core.train.trainer import Trainer


def spread(rewards: list[torch.Tensor], groups: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean [K], mean within-group std [K] (population, as the advantages use), mean within-group correlation [K, K]
    over the groups where both terms vary) of reward tables [N, K] with their group ids [N]."""
    stds, corr_sum, corr_n = [], 0, 0
    for r, g in zip(rewards, groups):
        for gid in g.unique():
            x = r[g == gid].double()
            std = x.std(dim=0, unbiased=False)
            stds.append(std)
            z = (x - x.mean(dim=0)) / std.clamp_min(1e-12)
            both = (std[:, None] > 0) & (std[None, :] > 0)
            corr_sum = corr_sum + torch.where(both, z.T @ z / x.shape[0], 0.0)
            corr_n = corr_n + both.double()
    mean = torch.cat(rewards).double().mean(dim=0)
    return mean, torch.stack(stds).mean(dim=0), corr_sum / corr_n.clamp_min(1)


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


if __name__ == "__main__":
    main(sys.argv[1:])
