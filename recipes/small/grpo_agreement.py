"""Do Edit-GRPO gradients carry signal? The LoRA gradient of K rollout batches of the same records (fresh SDE
noise each), compared: if every batch's gradient were noise around zero, ||mean g|| / mean ||g|| would be about
1 / sqrt(K) and the pairwise cosines about 0. The diagnosis behind issue 10 measured 0.58 for K = 3 (noise: 0.577).

    python recipes/small/grpo_agreement.py CONFIG.toml [K] [--fixed-rollouts] [key=value ...]

Runs the trainer's own GRPO step (rollout.inner_updates forced to 1, no optimizer step), on the records of step 0.
With method=rwo it runs the RWO step instead and compares the part of its gradient that the rewards decide: the
loss is linear in the weights, so weights w - 1 give exactly sum_i (w_i - 1) grad FM_i (with w = 1 everywhere RWO
is plain flow matching on the model's own samples, which agrees between batches whatever the reward).
--fixed-rollouts (RWO): one rollout batch for all K, only the flow-matching draws change between them, so the ratio
measures the noise of those draws alone (docs/small_models.md, section 40; for GRPO it would be 1: nothing is drawn).
"""

from __future__ import annotations

import itertools
import math
import sys
from typing import Callable, Iterator

import torch

from viva_core.train import losses
from viva_core.train.config import load_config
from viva_core.train.trainer import Trainer


def flat_gradient(trainer: Trainer) -> torch.Tensor:
    """The trainable parameters' gradient as one float64 vector in `trainer.params` order (zeros where one has none)."""
    return torch.cat(
        [
            p.grad.flatten().double() if p.grad is not None else p.new_zeros(p.numel(), dtype=torch.float64)
            for p in trainer.params
        ]
    )


def batch_gradients(trainer: Trainer, step_fn: Callable[[int], dict], k: int) -> Iterator[tuple[dict, torch.Tensor]]:
    """(step statistics, gradient) of K rollout batches, steps 0..K-1 of `step_fn` (no optimizer step), on whatever
    records the caller fixed; the gradients are left zeroed."""
    for step in range(k):
        trainer.optimizer.zero_grad(set_to_none=True)
        stats = step_fn(step)
        yield stats, flat_gradient(trainer)
    trainer.optimizer.zero_grad(set_to_none=True)


def main(argv: list[str]) -> None:
    sets = [a for a in argv[1:] if "=" in a and not a.startswith("--")]
    k = next((int(a) for a in argv[1:] if a.isdigit()), 3)
    cfg = load_config(argv[0], sets + ["rollout.inner_updates=1"])
    trainer = Trainer(cfg)
    trainer._setup()
    records = trainer._local_batch(0)
    trainer._local_batch = lambda step: records  # same records, new rollout noise per step
    if "--fixed-rollouts" in argv:
        rolled = trainer._rollouts_and_advantages(0)
        trainer._rollouts_and_advantages = lambda step: rolled
    step_fn = trainer._rwo_step if cfg.method == "rwo" else trainer._grpo_step
    if cfg.method == "rwo" and cfg.rollout.rwo_mode != "signed":  # signed weights are that part already
        weights = losses.rwo_weights
        losses.rwo_weights = lambda *a, **k: weights(*a, **k) - 1.0  # the reward-decided part only
    grads = []
    for step, (stats, grad) in enumerate(batch_gradients(trainer, step_fn, k)):
        grads.append(grad)
        print(
            f"batch {step}: reward {stats['reward']:.4f} (std in batch {stats['reward_std']:.4f}), "
            f"|g| {float(grads[-1].norm()):.3e}",
            flush=True,
        )
    g = torch.stack(grads)
    ratio = float(g.mean(0).norm() / g.norm(dim=1).mean())
    cos = [float(torch.nn.functional.cosine_similarity(a, b, dim=0)) for a, b in itertools.combinations(g, 2)]
    print(
        f"K {k}: ||mean g|| / mean ||g|| = {ratio:.3f} (pure noise: {1 / math.sqrt(k):.3f}); pairwise cosine "
        f"mean {sum(cos) / len(cos):.3f}, min {min(cos):.3f}, max {max(cos):.3f}"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
