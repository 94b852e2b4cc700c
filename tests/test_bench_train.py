"""bench/bench_train.py on the CPU (`--device cpu`: a two-layer DiT of the Wan-1.3B layout): the GPU session's
training benchmark runs end to end, and the rollouts with the LoRA in bf16 give log-probs the first update sees as
a small ratio off 1 (what `rollout.lora_dtype = "model"` costs; docs/small_models.md, section 72)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_train_runs_on_the_cpu_and_reports_the_bf16_lora_rollouts(tmp_path) -> None:
    out = tmp_path / "bench.json"
    subprocess.run(
        [sys.executable, "bench/bench_train.py", "--device", "cpu", "--frames", "1", "--height", "32", "--width", "32",
         "--group", "2", "--steps", "3", "--window", "1", "--repeats", "2", "--rank", "4",
         "--only", "forward,sft,grpo", "--json", str(out)],
        cwd=ROOT, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    r = json.loads(out.read_text())
    assert all(r["forward"][k] > 0 for k in ("no_lora_s", "lora_fp32_s", "lora_bf16_s"))
    assert r["sft"]["seconds"] > 0
    g = r["grpo"]
    assert g["rollout_bf16_lora_s"] > 0 and g["iteration_bf16_lora_s"] > g["rollout_bf16_lora_s"]
    ratios = g["max_abs_log_ratio_first_update"]
    assert set(ratios) == {"fp32_lora", "bf16_lora"}
    assert all(math.isfinite(v) and 0 <= v < 1e-2 for v in ratios.values())
