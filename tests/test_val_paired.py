"""recipes/small/val_paired.py recomputes the trainer's val_reward per record: on a short GRPO run of the tiny editor
its base and checkpoint rows must average to the values the trainer logged at step 0 and at the checkpoint, and its
printed change must be their difference with the records' standard error."""

import json
import math
import sys
from pathlib import Path

from tiny_data import build_dataset
from tiny_editor import build_editor_folder

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "recipes" / "small"))

from val_paired import main, per_record_reward  # noqa: E402

from viva_core.train.config import load_config  # noqa: E402
from viva_core.train.trainer import Trainer  # noqa: E402


def test_per_record_rewards_reproduce_the_logged_val_reward(tmp_path, capsys):
    data = build_dataset(tmp_path / "data", 3, frames=5)
    out = tmp_path / "out"
    sets = [
        f"model.editor={build_editor_folder(tmp_path / 'editor')}",
        f"data.manifest={data}",
        f"data.val_manifest={data}",
        "method=grpo",
        "model.dtype=fp32",
        "model.device=cpu",
        f"output_dir={out}",
        "lora.rank=4",
        "lora.alpha=4",
        "data.max_frames=5",
        "model.max_text_tokens=16",
        "rollout.group_size=4",
        "rollout.steps=3",
        "optim.batch_size=1",
        "optim.steps=2",
        "optim.lr=3e-2",
        "log.checkpoint_every=2",
        "log.tensorboard=false",
        'rewards.weights={"callable:brightness_reward:latent_brightness": 1.0}',
    ]
    Trainer(load_config(None, sets)).run()
    rows = map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
    logged = {row["step"]: row["val_reward"] for row in rows if "val_reward" in row}
    assert set(logged) == {0, 2} and logged[2] != logged[0]

    t = Trainer(load_config(None, sets))
    t._setup()
    base = per_record_reward(t)
    assert base.shape == (3, 2)  # 3 records x (the reward term, the weighted sum)
    assert math.isclose(float(base[:, -1].mean()), logged[0], rel_tol=1e-5)

    checkpoint = out / "checkpoints" / "step-0000002"
    toml = tmp_path / "run.toml"
    toml.write_text('method = "grpo"\n')
    main([str(toml), str(checkpoint), *sets])  # as on the command line: CONFIG, CHECKPOINT_DIR, key=value ...
    printed = capsys.readouterr().out.splitlines()
    change = float(printed[-1].split("weighted ")[1].split()[0])
    assert math.isclose(change, logged[2] - logged[0], abs_tol=1e-4), (printed, logged)
