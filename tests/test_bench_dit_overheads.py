"""bench/dit_overheads.py: its kernel classes on the names an H100 profile of the compiled Lucy-shaped DiT gave, its
attention FLOPs against a count written out per layer, and a CPU run end to end (`--device cpu`, tiny shapes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.dit_overheads import attention_flops, kernel_class  # noqa: E402


def test_kernel_classes_of_a_compiled_dit_profile() -> None:
    rows = {
        "nvjet_sm90_tst_256x152_64x4_1x2_h_bz_coopA_bias_TNT": "matmul",
        "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x128x128_4x1x1_cga": "attention",
        "triton_red_fused__fused_rms_norm__scaled_dot_product_cudnn_attention_permute_view_3": "other",
        "triton_poi_fused_gelu_view_6": "other",
        "std::enable_if<!(false), void>::type internal::gemvx::kernel<int, int, float, float>": "matmul",
        "void at::native::vectorized_elementwise_kernel<8, at::native::bfloat16_copy_kernel_cuda>": "other",
        "flash_attncuteflash_fwd_sm90FlashAttentionForwardSm90": "attention",
        "aten::addmm": "matmul",
        "aten::_scaled_dot_product_flash_attention_for_cpu": "attention",
        "cpp_fused_add_mul_0": "other",
    }
    assert {name: kernel_class(name) for name in rows} == rows


def test_attention_flops_count_each_layers_products() -> None:
    cfg = dict(num_attention_heads=24, attention_head_dim=128, num_layers=30)
    tokens, text, d = 8190, 512, 24 * 128
    qk_pv_self = 2 * (2 * tokens * tokens * d)  # QK^T: tokens x tokens x d multiply-adds; PV the same
    qk_pv_cross = 2 * (2 * tokens * text * d)
    assert attention_flops(cfg, tokens, text) == 30 * (qk_pv_self + qk_pv_cross)


def test_dit_overheads_runs_on_the_cpu(tmp_path) -> None:
    out = tmp_path / "o.json"
    done = subprocess.run(
        [sys.executable, "bench/dit_overheads.py", "--device", "cpu", "--json", str(out)],
        cwd=ROOT, check=True, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert "graph: needs a GPU, skipped" in done.stdout
    r = json.loads(out.read_text())
    assert r["attention"] == "sdpa"
    p = r["profile"]
    assert p["matmul_s"] > 0 and p["attention_s"] > 0 and p["forward_s"] > 0
    assert abs(p["matmul_s"] + p["attention_s"] + p["other_s"] - p["kernels_s"]) < 1e-9
    top = r["profile_top_other"]
    assert top and [t["us"] for t in top] == sorted((t["us"] for t in top), reverse=True)
    assert sum(t["us"] for t in top) / 1e6 <= p["other_s"] + 1e-9
    assert all(kernel_class(t["kernel"]) == "other" for t in top)
    v = r["vae"]
    assert v["decode_contiguous_s"] > 0 and v["decode_channels_last_3d_s"] > 0 and v["max_abs_diff"] < 1e-4
