"""bench/real_memory.py (GPU memory of the real models, issue 14 item 8): its code paths run on tiny configs on the
CPU, and its real-shape configs have the real models' parameter counts (built on the meta device, no memory)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def _module():
    if "real_memory" not in sys.modules:
        spec = importlib.util.spec_from_file_location("real_memory", ROOT / "bench" / "real_memory.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["real_memory"] = module
        spec.loader.exec_module(module)
    return sys.modules["real_memory"]


def test_tiny_run_goes_through_edit_offload_and_judge(capsys):
    rm = _module()
    import viva_core.pipeline as pipeline

    sample = pipeline.sample
    rows = rm.main(["--shape", "tiny", "--only", "lucy,lucy-release-text,wan1.3b-offload-model,judge-3b"])
    assert pipeline.sample is sample  # the phase hooks are removed again
    assert [r.measurement for r in rows] == ["lucy", "lucy-release-text", "wan1.3b-offload-model", "judge-3b"]
    # no note: the release-text run's own check found the text encoder freed (nothing else held it)
    assert all(not r.note and r.peak_alloc_gib is None for r in rows), [r.note for r in rows]
    phases = {"text_encoder", "vae_encode", "sampling", "vae_decode"}
    for r in rows[:3]:  # every phase of an edit ran under the hooks; the `viva edit` flow released UMT5 in between
        assert set(r.phases_gib) == phases | ({"release"} if r.measurement == "lucy-release-text" else set())
    assert "encode first + release text encoder" in rows[1].what
    out = capsys.readouterr().out
    assert out.count('{"measurement": ') == 4 and "| judge-3b | tiny Qwen2.5-VL (tied) |" in out


def test_tiny_run_of_the_14b_rows_resident_then_block_offloaded():
    """Issue 13 target 3's 14B rows in their order: the `viva edit` flow (text encoder released), then the same DiT
    block-offloaded (moved to the host first, as load_editor leaves it; the text encoder built again), then
    block-offloaded with prefetch."""
    rm = _module()
    names = ["wan14b-release-text", "wan14b-offload-block", "wan14b-offload-block-prefetch"]
    rows = rm.main(["--shape", "tiny", "--only", ",".join(names)])
    assert [r.measurement for r in rows] == names
    assert all(not r.note for r in rows), [r.note for r in rows]
    assert "offload=block," in rows[1].what and "text_encoder" in rows[1].phases_gib
    assert "offload=block_prefetch," in rows[2].what  # a DiT built again: the block run's hooks stay on its own


def test_peak_without_the_text_encoder_is_derived_from_the_other_phases():
    rm = _module()
    row = rm.Row(
        "lucy",
        "m",
        "edit, offload=none",
        "480x832",
        81,
        peak_alloc_gib=40.0,
        weights_gib={"dit": 9.3, "vae": 2.6, "te": 10.6},
        phases_gib={"text_encoder": 24.0, "vae_encode": 30.0, "sampling": 25.0, "vae_decode": 40.0},
    )
    derived = rm.without_text_encoder(row, 10.6)
    assert derived.peak_alloc_gib == 29.4 and derived.weights_gib["te"] == 0.0
    assert "(no UMT5 on GPU)" in rm.table([row, derived], True, "H200")


def test_real_configs_have_the_real_parameter_counts():
    rm = _module()
    meta, bf16 = torch.device("meta"), torch.bfloat16

    def billions(module: torch.nn.Module) -> float:
        return sum(p.numel() for p in module.parameters()) / 1e9

    assert abs(billions(rm.build_dit(rm.LUCY_DIT, meta, bf16)) - 5.00) < 0.01  # Wan2.2-TI2V-5B
    assert abs(billions(rm.build_dit(rm.WAN_1_3B, meta, bf16)) - 1.42) < 0.01  # Wan2.1-T2V-1.3B
    assert abs(billions(rm.build_dit(rm.WAN_14B, meta, bf16)) - 14.29) < 0.01  # Wan2.1-T2V-14B, 32 input channels
    assert abs(billions(rm.build_text_encoder(rm.UMT5_XXL, meta, bf16)) - 5.68) < 0.01  # the 11.4 GB bf16 encoder
    tok = rm.qwen_tokenizer()
    # the exact counts of the Hub's Qwen2.5-VL-7B-Instruct / -3B-Instruct safetensors
    assert sum(p.numel() for p in rm.build_vlm_model(rm.QWEN_7B, tok, meta, bf16).parameters()) == 8_292_166_656
    assert sum(p.numel() for p in rm.build_vlm_model(rm.QWEN_3B, tok, meta, bf16).parameters()) == 3_754_622_976
