"""Attention kernels at the Wan shapes, alone and inside the DiT: why is the editor's `attention=sdpa_cudnn` option
no faster than SDPA's default (flash) kernel when cuDNN's kernel alone is ~1.6x faster? (issue 13, target 1)

Times in one process with CUDA events (median), bf16, head dim 128, inputs laid out as diffusers passes them
((B, S, H, D) permuted to (B, H, S, D) views):
  kernels   self-attention at the 1.3B / 5B / 14B shapes and the 1.3B cross-attention (512 text tokens), forward and
            forward + backward, for SDPA's default pick, each forced SDPA backend (cuDNN with and without the
            .contiguous() copies diffusers' `_native_cudnn` makes) and diffusers' dispatch per backend; TFLOP/s and
            the largest difference from the flash kernel's output;
  model     the Wan2.1-1.3B editor-shaped DiT forward (480x832x81) per diffusers attention backend, and the top CUDA
            kernels of one forward of each (torch.profiler), which shows what each backend actually runs.
Where the `flash-attn-4` package (CuTe DSL, `flash_attn.cute`) imports, the editor's `attention="flash4"` is one more
variant in both parts (viva_core.compat: FA4's kernel as a custom op, in the model through diffusers' dispatch).

    python bench/bench_attention.py [--parts kernels,model] [--iters 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.bench_dit import WAN_1_3B, time_cuda  # noqa: E402

HEAD_DIM = 128
# (name, heads, query tokens, key tokens): 480x832x81 -> 21 x 30 x 52 latent patches (Wan2.1 VAE, patch 1x2x2)
# = 32,760 tokens; Lucy-Edit-5B (Wan2.2 VAE, 16x space) 8,190.
SHAPES = [
    ("Wan 1.3B self", 12, 32760, 32760),
    ("Wan 1.3B cross (512 text)", 12, 32760, 512),
    ("Lucy 5B self", 24, 8190, 8190),
    ("Wan 14B self", 40, 32760, 32760),
]
SDPA_BACKENDS = {
    "flash": [SDPBackend.FLASH_ATTENTION],
    "cudnn": [SDPBackend.CUDNN_ATTENTION],
    "efficient": [SDPBackend.EFFICIENT_ATTENTION],
}


def flash_attn_4() -> Callable | None:
    """The editor's flash4 attention on (B, S, H, D) inputs, or None where flash-attn-4 is missing or cannot load."""
    from viva_core.compat import DependencyError, _flash_attn_4_func

    try:
        return _flash_attn_4_func()
    except DependencyError as e:  # a missing or broken optional kernel is a result, printed
        print(f"flash-attn-4 not usable: {str(e).splitlines()[0][:200]}")
        return None


def sdpa_variants(dispatch: Callable | None) -> dict[str, Callable]:
    """Each way of running attention on (B, S, H, D) inputs, returning (B, S, H, D) as diffusers' processors expect."""

    def forced(backends, contiguous=False):
        def run(q, k, v):
            q, k, v = (x.permute(0, 2, 1, 3) for x in (q, k, v))
            if contiguous:
                q, k, v = (x.contiguous() for x in (q, k, v))
            with sdpa_kernel(backends):
                return torch.nn.functional.scaled_dot_product_attention(q, k, v).permute(0, 2, 1, 3)

        return run

    def default(q, k, v):
        q, k, v = (x.permute(0, 2, 1, 3) for x in (q, k, v))
        return torch.nn.functional.scaled_dot_product_attention(q, k, v).permute(0, 2, 1, 3)

    out = {"sdpa default pick": default}
    out.update({f"sdpa {n}": forced(b) for n, b in SDPA_BACKENDS.items()})
    out["sdpa cudnn, contiguous copies"] = forced(SDPA_BACKENDS["cudnn"], contiguous=True)
    if dispatch is not None:
        for backend in ("native", "_native_cudnn", "_native_flash"):
            out[f"diffusers {backend}"] = lambda q, k, v, b=backend: dispatch(q, k, v, backend=b)
    fa4 = flash_attn_4()
    if fa4 is not None:
        out["flash-attn-4 (CuTe DSL)"] = fa4
    return out


def bench_kernels(iters: int) -> list[dict]:
    try:
        from diffusers.models.attention_dispatch import dispatch_attention_fn
    except ImportError:
        dispatch_attention_fn = None
    rows = []
    for name, heads, sq, skv in SHAPES:
        gen = torch.Generator("cuda").manual_seed(0)
        q = torch.randn(1, sq, heads, HEAD_DIM, device="cuda", dtype=torch.bfloat16, generator=gen)
        k, v = (torch.randn(1, skv, heads, HEAD_DIM, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in "kv")
        flops = 4 * sq * skv * heads * HEAD_DIM
        reference = None
        for variant, fn in sdpa_variants(dispatch_attention_fn).items():
            row = {"shape": name, "variant": variant}
            try:
                with torch.no_grad():
                    out = fn(q, k, v)
                if reference is None:
                    reference = out.float()
                row["max_abs_diff"] = float((out.float() - reference).abs().max())
                row["fwd_ms"] = 1e3 * statistics.median(time_cuda(lambda fn=fn, qkv=(q, k, v): fn(*qkv), 3, iters))
                row["fwd_tflops"] = flops / row["fwd_ms"] / 1e9
                qg, kg, vg = (x.detach().requires_grad_(True) for x in (q, k, v))
                grad = torch.randn_like(out)

                def fwd_bwd(fn=fn, qg=qg, kg=kg, vg=vg, grad=grad):
                    torch.autograd.backward(fn(qg, kg, vg), grad)

                row["fwd_bwd_ms"] = 1e3 * statistics.median(time_cuda(fwd_bwd, 2, iters))
                row["fwd_bwd_tflops"] = 3.5 * flops / row["fwd_bwd_ms"] / 1e9  # backward ~2.5x the forward's FLOPs
            except Exception as e:  # noqa: BLE001 (a backend that cannot run this shape is a result too)
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
            rows.append(row)
            print(json.dumps(row), flush=True)
        torch.cuda.empty_cache()
    return rows


def bench_model(iters: int) -> list[dict]:
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    dev, dt = torch.device("cuda"), torch.bfloat16
    model = WanTransformer3DModel(**WAN_1_3B).to(dev, dt).eval().requires_grad_(False)
    inp = torch.randn(1, 32, 21, 60, 104, device=dev, dtype=dt)
    text = torch.randn(1, 512, 4096, device=dev, dtype=dt)
    t = torch.full((1,), 700.0, device=dev)

    def forward():
        with torch.no_grad():
            return model(hidden_states=inp, timestep=t, encoder_hidden_states=text, return_dict=False)[0]

    from viva_core.compat import set_attention_backend

    rows, reference = [], None
    for backend in ("native", "_native_cudnn", "_native_flash") + (("flash4",) if flash_attn_4() else ()):
        row = {"model": "Wan 1.3B editor shape, 480x832x81", "backend": backend}
        try:
            if backend == "flash4":  # the editor's option (diffusers' own name for FA4 fetches it from the Hub)
                set_attention_backend(model, backend)
            else:
                model.set_attention_backend(backend)
            out = forward()
            reference = out.float() if reference is None else reference
            row["max_abs_diff"] = float((out.float() - reference).abs().max())
            row["seconds"] = statistics.median(time_cuda(forward, 3, iters))
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                forward()
                torch.cuda.synchronize()
            events = sorted(prof.key_averages(), key=lambda e: e.device_time_total, reverse=True)[:8]
            row["top_kernels"] = [
                {"name": e.key[:90], "ms": e.device_time_total / 1e3, "calls": e.count} for e in events
            ]
        except Exception as e:  # noqa: BLE001
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
        rows.append(row)
        print(json.dumps(row, indent=1), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="kernels,model")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}")
    result = {}
    if "kernels" in args.parts:
        result["kernels"] = bench_kernels(args.iters)
    if "model" in args.parts:
        result["model"] = bench_model(args.iters)
    if "kernels" in result:
        print("\n| shape | variant | fwd ms | fwd TFLOP/s | fwd+bwd ms | fwd+bwd TFLOP/s | max diff vs first |")
        print("|---|---|---|---|---|---|---|")
        for r in result["kernels"]:
            if "error" in r:
                print(f"| {r['shape']} | {r['variant']} | {r['error']} | | | | |")
                continue
            print(
                f"| {r['shape']} | {r['variant']} | {r['fwd_ms']:.2f} | {r['fwd_tflops']:.0f} | "
                f"{r['fwd_bwd_ms']:.2f} | {r['fwd_bwd_tflops']:.0f} | {r['max_abs_diff']:.1e} |"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
