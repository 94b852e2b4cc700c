"""Where a compiled DiT forward spends its time beyond the FLOP floor, and levers tried against it (issue 13,
targets 1-2). Random weights at a real shape (bench/real_memory.py), bf16 on a GPU, CUDA events:

  profile   the forward's kernels in three classes, matmul / attention / the rest (norms, RoPE, modulation, GELU,
            adds: inductor's fused kernels), each class's time against its FLOP floor where it has one; and the
            forward's wall time against the kernels' sum (gaps between kernels);
  graph     the same forward captured as one CUDA graph and replayed: what launch overhead costs;
  autotune  the blocks compiled with mode "max-autotune-no-cudagraphs" (inductor's Triton GEMMs with fused epilogues
            where they win the autotuning) against the default mode;
  vae       the VAE's encode and decode (81 frames) with its Conv3d weights in channels_last_3d against contiguous.

    PYTHONPATH=. python bench/dit_overheads.py [--model lucy|wan1.3b] [--parts profile,graph,autotune,vae]
        [--attention sdpa|flash4|...] [--json F]
`--device cpu` runs a smoke check of the script at the tiny shapes (eager, the profile and vae parts).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench.real_memory as rm  # noqa: E402
from bench.bench_dit import dit_flops, matmul_rate, time_cuda  # noqa: E402
from viva_core.editor import EditorOptions, configure_dit  # noqa: E402

TEXT_TOKENS = 512
ATTENTION_WORDS = ("sdpa", "flash", "fmha", "attention", "attn")
MATMUL_WORDS = ("nvjet", "gemm", "gemv", "cutlass", "aten::mm", "aten::addmm", "aten::bmm")


def kernel_class(name: str) -> str:
    """'matmul', 'attention' or 'other' for a profiler row: a CUDA kernel's name or, on the CPU, an aten op's.
    Inductor's fused kernels (triton_*, cpp_fused_*) are 'other' even where their name lists the ops they feed."""
    n = name.lower()
    if n.startswith(("triton", "cpp_fused")):
        return "other"
    if any(w in n for w in ATTENTION_WORDS):
        return "attention"
    if any(w in n for w in MATMUL_WORDS):
        return "matmul"
    return "other"


def attention_flops(cfg: dict, tokens: int, text: int) -> float:
    """The attention products of one forward (QK^T and PV, self and cross), 2 FLOPs per multiply-add."""
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    return cfg["num_layers"] * (4 * tokens * tokens * d + 4 * tokens * text * d)


def timed(fn: Callable[[], object], cuda: bool, reps: int = 5) -> float:
    """Median seconds of `fn` after one warm call (CUDA events on a GPU: bench_dit.time_cuda)."""
    if cuda:
        return statistics.median(time_cuda(fn, 1, reps))
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def profile_classes(fn: Callable[[], object], cuda: bool, top: int = 8) -> tuple[dict[str, float], list[dict]]:
    """Seconds of one call of `fn` per kernel class (self time of each kernel, or of each aten op on the CPU), and
    the `top` kernels of the 'other' class by time (name, calls, microseconds a call): where the rest goes."""
    from torch.profiler import ProfilerActivity, profile

    activity = ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU
    with profile(activities=[activity]) as prof:
        fn()
        if cuda:
            torch.cuda.synchronize()
    out, others = {"matmul": 0.0, "attention": 0.0, "other": 0.0}, []
    for row in prof.key_averages():
        us = row.self_device_time_total if cuda else row.self_cpu_time_total
        if cuda and row.device_type != torch.autograd.DeviceType.CUDA:
            continue
        kind = kernel_class(row.key)
        out[kind] += us / 1e6
        if kind == "other" and us > 0:
            others.append({"kernel": row.key[:120], "calls": row.count, "us_per_call": us / row.count, "us": us})
    return out, sorted(others, key=lambda r: -r["us"])[:top]


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.cuda = args.device == "cuda"
        self.device = torch.device(args.device)
        self.dtype = torch.bfloat16 if self.cuda else torch.float32
        shape = "real" if self.cuda else "tiny"
        self.spec = rm.SHAPES[shape][args.model if self.cuda else "lucy"]
        self.frames, self.height, self.width = rm.SHAPES[shape]["video"]
        self.attention = args.attention
        self.results: dict = {"model": self.spec["label"], "device": args.device, "attention": args.attention}

    def dit(self, mode: str = "default") -> tuple[torch.nn.Module, Callable[[], torch.Tensor], int]:
        """A fresh DiT (seeded), compiled per block on a GPU, and its forward on fixed inputs; and the token count."""
        torch.manual_seed(0)
        cfg = self.spec["dit"]
        dit = rm.build_dit(cfg, self.device, self.dtype)
        options = EditorOptions(
            dtype="bf16" if self.cuda else "fp32", device=self.args.device, attention=self.attention
        )
        configure_dit(dit, options, self.dtype)  # the editor's attention option, as a loaded editor sets it
        vae_cfg = self.spec["vae"]
        ts, ss = (vae_cfg.get("scale_factor_temporal", 4), vae_cfg.get("scale_factor_spatial", 8))
        latent = ((self.frames - 1) // ts + 1, self.height // ss, self.width // ss)
        p = cfg["patch_size"]
        tokens = (latent[0] // p[0]) * (latent[1] // p[1]) * (latent[2] // p[2])
        if self.cuda:
            torch._dynamo.reset()
            for block in dit.blocks:
                block.forward = torch.compile(block.forward, fullgraph=True, mode=None if mode == "default" else mode)
        x = torch.randn(1, cfg["in_channels"], *latent, device=self.device, dtype=self.dtype)
        text = torch.randn(1, TEXT_TOKENS, cfg["text_dim"], device=self.device, dtype=self.dtype)
        t = torch.tensor([500.0], device=self.device)

        def forward() -> torch.Tensor:
            with torch.no_grad():
                return dit(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)[0]

        return dit, forward, tokens

    def profile(self) -> None:
        cfg = self.spec["dit"]
        _, forward, tokens = self.dit()
        seconds = timed(forward, self.cuda)
        classes, top_other = profile_classes(forward, self.cuda)
        total = dit_flops(cfg, tokens, TEXT_TOKENS)
        attn = attention_flops(cfg, tokens, TEXT_TOKENS)
        rate = matmul_rate() if self.cuda else None
        row = {
            "tokens": tokens,
            "forward_s": seconds,
            "kernels_s": sum(classes.values()),
            **{f"{k}_s": v for k, v in classes.items()},
        }
        if rate:
            row |= {
                "matmul_tflops_measured": rate / 1e12,
                "floor_s": total / rate,
                "x_floor": seconds / (total / rate),
                "matmul_x_floor": classes["matmul"] / ((total - attn) / rate),
                "attention_x_floor": classes["attention"] / (attn / rate),
            }
        self.results["profile"] = row
        print("profile", json.dumps(row), flush=True)
        self.results["profile_top_other"] = top_other
        for r in top_other:
            print(f"  other: {r['us_per_call']:9.1f} us x {r['calls']:4d}  {r['kernel']}", flush=True)

    def graph(self) -> None:
        _, forward, _ = self.dit()
        launched = timed(forward, True)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                forward()
        torch.cuda.current_stream().wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            out = forward()
        replayed = timed(g.replay, True)
        ref = forward()
        g.replay()
        row = {
            "launched_s": launched,
            "graph_s": replayed,
            "ratio": replayed / launched,
            "max_abs_diff": float((out - ref).abs().max()),
        }
        self.results["graph"] = row
        print("graph", json.dumps(row), flush=True)

    def autotune(self) -> None:
        row, outs = {}, {}
        for mode in ("default", "max-autotune-no-cudagraphs"):
            _, forward, _ = self.dit(mode)
            t0 = time.perf_counter()
            outs[mode] = forward().float()
            torch.cuda.synchronize()
            row[f"{mode}_first_call_s"] = time.perf_counter() - t0
            row[f"{mode}_s"] = timed(forward, True)
        row["ratio"] = row["max-autotune-no-cudagraphs_s"] / row["default_s"]
        row["max_abs_diff"] = float((outs["default"] - outs["max-autotune-no-cudagraphs"]).abs().max())
        self.results["autotune"] = row
        print("autotune", json.dumps(row), flush=True)

    def vae(self) -> None:
        vae = rm.build_vae(self.spec["vae"], self.device, self.dtype)
        cfg = vae.config
        g = torch.Generator(device="cpu").manual_seed(0)
        video = (torch.rand(1, 3, self.frames, self.height, self.width, generator=g) * 2 - 1).to(
            self.device, self.dtype
        )
        latent = (cfg.z_dim, (self.frames - 1) // cfg.scale_factor_temporal + 1)
        z = torch.randn(
            1, *latent, self.height // cfg.scale_factor_spatial, self.width // cfg.scale_factor_spatial, generator=g
        ).to(self.device, self.dtype)
        row, decoded = {}, {}
        for fmt_name, fmt in (("contiguous", torch.contiguous_format), ("channels_last_3d", torch.channels_last_3d)):
            for m in vae.modules():
                if isinstance(m, torch.nn.Conv3d):
                    m.weight.data = m.weight.data.contiguous(memory_format=fmt)
            with torch.no_grad():
                row[f"decode_{fmt_name}_s"] = timed(lambda: vae.decode(z, return_dict=False)[0], self.cuda, 3)
                row[f"encode_{fmt_name}_s"] = timed(lambda: vae.encode(video).latent_dist.mode(), self.cuda, 3)
                decoded[fmt_name] = vae.decode(z, return_dict=False)[0].float()
        row["decode_ratio"] = row["decode_channels_last_3d_s"] / row["decode_contiguous_s"]
        row["encode_ratio"] = row["encode_channels_last_3d_s"] / row["encode_contiguous_s"]
        row["max_abs_diff"] = float((decoded["contiguous"] - decoded["channels_last_3d"]).abs().max())
        self.results["vae"] = row
        print("vae", json.dumps(row), flush=True)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lucy", choices=["lucy", "wan1.3b"])
    ap.add_argument("--parts", default="profile,graph,autotune,vae")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--attention", default="sdpa", help="the editor's attention option (flash4: flash-attn-4)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    bench = Bench(args)
    for part in [p for p in args.parts.split(",") if p]:
        if part in ("graph", "autotune") and not bench.cuda:
            print(f"{part}: needs a GPU, skipped", flush=True)
            continue
        getattr(bench, part)()
    if args.json:
        Path(args.json).write_text(json.dumps(bench.results, indent=1))
    return bench.results


if __name__ == "__main__":
    main()
