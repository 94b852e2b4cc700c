"""How sure is a change of `val_reward`? The trainer logs the validation reward's mean only; this recomputes it per
validation record for the base (no LoRA) and for each named checkpoint, with the trainer's own validation noise
(the same draws at every point), and prints each checkpoint's paired change with its standard error over records
(a record's G rollouts move together, so records are the independent units) and how many records gained.

    python recipes/small/val_paired.py CONFIG.toml CHECKPOINT_DIR [CHECKPOINT_DIR ...] [key=value ...]

CONFIG.toml and the key=value overrides must be the run's (data.val_manifest, data.val_limit, rollout.*, rewards);
a CHECKPOINT_DIR is a step-N folder of the run's output_dir/checkpoints.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

from viva_core.train.adapters import load_trainable_state
from viva_core.train.checkpoint import load_checkpoint
from viva_core.train.config import load_config
from viva_core.train.trainer import Trainer


def per_record_reward(trainer: Trainer) -> torch.Tensor:
    """[records, terms + 1]: each validation record's mean reward terms and their weighted sum, as val_reward."""
    r, groups = trainer.validation_rollout_rewards()
    r = torch.cat([r, (r * trainer.reward_weights).sum(-1, keepdim=True)], dim=1).double()
    return torch.stack([r[groups == i].mean(0) for i in range(len(trainer.val_records))])


def main(argv: list[str]) -> None:
    sets = [a for a in argv[1:] if "=" in a and not a.startswith("--")]
    checkpoints = [Path(a) for a in argv[1:] if "=" not in a]
    trainer = Trainer(load_config(argv[0], sets))
    trainer._setup()
    names = [rw.name for rw in trainer.rewards] + ["weighted"]
    base = per_record_reward(trainer)
    means = ", ".join(f"{n} {float(v):.4f}" for n, v in zip(names, base.mean(0)))
    print(f"{len(base)} validation records; base: {means}")
    for path in checkpoints:
        ck = load_checkpoint(path)
        load_trainable_state(trainer.base, trainer.refiner, ck.trainable)
        d = per_record_reward(trainer) - base
        se = d.std(0, unbiased=True) / math.sqrt(len(d))
        cols = ", ".join(f"{n} {float(m):+.4f} ({float(s):.4f})" for n, m, s in zip(names, d.mean(0), se))
        print(f"step {ck.step}: change {cols}; records that gained {int((d[:, -1] > 0).sum())} of {len(d)}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
