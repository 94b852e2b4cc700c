"""recipes/small/grpo_direction.py on the tiny editor with a reward the policy gradient can learn (the mean of latent
channel 0): its ascent direction must raise the reward and the opposite lower it, so the script's sign convention
(u = -g: descent on the PPO loss) is the one that reads "up"; the summed gradient is the sum of the batches'."""

import sys
from pathlib import Path

import torch
from tiny_data import build_dataset
from tiny_editor import build_editor_folder

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "recipes" / "small"))

from grpo_direction import batch_gradient, rewards, set_params  # noqa: E402

from viva_core.train.config import load_config  # noqa: E402
from viva_core.train.trainer import Trainer  # noqa: E402


def test_the_ascent_direction_raises_the_reward(tmp_path):
    cfg = load_config(
        None,
        [
            f"model.editor={build_editor_folder(tmp_path / 'editor')}",
            f"data.manifest={build_dataset(tmp_path / 'data', 2, frames=5)}",
            "method=grpo",
            "model.dtype=fp32",
            "model.device=cpu",
            f"output_dir={tmp_path / 'out'}",
            "lora.rank=4",
            "lora.alpha=4",
            "data.max_frames=5",
            "model.max_text_tokens=16",
            "rollout.group_size=8",
            "rollout.steps=4",
            "optim.batch_size=1",
            "log.tensorboard=false",
            'rewards.weights={"callable:brightness_reward:latent_brightness": 1.0}',
        ],
    )
    t = Trainer(cfg)
    t._setup()
    records = t._local_batch(0)
    t._local_batch = lambda step: records
    g = batch_gradient(t, 2)
    each = []
    for step in range(2):
        t.optimizer.zero_grad(set_to_none=True)
        t._grpo_step(step)
        each.append(torch.cat([p.grad.flatten().double() for p in t.params]))
    torch.testing.assert_close(g, each[0] + each[1])
    p0 = torch.cat([p.detach().flatten().double() for p in t.params])
    u = -g / g.norm()
    reward = {}
    for a in (-1.0, 0.0, 1.0):
        set_params(t, p0 + a * u)
        reward[a] = float(rewards(t, [(gi, rec, t._encoded(rec)) for gi, rec in records], [1000, 1001])[:, -1].mean())
    assert reward[1.0] > reward[0.0] > reward[-1.0], reward
    set_params(t, p0)
    assert torch.equal(torch.cat([p.detach().flatten().double() for p in t.params]), p0)
