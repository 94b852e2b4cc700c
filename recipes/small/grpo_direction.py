"""Does a step along the Edit-GRPO gradient raise the reward? The agreement test (grpo_agreement.py) says whether
independent batches' gradients point the same way; this one says whether that way is up.

    python recipes/small/grpo_direction.py CONFIG.toml [K] [--alphas 1,4,16] [--eval-reps 1] [--eval-cfg 5]
        [--other-batches 1] [--eval-group G] [--sets train,other] [key=value ...]

1. The LoRA gradient of K GRPO rollout batches of the training records of step 0 (the trainer's own step,
   rollout.inner_updates forced to 1, no optimizer step), summed: g.
2. The LoRA moved to p0 + a u for each a, with u = -g / ||g|| scaled to the size of `a` Adam steps of optim.lr
   (a * lr * sqrt(n), n = the parameters with a gradient: an Adam step moves each by about lr), plus controls of
   the same size: the opposite direction, Adam's first-step direction sign(-g), and a random direction.
3. The mean reward of fresh rollouts at each point (--eval-group samples a record, default the config's G), on the
   gradient's records and on records it never saw (the batches of steps 1..--other-batches), with the same noise
   at every point (common random numbers: the paired differences against a = 0 carry no sampling noise of their
   own), at the config's rollout.cfg and at --eval-cfg.

Prints one row per (records, cfg, direction): the mean reward terms, the weighted reward's paired change with its
standard error over rollouts and over records (the honest one when records are few), and how many records gained.
--save-grad FILE keeps g (safetensors) and --load-grad FILE reuses it (the gradient is the costly part).
"""

from __future__ import annotations

import math
import sys

import torch
from grpo_agreement import batch_gradients
from safetensors.torch import load_file, save_file
from torch.nn.utils import parameters_to_vector

from viva_core.train.config import load_config
from viva_core.train.trainer import Trainer


def _flag(argv: list[str], name: str, default: str) -> str:
    return argv[argv.index(name) + 1] if name in argv else default


def batch_gradient(trainer: Trainer, k: int) -> torch.Tensor:
    """Sum of the LoRA gradients of K GRPO rollout batches (steps 0..K-1) of the same records, float64."""
    total = None
    for step, (stats, g) in enumerate(batch_gradients(trainer, trainer._grpo_step, k)):
        total = g if total is None else total + g
        print(f"gradient batch {step}: reward {stats['reward']:.4f}, |g| {float(g.norm()):.3e}", flush=True)
    return total


def set_params(trainer: Trainer, flat: torch.Tensor) -> None:
    with torch.no_grad():
        i = 0
        for p in trainer.params:
            p.copy_(flat[i : i + p.numel()].view_as(p).to(p.dtype))
            i += p.numel()


def rewards(trainer: Trainer, encoded: list, steps: list[int]) -> torch.Tensor:
    """Per-rollout reward terms [N, K] + their weighted sum, G rollouts of each (gi, rec, enc) per eval step's noise."""
    out = []
    for step in steps:
        _, r, _, _ = trainer._scored_rollouts(encoded, step)
        out.append(torch.cat([r, (r * trainer.reward_weights).sum(-1, keepdim=True)], dim=1))
    return torch.cat(out).double()


def main(argv: list[str]) -> None:
    sets = [a for a in argv[1:] if "=" in a and not a.startswith("--")]
    k = next((int(a) for a in argv[1:] if a.isdigit()), 4)
    alphas = [float(a) for a in _flag(argv, "--alphas", "1,4,16").split(",")]
    reps = int(_flag(argv, "--eval-reps", "1"))
    other = int(_flag(argv, "--other-batches", "1"))
    sets_to_eval = _flag(argv, "--sets", "train,other").split(",")
    eval_cfgs = [None] + [float(c) for c in _flag(argv, "--eval-cfg", "").split(",") if c]
    cfg = load_config(argv[0], sets + ["rollout.inner_updates=1"])
    trainer = Trainer(cfg)
    trainer._setup()
    batches = {
        "train": trainer._local_batch(0),
        "other": sum((trainer._local_batch(s) for s in range(1, other + 1)), []),
    }
    trainer._local_batch = lambda step: batches["train"]
    if "--load-grad" in argv:
        g = load_file(_flag(argv, "--load-grad", ""))["g"]
    else:
        g = batch_gradient(trainer, k)
    if "--save-grad" in argv:
        save_file({"g": g.contiguous()}, _flag(argv, "--save-grad", ""))
    p0 = parameters_to_vector(trainer.params).detach().double()
    live = g != 0
    n = int(live.sum())
    size = cfg.optim.lr * math.sqrt(n)  # the norm of one Adam step of lr on the n parameters with a gradient
    u = -g / g.norm()  # descent on the loss = ascent on the reward
    sign = torch.sign(-g) / math.sqrt(n)
    rand = torch.randn(g.shape, generator=torch.Generator().manual_seed(cfg.seed), dtype=torch.float64) * live
    rand /= rand.norm()
    points = [("0", 0.0, u)] + [(f"+{a:g}", a, u) for a in alphas]
    mid = alphas[len(alphas) // 2]
    points += [(f"-{mid:g}", -mid, u), (f"sign {mid:g}", mid, sign), (f"random {mid:g}", mid, rand)]
    names = [rw.name for rw in trainer.rewards] + ["weighted"]
    print(f"{n} LoRA parameters with a gradient; one Adam step ~ {size:.3e} in norm; |p0| {float(p0.norm()):.3e}")
    eval_steps = [1000 + r for r in range(reps)]
    trainer.cfg.rollout.group_size = int(_flag(argv, "--eval-group", str(cfg.rollout.group_size)))
    for cfg_scale in eval_cfgs:
        if cfg_scale is not None:
            trainer.cfg.rollout.cfg = cfg_scale
        for which in sets_to_eval:
            records = batches[which]
            encoded = [(gi, rec, trainer._encoded(rec)) for gi, rec in records]  # read once, not once per point
            base = None
            for label, a, direction in points:
                set_params(trainer, p0 + a * size * direction)
                r = rewards(trainer, encoded, eval_steps)
                base = r if base is None else base
                d = r[:, -1] - base[:, -1]
                per_record = d.view(reps, len(records), -1).mean(dim=(0, 2))
                se = float(d.std() / math.sqrt(len(d))) if label != "0" else 0.0
                se_rec = float(per_record.std() / math.sqrt(len(records))) if len(records) > 1 else 0.0
                terms = " ".join(f"{nm} {float(v):.4f}" for nm, v in zip(names, r.mean(0)))
                moved = r[:, :-1] - base[:, :-1]  # each term's paired change, weighted 0 or not (a judge-only run's
                # logged verifiers: does the judge's ascent raise the exact scores?)
                spread = moved.std(0) / math.sqrt(len(d)) if label != "0" else torch.zeros(moved.shape[1])
                changes = " ".join(
                    f"{nm} {float(m):+.4f} ({float(e):.4f})" for nm, m, e in zip(names, moved.mean(0), spread)
                )
                print(
                    f"{which} cfg {trainer.cfg.rollout.cfg:g} {label:>10}: {terms} | change {float(d.mean()):+.4f} "
                    f"(se {se:.4f} rollouts, {se_rec:.4f} records; {int((per_record > 0).sum())} of {len(records)} "
                    f"records up, x {len(d) // len(records)} rollouts) | terms {changes}",
                    flush=True,
                )
    set_params(trainer, p0)


if __name__ == "__main__":
    main(sys.argv[1:])
