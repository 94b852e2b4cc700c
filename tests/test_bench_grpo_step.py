"""bench/bench_grpo_step.py on the CPU: the real trainer's step on the bundled small editor with an RWO recipe (its
flow-matching passes timed in the PPO-pass columns), one group a DiT call against batched groups: the same rewards,
fewer DiT calls batched (what the GPU session's gbench phase reads)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_bench_grpo_step_times_an_rwo_step_per_record_and_batched(tmp_path) -> None:
    from viva_core.synth import generate

    generate(tmp_path / "clips", n=4, seed=2, format="npz", splits=(1.0, 0.0, 0.0))
    out = tmp_path / "bench.json"
    subprocess.run(
        [sys.executable, "bench/bench_grpo_step.py", "--data", str(tmp_path / "clips" / "train.jsonl"),
         "--config", "recipes/small/rwo_v8.toml", "--steps", "1", "--warmup", "0",
         "--variants", "per_record,batched,sequential_rewards",
         "--set", "optim.batch_size=2", "--set", "rollout.group_size=2", "--set", "rollout.steps=2",
         "--set", "rollout.window=1", "--set", "data.val_manifest=", "--out", str(tmp_path / "run"),
         "--json", str(out)],
        cwd=ROOT, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    r = json.loads(out.read_text())
    per, batched = r["per_record"], r["batched"]
    # the same rollouts and rewards; the losses agree to ~1e-3 only: RWO's signed weights sum to 0 in a group, so its
    # loss is a small difference of per-sample flow-matching losses that magnifies their last digits, which differ
    # between one DiT call and several (tests/test_train.py checks the batched passes against a per-sample reference)
    assert per["reward"] == pytest.approx(batched["reward"], abs=1e-6)
    assert per["loss"] == pytest.approx(batched["loss"], rel=1e-2)
    assert batched["dit_calls_per_step"] < per["dit_calls_per_step"]
    assert batched["split_s"]["ppo_pass"] > 0 and per["split_s"]["ppo_pass"] > 0
    assert r["sequential_rewards"]["reward"] == batched["reward"] and r["speedup_overlap_vs_sequential_rewards"] > 0


@pytest.mark.slow
def test_bench_grpo_step_reports_the_on_policy_ratio(tmp_path) -> None:
    """One PPO pass a step: that pass is on-policy, so the ratio the bench reports is 1 to float rounding (the GPU
    check of docs/small_models.md section 96 reads the same fields with bf16 kernels and compiled blocks)."""
    from viva_core.synth import generate

    generate(tmp_path / "clips", n=4, seed=2, format="npz", splits=(1.0, 0.0, 0.0))
    out = tmp_path / "bench.json"
    subprocess.run(
        [sys.executable, "bench/bench_grpo_step.py", "--data", str(tmp_path / "clips" / "train.jsonl"),
         "--config", "recipes/small/grpo_v16.toml", "--steps", "1", "--warmup", "0", "--variants", "batched",
         "--set", "optim.batch_size=2", "--set", "rollout.group_size=2", "--set", "rollout.steps=2",
         "--set", "rollout.window=1", "--set", "rollout.inner_updates=1", "--set", "data.val_manifest=",
         "--out", str(tmp_path / "run"), "--json", str(out)],
        cwd=ROOT, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    r = json.loads(out.read_text())["batched"]
    assert r["ratio_mean"] == pytest.approx(1.0, abs=1e-5)
    assert 0.0 <= r["approx_kl"] < 1e-9 and r["clip_frac"] == 0.0
