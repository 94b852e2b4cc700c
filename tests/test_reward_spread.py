"""recipes/small/reward_spread.py: its statistics against numpy on a hand-made table, and a run on the tiny editor."""

import sys
from pathlib import Path

import numpy as np
import torch
from tiny_data import build_dataset
from tiny_editor import build_editor_folder

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "recipes" / "small"))

from reward_spread import corr_interval, group_stats, main, spread  # noqa: E402


def test_spread_is_the_mean_within_group_std_and_correlation():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(8, 3)), rng.normal(size=(8, 3))
    a[:, 2] = 0.5  # a term constant in group a: no correlation counted there
    groups = torch.tensor([0] * 8 + [1] * 8)
    mean, std, corr = spread([torch.tensor(np.concatenate([a, b]))], [groups])
    assert np.allclose(mean.numpy(), np.concatenate([a, b]).mean(0))
    assert np.allclose(std.numpy(), (a.std(0) + b.std(0)) / 2)
    want = (np.corrcoef(a[:, 0], a[:, 1])[0, 1] + np.corrcoef(b[:, 0], b[:, 1])[0, 1]) / 2
    assert np.isclose(float(corr[0, 1]), want) and np.isclose(float(corr[1, 0]), want)
    assert np.isclose(float(corr[0, 2]), np.corrcoef(b[:, 0], b[:, 2])[0, 1])  # group b only
    assert np.allclose(np.diag(corr.numpy()), 1.0)


def test_corr_interval_brackets_the_mean_over_groups():
    """The bootstrap interval over groups: a point where every group agrees; otherwise it holds the mean and stays
    inside the per-group values."""
    rng = np.random.default_rng(1)
    same = torch.tensor(np.tile(rng.normal(size=(6, 2)), (5, 1)))
    groups = torch.arange(5).repeat_interleave(6)
    _, corrs, boths = group_stats([same], [groups])
    low, high = corr_interval(corrs, boths)
    assert torch.allclose(low, high) and torch.allclose(low, corrs[0])
    mixed = torch.tensor(rng.normal(size=(60, 2)))
    groups = torch.arange(10).repeat_interleave(6)
    _, corrs, boths = group_stats([mixed], [groups])
    low, high = corr_interval(corrs, boths)
    mean = float(corrs[:, 0, 1].mean())
    per_group = corrs[:, 0, 1]
    assert float(low[0, 1]) < mean < float(high[0, 1])
    assert float(per_group.min()) <= float(low[0, 1]) and float(high[0, 1]) <= float(per_group.max())


def test_reward_spread_runs_a_recipe(tmp_path, capsys):
    data = build_dataset(tmp_path / "data", 2, frames=5)
    toml = tmp_path / "run.toml"
    toml.write_text('method = "grpo"\n')
    main(
        [
            str(toml),
            "2",
            f"model.editor={build_editor_folder(tmp_path / 'editor')}",
            f"data.manifest={data}",
            "model.dtype=fp32",
            "model.device=cpu",
            f"output_dir={tmp_path / 'out'}",
            "data.max_frames=5",
            "model.max_text_tokens=16",
            "rollout.group_size=3",
            "rollout.steps=2",
            "optim.batch_size=2",
            'rewards.weights={"verifier:EA": 1.0, "verifier:SP": 0.5}',
        ]
    )
    out = capsys.readouterr().out.splitlines()
    rows = [line for line in out if line.startswith("| verifier:")]
    assert out[0] == "2 batches of 2 records x G 3" and [r.split(" | ")[1] for r in rows] == ["1", "0.5"]
    assert any(line.startswith("  verifier:EA x verifier:SP: ") and ".." in line for line in out)
