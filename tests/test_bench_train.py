"""bench/bench_train.py on the CPU (`--device cpu`: a two-layer DiT of the Wan-1.3B layout): the GPU session's
training benchmark runs end to end, and the rollouts with the LoRA in bf16 give log-probs the first update sees as
a small ratio off 1 (what `rollout.lora_dtype = "model"` costs; docs/small_models.md, section 72), as do the rollouts
with the LoRA merged (`"merged"`)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("compute", ["fp32", "model"])
def test_bench_train_runs_on_the_cpu_and_reports_the_bf16_lora_rollouts(tmp_path, compute) -> None:
    out = tmp_path / "bench.json"
    subprocess.run(
        [sys.executable, "bench/bench_train.py", "--device", "cpu", "--frames", "1", "--height", "32", "--width", "32",
         "--group", "2", "--steps", "3", "--window", "1", "--repeats", "2", "--rank", "4",
         "--only", "forward,sft,grpo", "--lora-compute", compute, "--json", str(out)],
        cwd=ROOT, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    r = json.loads(out.read_text())
    assert all(r["forward"][k] > 0 for k in ("no_lora_s", "lora_fp32_s", "lora_bf16_s"))
    assert r["sft"]["seconds"] > 0
    g = r["grpo"]
    assert g["rollout_bf16_lora_s"] > 0 and g["iteration_bf16_lora_s"] > g["rollout_bf16_lora_s"]
    ratios = g["max_abs_log_ratio_first_update"]
    assert g["rollout_merged_lora_s"] > 0 and g["iteration_merged_lora_s"] > g["rollout_merged_lora_s"]
    assert set(ratios) == {"fp32_lora", "bf16_lora", "merged_lora"} and r["lora_compute"] == compute
    assert all(math.isfinite(v) and 0 <= v < 1e-2 for v in ratios.values())


def test_trained_size_lora_moves_each_adapted_weight_by_the_asked_share() -> None:
    """The bench's LoRA stands for a trained one: each adapted linear's output on the identity (its weight change,
    read off the layer itself rather than from B @ A) is `scale` of the base weight's norm."""
    import importlib.util

    import torch
    from diffusers import WanTransformer3DModel

    from viva_core.train.adapters import ADAPTER, add_lora
    from viva_core.train.config import LoraConfig

    spec = importlib.util.spec_from_file_location("bench_train", ROOT / "bench" / "bench_train.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=8, out_channels=4,
        text_dim=16, freq_dim=16, ffn_dim=32, num_layers=1, rope_max_seq_len=64,
    )  # fmt: skip
    add_lora(model, LoraConfig(rank=4, alpha=8, targets="attn"))
    bench.trained_size_lora(model, 0.03)
    layers = [m for m in model.modules() if ADAPTER in getattr(m, "lora_A", {})]
    assert len(layers) == 8  # q, k, v, o of self- and cross-attention
    with torch.no_grad():
        for m in layers:
            eye = torch.eye(m.in_features)
            change = m(eye) - m.base_layer(eye)
            assert math.isclose(float(change.norm() / m.base_layer.weight.norm()), 0.03, rel_tol=1e-4)
