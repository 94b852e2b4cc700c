"""DiT forward benchmark at the Wan2.1-1.3B editor shape (channel concat: in 32 / out 16), bf16, random weights.

Times, in one process and with CUDA events:
  baseline  plain diffusers WanTransformer3DModel forward (SDPA), inputs already concatenated;
  editor    the velocity function viva_core.pipeline.edit runs per step (concat + DiT + fp32 cast), for each
            attention / compile setting the editor offers;
  cfg       one batched CFG step (B=2) vs two single passes.
and prints seconds, the ratio to the FLOP floor (FLOPs / measured bf16 matmul rate) and to the baseline.

    python bench/bench_dit.py [--frames 81 --height 480 --width 832] [--variants sdpa,sdpa_cudnn,compile_blocks]
(a variant is an `attention` option, compiled blocks with "+compile": flash4,flash4+compile; "compile_blocks" is
sdpa+compile)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

WAN_1_3B = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=12,
    attention_head_dim=128,
    in_channels=32,
    out_channels=16,
    text_dim=4096,
    freq_dim=256,
    ffn_dim=8960,
    num_layers=30,
)


def dit_flops(cfg: dict, tokens: int, text: int, batch: int = 1) -> float:
    """Matmul FLOPs of one forward (2 per multiply-add): projections, attention, cross-attention, FFN, embed, head."""
    d, f, layers = cfg["num_attention_heads"] * cfg["attention_head_dim"], cfg["ffn_dim"], cfg["num_layers"]
    per_layer = (
        8 * tokens * d * d  # self-attn q, k, v, o
        + 4 * tokens * tokens * d  # QK^T and PV
        + 4 * tokens * d * d  # cross-attn q, o
        + 4 * text * cfg["text_dim"] * d  # cross-attn k, v on text tokens (text_dim -> d after embedder)
        + 4 * tokens * text * d  # cross-attention scores and values
        + 4 * tokens * d * f
    )  # FFN
    p = cfg["patch_size"]
    embed = (
        2 * tokens * d * cfg["in_channels"] * p[0] * p[1] * p[2]
        + 2 * tokens * d * cfg["out_channels"] * p[0] * p[1] * p[2]
    )
    text_embed = 2 * text * cfg["text_dim"] * d + 2 * text * d * d
    return batch * (layers * per_layer + embed + text_embed)


def time_cuda(fn, warmup: int, iters: int) -> list[float]:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        out.append(a.elapsed_time(b) / 1e3)
    return out


def matmul_rate(n: int = 8192) -> float:
    x, y = (
        torch.randn(n, n, device="cuda", dtype=torch.bfloat16),
        torch.randn(n, n, device="cuda", dtype=torch.bfloat16),
    )
    t = statistics.median(time_cuda(lambda: x @ y, 3, 10))
    return 2 * n**3 / t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--text", type=int, default=512)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--variants", default="sdpa,sdpa_cudnn,compile_blocks")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from diffusers import WanTransformer3DModel

    from viva_core.editor import EditorOptions, compile_dit, configure_dit

    torch.manual_seed(0)
    dev, dt = torch.device("cuda"), torch.bfloat16
    lat_t, lat_h, lat_w = (args.frames - 1) // 4 + 1, args.height // 8, args.width // 8
    tokens = lat_t * (lat_h // 2) * (lat_w // 2)
    model = WanTransformer3DModel(**WAN_1_3B).to(dev, dt).eval().requires_grad_(False)
    x = torch.randn(1, 16, lat_t, lat_h, lat_w, device=dev)
    src = torch.randn(1, 16, lat_t, lat_h, lat_w, device=dev)
    text = torch.randn(2, args.text, 4096, device=dev, dtype=dt)
    t1 = torch.full((1,), 700.0, device=dev)
    inp = torch.cat([x, src], 1).to(dt)

    flops = dit_flops(WAN_1_3B, tokens, args.text)
    rate = matmul_rate()
    floor = flops / rate
    rows = []

    def record(name: str, times: list[float], batch: int = 1, peak: float | None = None) -> None:
        med = statistics.median(times)
        rows.append(
            {
                "name": name,
                "seconds": med,
                "spread": (max(times) - min(times)) / med,
                "floor_s": floor * batch,
                "x_floor": med / (floor * batch),
                "peak_gib": peak,
            }
        )

    def baseline():
        with torch.no_grad():
            return model(hidden_states=inp, timestep=t1, encoder_hidden_states=text[:1], return_dict=False)[0]

    torch.cuda.reset_peak_memory_stats()
    record(
        "diffusers baseline (sdpa)", time_cuda(baseline, 3, args.iters), peak=torch.cuda.max_memory_allocated() / 2**30
    )

    for variant in [v for v in args.variants.split(",") if v]:
        # "compile_blocks" = sdpa compiled; "<attention>+compile" any other attention option compiled
        attention, compile_mode = ("sdpa", "blocks") if variant == "compile_blocks" else (variant, "off")
        if variant.endswith("+compile"):
            attention, compile_mode = variant.removesuffix("+compile"), "blocks"
        model.set_attention_backend("native")  # reset before each variant
        opts = EditorOptions(dtype="bf16", device="cuda", attention=attention, compile=compile_mode)
        t0 = time.perf_counter()
        configure_dit(model, opts, dt)
        compile_dit(model, compile_mode)
        dit = model

        def velocity():
            with torch.no_grad():
                i = torch.cat([x, src], dim=1).to(dt)
                return dit(  # noqa: B023 (called in this iteration only)
                    hidden_states=i,
                    timestep=t1,
                    encoder_hidden_states=text[:1],
                    return_dict=False,
                )[0].float()

        velocity()
        torch.cuda.synchronize()
        setup = time.perf_counter() - t0
        torch.cuda.reset_peak_memory_stats()
        record(
            f"editor step ({variant}; first call {setup:.0f} s)",
            time_cuda(velocity, 2, args.iters),
            peak=torch.cuda.max_memory_allocated() / 2**30,
        )
        if compile_mode != "off":
            torch._dynamo.reset()
            model = WanTransformer3DModel(**WAN_1_3B).to(dev, dt).eval().requires_grad_(False)

    model.set_attention_backend("native")
    x2, t2 = torch.cat([inp, inp]), torch.full((2,), 700.0, device=dev)

    def cfg_batched():
        with torch.no_grad():
            return model(hidden_states=x2, timestep=t2, encoder_hidden_states=text, return_dict=False)[0]

    def cfg_two_passes():
        with torch.no_grad():
            a = model(hidden_states=inp, timestep=t1, encoder_hidden_states=text[:1], return_dict=False)[0]
            b = model(hidden_states=inp, timestep=t1, encoder_hidden_states=text[1:], return_dict=False)[0]
            return a, b

    record("CFG step batched (B=2)", time_cuda(cfg_batched, 2, args.iters), batch=2)
    record("CFG step two passes", time_cuda(cfg_two_passes, 2, args.iters), batch=2)

    base = rows[0]["seconds"]
    print(
        f"\nshape: {args.frames}x{args.height}x{args.width} -> {tokens} tokens + {args.text} text; "
        f"{flops / 1e12:.1f} TFLOP/forward; bf16 matmul {rate / 1e12:.0f} TFLOP/s; floor {floor:.3f} s; "
        f"{torch.cuda.get_device_name()}"
    )
    print("| variant | s (median) | spread | x floor | vs baseline | peak GiB |\n|---|---|---|---|---|---|")
    for r in rows:
        peak = f"{r['peak_gib']:.1f}" if r["peak_gib"] else ""
        print(
            f"| {r['name']} | {r['seconds']:.3f} | {r['spread']:.1%} | {r['x_floor']:.2f} | "
            f"{r['seconds'] / (base * r['floor_s'] / floor):.3f} | {peak} |"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"tokens": tokens, "tflop": flops / 1e12, "matmul_tflops": rate / 1e12, "rows": rows}, indent=2)
        )


if __name__ == "__main__":
    main()
