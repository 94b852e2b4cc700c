"""fp8 storage + LoRA at Wan 14B width (dim 5120, FFN 13824, 40 heads; 2 blocks, 32,760 tokens = 81 frames at
480x832): the LoRA's effect (output with minus without) against the same LoRA merged into fp32 weights, for the
old merge (W + dW cast back to fp8), the unmerged side path, and a bf16 model; and forward / apply+restore times.
Run: PYTHONPATH=. python bench/fp8_lora.py (prints JSON; on a machine without a GPU at width 1024).

Measured 2026-12-02 on 2 shared CPU cores, width 1024, LoRA rank 32 on all 20 block Linears, effect 1.0% of the
output: cosine vs fp32 — side path 0.9999999992 (fp32 compute) / 0.855 (bf16), old merge 0.212 / 0.110, a bf16
model's merged LoRA 0.856 (bf16 compute); forward (fastest of 5) 2.78 s without LoRA, 3.02 s side path, 2.97 s
old merge (the last should equal the first: ~7% noise from other work on the cores); apply+restore 0.12 s side
path, 1.34 s merge. Not run on the GPU (no device time left in that session)."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import save_file

import viva_core.lora as lora
from viva_core.lora import LoraSpec, applied_loras, lora_target_names

CFG = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=40,
    attention_head_dim=128,
    in_channels=16,
    out_channels=16,
    text_dim=4096,
    freq_dim=256,
    ffn_dim=13824,
    num_layers=2,
    rope_max_seq_len=1024,
)
SHAPE, TEXT = (1, 16, 21, 60, 104), (1, 512, 4096)
if not torch.cuda.is_available():  # on CPU: width 1024 (FFN 4096), 1,280 tokens; VIVA_BENCH_TINY=1: a smoke run
    if os.environ.get("VIVA_BENCH_TINY"):
        CFG.update(num_attention_heads=2, attention_head_dim=16, text_dim=64, freq_dim=32, ffn_dim=64)
        SHAPE, TEXT = (1, 16, 2, 8, 8), (1, 5, 64)
    else:
        CFG.update(num_attention_heads=8, attention_head_dim=128, ffn_dim=4096)
        SHAPE, TEXT = (1, 16, 5, 32, 32), (1, 64, 4096)
DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


def model(dtype: torch.dtype, fp8: bool, compute: torch.dtype) -> WanTransformer3DModel:
    torch.manual_seed(0)
    m = WanTransformer3DModel(**CFG).eval()
    with torch.no_grad():  # weights of unit gain (std fan_in^-1/2), so every block matters to the output
        for mod in m.modules():
            if isinstance(mod, torch.nn.Linear):
                mod.weight.normal_(0.0, mod.weight.shape[1] ** -0.5)
    m = m.to(DEV, dtype)
    if fp8:
        m.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=compute)
        lora.install_fp8_lora_hooks(m)
    return m


def inputs(dtype):
    g = torch.Generator(device=DEV).manual_seed(1)
    x = torch.randn(*SHAPE, generator=g, device=DEV).to(dtype)
    text = torch.randn(*TEXT, generator=g, device=DEV).to(dtype)
    return dict(hidden_states=x, timestep=torch.tensor([500.0], device=DEV), encoder_hidden_states=text)


@torch.no_grad()
def run(m, dtype):
    return m(**inputs(dtype)).sample.float()


def sync() -> None:
    if DEV.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, n=5):
    """Fastest of n runs after a warm-up (the least disturbed by other work on the machine)."""
    fn()
    best = float("inf")
    for _ in range(n):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    fp8 = model(torch.float32, True, torch.float32)
    ref = model(torch.float32, False, torch.float32)
    with torch.no_grad():  # the fp32 twin holds exactly the fp8 values
        for p, q in zip(ref.parameters(), fp8.parameters()):
            p.copy_(q.float())
    names = lora_target_names(ref)
    g = torch.Generator(device=DEV).manual_seed(2)
    tensors, deltas = {}, {}
    for n in names:
        w = ref.get_submodule(n).weight
        a = torch.randn(32, w.shape[1], generator=g, device=DEV)
        b = torch.randn(w.shape[0], 32, generator=g, device=DEV)
        k = (0.01 * w.std() / (b @ a).std()).sqrt()
        a, b = a * k, b * k
        deltas[n] = b @ a
        tensors[f"{n}.lora_A.weight"], tensors[f"{n}.lora_B.weight"] = a.cpu().contiguous(), b.cpu().contiguous()
        tensors[f"{n}.alpha"] = torch.tensor(32.0)
    path = tmp / "lora.safetensors"
    save_file(tensors, str(path))
    spec = [LoraSpec(str(path), 1.0)]

    base = run(ref, torch.float32)
    with torch.no_grad():
        for n, d in deltas.items():
            ref.get_submodule(n).weight.add_(d)
    ref_effect = run(ref, torch.float32) - base
    del ref
    out = {"effect_rel": float(ref_effect.norm() / base.norm())}

    def cos(e):
        return float(torch.nn.functional.cosine_similarity(e.flatten().double(), ref_effect.flatten().double(), 0))

    def effect(m, dtype):
        b0 = run(m, dtype)
        with applied_loras(m, spec):
            b1 = run(m, dtype)
        assert torch.equal(run(m, dtype), b0)
        return b1 - b0

    side = lora._is_fp8
    for compute in (torch.float32, torch.bfloat16):
        m = fp8 if compute == torch.float32 else model(torch.bfloat16, True, torch.bfloat16)
        if compute == torch.bfloat16:
            with torch.no_grad():
                for p, q in zip(m.parameters(), fp8.parameters()):
                    p.copy_(q)
        tag = "fp32" if compute == torch.float32 else "bf16"
        out[f"cos_side_{tag}"] = cos(effect(m, compute))
        lora._is_fp8 = lambda w: False  # the old behaviour: merge and cast back to fp8
        out[f"cos_old_merge_{tag}"] = cos(effect(m, compute))
        lora._is_fp8 = side
        if compute == torch.bfloat16:
            out["fwd_s_no_lora"] = timed(lambda m=m, compute=compute: run(m, compute))
            with applied_loras(m, spec):
                out["fwd_s_side_path"] = timed(lambda m=m, compute=compute: run(m, compute))
            lora._is_fp8 = lambda w: False
            with applied_loras(m, spec):
                out["fwd_s_old_merge"] = timed(lambda m=m, compute=compute: run(m, compute))
            t = time.perf_counter()
            with applied_loras(m, spec):
                sync()
            sync()
            out["apply_restore_s_old_merge"] = time.perf_counter() - t
            lora._is_fp8 = side
            t = time.perf_counter()
            with applied_loras(m, spec):
                sync()
            sync()
            out["apply_restore_s_side_path"] = time.perf_counter() - t
        del m
    bf = model(torch.bfloat16, False, torch.bfloat16)
    with torch.no_grad():
        for p, q in zip(bf.parameters(), fp8.parameters()):
            p.copy_(q.to(torch.bfloat16))
    out["cos_bf16_weights_merged_bf16"] = cos(effect(bf, torch.bfloat16))
    out["device"] = torch.cuda.get_device_name() if DEV.type == "cuda" else "cpu"
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
