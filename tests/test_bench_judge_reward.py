"""bench/bench_judge_reward.py on the CPU: the trainer's reward call before and after the joint judge terms give the
same P(Yes), and --breakdown times the judge's parts (what the GPU session reads first)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_judge_reward_compares_the_trainer_calls_and_splits_one(tmp_path) -> None:
    out = tmp_path / "bench.json"
    subprocess.run(
        [sys.executable, "bench/bench_judge_reward.py", "--records", "2", "--group", "2", "--records-per-call", "2",
         "--dtype", "fp32", "--repeats", "1", "--breakdown", "--json", str(out)],
        cwd=ROOT, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    r = json.loads(out.read_text())
    assert r["edits"] == 4 and r["max_abs_diff"] < 1e-5 and r["trainer_max_abs_diff"] < 1e-5
    for name in ("score_one_at_a_time", "score_batch", "per_record_and_term", "trainer_layout"):
        assert r[f"{name}_s"] > 0
    split = r["breakdown_trainer_layout_s"]
    assert split["total"] > 0 and "Judge._shown" in split and "Qwen2_5_VLTextModel.forward" in split
    assert "vision_attention.vision_indices" in split  # the tower's indices computed once per image size
