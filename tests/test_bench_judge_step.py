"""bench/bench_judge_step.py on the CPU: it times a real judge training batch (the stage's items, collate and loss)
and reports where the host time of one step goes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_judge_step_reports_a_real_batch(tmp_path) -> None:
    from viva_core.synth import generate

    generate(tmp_path / "clips", n=4, seed=2, format="npz", splits=(1.0, 0.0, 0.0))
    out = tmp_path / "bench.json"
    subprocess.run(
        [sys.executable, "bench/bench_judge_step.py", "--manifest", str(tmp_path / "clips" / "train.jsonl"),
         "--batch", "2", "--steps", "1", "--json", str(out)],
        cwd=ROOT, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    r = json.loads(out.read_text())
    assert r["chats"] == 8 and r["image_grids"] == 8 * 12  # 2 items x 4 questions; 4 frames of source, edit, |diff|
    assert 0 < r["forward_s_median"] < r["train_step_s_median"] and r["collate_s_one_core"] > 0
    assert 0 < r["host_positions_forward_s_median"] < r["host_positions_train_step_s_median"]
    functions = [f["function"] for f in r["host_functions_one_step"]]
    assert any("judge_margins" in f for f in functions) and len(functions) > 5
