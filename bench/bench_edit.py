"""Full-edit benchmark (issue 13, target 2): one whole edit (text encode + VAE encode + sampling + VAE decode) by
diffusers' `LucyEditPipeline` and by `viva_core.pipeline.edit` on the same in-memory parts, in one process.

The parts are Lucy-Edit-Dev-shaped with random weights, built on the GPU by bench/real_memory.py's builders (Wan2.2
5B DiT in 96 / out 48 bf16, Wan2.2 VAE fp32, UMT5-XXL bf16, stand-in tokenizer). Same video (random, 81x480x832),
prompt, seed, steps, CFG 5, UniPC flow scheduler with the shift Lucy ships (5.0: the config its
scheduler_config.json gives, also handed to the editor as `sampling_defaults`, as `load_editor` would).

Variants (`--variants`, in this fixed order: the compiled ones last, un-compiled between):
  diffusers  LucyEditPipeline(...)(video, prompt, ...), output_type "np" (CFG as two B=1 passes)
  ours       viva_core.pipeline.edit, default EditorOptions (SDPA, no compile, VAE fp32)
  cudnn      attention=sdpa_cudnn
  vae_bf16   vae_dtype=bf16 (+ PSNR of its decode against the fp32 decode of the same latents)
  compile    compile=blocks
  best       sdpa_cudnn + vae bf16 + compile=blocks
Each: one warm-up edit of `--warmup-steps` (same shapes, so every kernel and the compile are warm; its seconds are
reported as `first call`), then `--repeats` timed edits (median). Per edit: wall seconds (synchronized), peak
`max_memory_allocated`, phase split from CUDA events on hooks of the shared parts (text encoder calls, vae.encode,
first to last DiT call, vae.decode; no syncs inside the edit), PSNR of the video against the baseline's. The
sampling floor is dit_flops x 2 (CFG) x steps / measured bf16 matmul rate.

The edits agree up to one difference, kept (the baseline is diffusers as shipped): LucyEditPipeline feeds the DiT
UniPC's `timesteps`, which set_timesteps casts to int64 (sigma * 1000 truncated: 999.999 -> 999), `edit` feeds
sigma * 1000. On the tiny CPU check (fp32) that alone leaves 50-53 dB at 3-8 steps, 70 dB at 30; with float
timesteps the two agree to 135+ dB (same noise, sigmas, CFG formula, empty negative prompt, 512-token padding,
latent normalisation).
FLOPs: bench_dit.dit_flops fits the Wan2.2 5B DiT (patch 1x2x2 on the 16x VAE: 81x480x832 -> latent 21x30x52 ->
8190 tokens, 98.2 TFLOP per forward); it counts the cross-attention k/v on text_dim rather than the embedded width
(+0.2%).

Defaults (30 steps, 1 repeat, 2-step warm-ups, all six variants) take ~4-5 min on an H200 (DiT + UMT5 + VAE
resident, ~25 GiB); `--repeats 2` adds ~1.5 min. `--shape tiny` runs the same code on tiny configs on the CPU
with one torch thread (tests/test_bench_edit.py: baseline and ours must agree).

    PYTHONPATH=. python bench/bench_edit.py [--steps 30 --repeats 1 --variants diffusers,ours,best --json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

import real_memory as rm  # noqa: E402
from bench_dit import dit_flops, matmul_rate  # noqa: E402
from tiny_editor import WAN_SCHEDULER  # noqa: E402

GIB = 2**30
LUCY_SHIFT = 5.0  # decart-ai/Lucy-Edit-Dev scheduler/scheduler_config.json: UniPC, use_flow_sigmas, flow_shift 5.0
PROMPT = rm.PROMPT
TEXT_TOKENS = 512  # both pad UMT5's output to 512 tokens
PHASES = ("text", "vae_encode", "sampling", "vae_decode")


@dataclass(frozen=True)
class Variant:
    name: str
    attention: str = "sdpa"
    compile: str = "off"
    vae_dtype: str = "fp32"


VARIANTS = {
    v.name: v
    for v in (
        Variant("diffusers"),
        Variant("ours"),
        Variant("cudnn", attention="sdpa_cudnn"),
        Variant("vae_bf16", vae_dtype="bf16"),
        Variant("compile", compile="blocks"),
        Variant("best", attention="sdpa_cudnn", vae_dtype="bf16", compile="blocks"),
    )
}


@dataclass
class Row:
    variant: str
    options: str
    seconds: float = math.nan  # median of the timed edits
    seconds_all: list = field(default_factory=list)
    first_call_s: float = math.nan  # the warm-up edit (warmup_steps), includes compiling
    vs_baseline: Optional[float] = None
    phases_s: dict = field(default_factory=dict)  # median per phase; "other" = the rest of the wall time
    sampling_floor_s: Optional[float] = None
    x_floor_sampling: Optional[float] = None
    peak_gib: Optional[float] = None
    psnr_vs_baseline_db: Optional[float] = None
    psnr_vs_ours_db: Optional[float] = None
    decode_psnr_vs_fp32_db: Optional[float] = None  # bf16 VAE: decode of the same latents vs the fp32 VAE's
    note: str = ""


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """dB for videos in 0..1 (inf when identical)."""
    mse = float(((a.float() - b.float()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


class PhaseClock:
    """Start / end marks of each phase of one edit from hooks on the parts both pipelines share, so both are cut at
    the same places: CUDA events on the GPU (nothing synchronizes inside the edit), perf_counter on the CPU."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.marks: dict[str, list[list]] = {}

    def _now(self):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def start(self, phase: str) -> None:
        self.marks.setdefault(phase, []).append([self._now(), None])

    def end(self, phase: str) -> None:
        self.marks[phase][-1][1] = self._now()

    def _span(self, a, b) -> float:
        return a.elapsed_time(b) / 1e3 if self.cuda else b - a

    def seconds(self) -> dict[str, float]:
        """Sum of each phase's calls; sampling spans its first DiT call's start to its last one's end."""
        out = {}
        for phase, marks in self.marks.items():
            if phase == "sampling":
                out[phase] = self._span(marks[0][0], marks[-1][1])
            else:
                out[phase] = sum(self._span(a, b) for a, b in marks)
        return out

    @contextlib.contextmanager
    def hooks(self, te: torch.nn.Module, dit: torch.nn.Module, vae: torch.nn.Module):
        handles = []
        for module, phase in ((te, "text"), (dit, "sampling")):
            handles.append(module.register_forward_pre_hook(lambda *_, p=phase: self.start(p)))
            handles.append(module.register_forward_hook(lambda *_, p=phase: self.end(p)))

        def wrap(fn: Callable, phase: str) -> Callable:
            def inner(*a, **k):
                self.start(phase)
                try:
                    return fn(*a, **k)
                finally:
                    self.end(phase)

            return inner

        vae.encode, vae.decode = wrap(vae.encode, "vae_encode"), wrap(vae.decode, "vae_decode")
        try:
            yield self
        finally:
            for h in handles:
                h.remove()
            del vae.encode, vae.decode  # the class's methods again


@contextlib.contextmanager
def captured_latents(store: dict):
    """Keep the latents `viva_core.pipeline.edit` decodes (to decode them again with the fp32 VAE)."""
    import viva_core.pipeline as pipeline

    original = pipeline.decode_latents

    def inner(editor, z):
        store["z"] = z
        return original(editor, z)

    pipeline.decode_latents = inner
    try:
        yield
    finally:
        pipeline.decode_latents = original


def uncompile(module: torch.nn.Module) -> None:
    """Undo `compile_repeated_blocks` (nn.Module.compile sets _compiled_call_impl) so the next variant compiles
    with its own attention backend."""
    for m in module.modules():
        if getattr(m, "_compiled_call_impl", None) is not None:
            m._compiled_call_impl = None
    torch._dynamo.reset()


def ensure_ftfy() -> str:
    """LucyEditPipeline cleans prompts with ftfy.fix_text; without ftfy installed it raises NameError. A no-op
    stand-in then (a microsecond string pass; the prompt here is plain ASCII, which ftfy leaves unchanged)."""
    import importlib.util

    if importlib.util.find_spec("ftfy") is not None:
        return ""
    import types

    from diffusers.pipelines.lucy import pipeline_lucy_edit

    pipeline_lucy_edit.ftfy = types.SimpleNamespace(fix_text=lambda s: s)
    return "ftfy not installed: the baseline's prompt cleaning is a no-op"


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.cuda = args.shape == "real"
        self.device = torch.device("cuda" if self.cuda else "cpu")
        self.dtype = torch.bfloat16 if self.cuda else torch.float32  # the CPU check runs fp32, as real_memory's
        self.dtype_name = "bf16" if self.cuda else "fp32"
        spec = rm.SHAPES[args.shape]["lucy"]
        self.spec = spec
        frames, height, width = (9, 64, 64) if args.shape == "tiny" else rm.SHAPES["real"]["video"]
        self.frames, self.height, self.width = args.frames or frames, args.height or height, args.width or width
        g = torch.Generator().manual_seed(0)
        self.video = torch.rand(self.frames, self.height, self.width, 3, generator=g)
        self.rows: list[Row] = []
        self.outputs: dict[str, torch.Tensor] = {}
        self.vaes: dict[str, torch.nn.Module] = {}
        self.notes: list[str] = []

    # ---- setup ---------------------------------------------------------------------------------------------
    def build(self) -> None:
        torch.manual_seed(0)
        t0 = time.perf_counter()
        self.te = rm.build_text_encoder(self.spec["te"], self.device, self.dtype)
        self.dit = rm.build_dit(self.spec["dit"], self.device, self.dtype)
        self.vaes["fp32"] = rm.build_vae(self.spec["vae"], self.device, torch.float32)
        self.tokenizer = rm.tiny_tokenizer()
        self.sync()
        print(json.dumps({"built": self.spec["label"], "seconds": round(time.perf_counter() - t0, 1)}), flush=True)
        cfg, vae_cfg = self.spec["dit"], self.vaes["fp32"].config
        p = cfg["patch_size"]
        latent = (
            (self.frames - 1) // vae_cfg.scale_factor_temporal + 1,
            self.height // vae_cfg.scale_factor_spatial,
            self.width // vae_cfg.scale_factor_spatial,
        )
        self.latent = latent
        self.tokens = (latent[0] // p[0]) * (latent[1] // p[1]) * (latent[2] // p[2])
        self.flops_forward = dit_flops(cfg, self.tokens, TEXT_TOKENS)
        self.rate = matmul_rate() if self.cuda else None
        guided = self.args.cfg != 1.0
        self.floor = self.flops_forward * (2 if guided else 1) * self.args.steps / self.rate if self.rate else None

    def vae(self, dtype: str) -> torch.nn.Module:
        """The VAE in `dtype` on the device, the other one moved to the CPU (a vae_dtype=bf16 editor holds only the
        bf16 VAE, so its peak does not count the fp32 one)."""
        if dtype not in self.vaes:
            self.vaes[dtype] = copy.deepcopy(self.vaes["fp32"]).to(torch.bfloat16)
        for name, v in self.vaes.items():
            v.to(self.device if name == dtype else "cpu")
        self.free()
        return self.vaes[dtype]

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def free(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()

    # ---- the two pipelines ---------------------------------------------------------------------------------
    def scheduler(self):
        from diffusers import UniPCMultistepScheduler

        return UniPCMultistepScheduler.from_config({**WAN_SCHEDULER, "flow_shift": LUCY_SHIFT})

    def diffusers_edit(self, vae: torch.nn.Module) -> Callable[[int], torch.Tensor]:
        from diffusers import LucyEditPipeline

        note = ensure_ftfy()
        if note and note not in self.notes:
            self.notes.append(note)
        self.dit.set_attention_backend("native")  # diffusers' default (SDPA), whatever ran before
        pipe = LucyEditPipeline(
            tokenizer=self.tokenizer, text_encoder=self.te, vae=vae, scheduler=self.scheduler(), transformer=self.dit
        )
        pipe.set_progress_bar_config(disable=True)
        video = self.video.permute(0, 3, 1, 2).unsqueeze(0)  # [1, T, C, H, W] 0..1, as preprocess_video takes it

        def run(steps: int) -> torch.Tensor:
            out = pipe(
                video=video,
                prompt=PROMPT,
                height=self.height,
                width=self.width,
                num_frames=self.frames,
                num_inference_steps=steps,
                guidance_scale=self.args.cfg,
                generator=torch.Generator("cpu").manual_seed(self.args.seed),
                output_type="np",
                max_sequence_length=TEXT_TOKENS,
            ).frames[0]
            return torch.from_numpy(out)  # [T, H, W, C] 0..1

        return run

    def ours_edit(self, v: Variant, vae: torch.nn.Module) -> tuple[Callable[[int], torch.Tensor], object, str]:
        from viva_core.editor import EditorOptions, available_attention_backends
        from viva_core.pipeline import edit
        from viva_core.settings import EditSettings

        note = ""
        attention = v.attention
        if attention not in available_attention_backends():
            note = f"attention {attention} not available on {self.device.type}: ran sdpa"
            attention = "sdpa"
        options = EditorOptions(
            dtype=self.dtype_name,
            device=str(self.device),
            attention=attention,
            compile=v.compile,
            vae_dtype=v.vae_dtype,
        )
        parts = dict(dit=self.dit, vae=vae, te=self.te, tokenizer=self.tokenizer)
        editor = rm.editor_in_memory(parts, options, "lucy")
        editor.sampling_defaults = {"sampler": "unipc", "shift": LUCY_SHIFT}  # what Lucy's scheduler config gives

        def run(steps: int) -> torch.Tensor:
            settings = EditSettings(steps=steps, cfg=self.args.cfg, seed=self.args.seed)
            return edit(editor, self.video, editor.encode_text(PROMPT), settings=settings, fps=16.0).frames

        return run, editor, note

    # ---- measuring -----------------------------------------------------------------------------------------
    def timed(self, fn: Callable[[], torch.Tensor], vae: torch.nn.Module) -> tuple[float, dict, int, torch.Tensor]:
        self.free()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        clock = PhaseClock(self.cuda)
        with clock.hooks(self.te, self.dit, vae):
            self.sync()
            t0 = time.perf_counter()
            out = fn()
            self.sync()
            seconds = time.perf_counter() - t0
        phases = clock.seconds()
        phases["other"] = seconds - sum(phases.values())
        peak = torch.cuda.max_memory_allocated() if self.cuda else 0
        return seconds, phases, peak, out

    def run_variant(self, v: Variant) -> Row:
        vae = self.vae(v.vae_dtype)
        editor, note = None, ""
        if v.name == "diffusers":
            fn = self.diffusers_edit(vae)
            options = "LucyEditPipeline, SDPA, CFG as two passes, VAE fp32"
        else:
            fn, editor, note = self.ours_edit(v, vae)
            options = f"attention={v.attention}, compile={v.compile}, vae_dtype={v.vae_dtype}"
        row = Row(v.name, options, note=note)
        t0 = time.perf_counter()
        fn(self.args.warmup_steps)
        self.sync()
        row.first_call_s = round(time.perf_counter() - t0, 2)
        store: dict = {}
        runs = []
        for _ in range(self.args.repeats):
            with captured_latents(store) if editor is not None else contextlib.nullcontext():
                runs.append(self.timed(lambda: fn(self.args.steps), vae))  # noqa: B023 (called right here)
        out = runs[-1][3]
        row.seconds_all = [round(r[0], 3) for r in runs]
        row.seconds = round(statistics.median(r[0] for r in runs), 3)
        row.phases_s = {k: round(statistics.median(r[1].get(k, 0.0) for r in runs), 3) for k in (*PHASES, "other")}
        row.peak_gib = round(max(r[2] for r in runs) / GIB, 2) if self.cuda else None
        if self.floor is not None:
            row.sampling_floor_s = round(self.floor, 3)
            row.x_floor_sampling = round(row.phases_s["sampling"] / self.floor, 2)
        if v.name in ("diffusers", "ours"):
            self.outputs[v.name] = out
        base = row if v.name == "diffusers" else next((r for r in self.rows if r.variant == "diffusers"), None)
        if base is not None:
            row.vs_baseline = round(row.seconds / base.seconds, 3)
        if "diffusers" in self.outputs and v.name != "diffusers":
            row.psnr_vs_baseline_db = round(psnr(out, self.outputs["diffusers"]), 2)
        if "ours" in self.outputs and v.name != "ours":
            row.psnr_vs_ours_db = round(psnr(out, self.outputs["ours"]), 2)
        if editor is not None and v.vae_dtype != "fp32" and "z" in store:
            row.decode_psnr_vs_fp32_db = round(self.decode_psnr(editor, store["z"], out), 2)
        if v.compile != "off":
            uncompile(self.dit)
        print(json.dumps(row.__dict__), flush=True)
        self.rows.append(row)
        return row

    def decode_psnr(self, editor, z: torch.Tensor, out: torch.Tensor) -> float:
        """The bf16 VAE's decode (the edit's output; no conform padding here) against the fp32 VAE's decode of the
        same latents: the decode's own error, apart from the bf16 encode's effect on sampling."""
        from viva_core.pipeline import decode_latents

        own_vae = editor.vae
        editor.vae = self.vae("fp32")
        try:
            reference = decode_latents(editor, z)
        finally:
            editor.vae = own_vae
        return psnr(out, reference)

    def run(self, names: list[str]) -> list[Row]:
        self.build()
        for name in [n for n in VARIANTS if n in names]:
            try:
                self.run_variant(VARIANTS[name])
            except Exception as e:  # one failing variant (OOM, a compile error, NaN) must not cost the others
                row = Row(name, "", note=f"FAILED: {type(e).__name__}: {str(e)[:300]}")
                print(json.dumps(row.__dict__), flush=True)
                self.rows.append(row)
                uncompile(self.dit)
                self.free()
        return self.rows


def table(bench: Bench) -> str:
    def f(x, fmt="{:.2f}"):
        return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)

    a = bench.args
    head = (
        f"{torch.cuda.get_device_name() if bench.cuda else 'CPU (--shape tiny)'}; {bench.spec['label']}; "
        f"{bench.frames}x{bench.height}x{bench.width} -> latent {'x'.join(map(str, bench.latent))}, "
        f"{bench.tokens} tokens + {TEXT_TOKENS} text; {a.steps} steps, CFG {a.cfg:g}, UniPC shift {LUCY_SHIFT:g}, "
        f"seed {a.seed}; {bench.flops_forward / 1e12:.2f} TFLOP per DiT forward"
    )
    if bench.rate:
        head += f"; bf16 matmul {bench.rate / 1e12:.0f} TFLOP/s; sampling floor {bench.floor:.2f} s"
    lines = [
        head,
        f"seconds: median of {a.repeats} edit(s) after a {a.warmup_steps}-step warm-up edit (`first call`).",
        "",
        "| variant | s | vs baseline | x floor (sampling) | peak GiB | PSNR vs baseline dB | phases s (text / enc / "
        "sampling / dec / other) | first call s | notes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in bench.rows:
        ph = " / ".join(f(r.phases_s.get(k)) for k in (*PHASES, "other"))
        notes = [r.note] if r.note else []
        if r.psnr_vs_ours_db is not None and r.variant != "diffusers":
            notes.append(f"PSNR vs ours {f(r.psnr_vs_ours_db)} dB")
        if r.decode_psnr_vs_fp32_db is not None:
            notes.append(f"decode vs fp32 VAE {f(r.decode_psnr_vs_fp32_db)} dB")
        lines.append(
            f"| {r.variant} ({r.options}) | {f(r.seconds)} | {f(r.vs_baseline, '{:.3f}')} | "
            f"{f(r.x_floor_sampling)} | {f(r.peak_gib)} | {f(r.psnr_vs_baseline_db)} | {ph} | "
            f"{f(r.first_call_s, '{:.1f}')} | {'; '.join(notes)} |"
        )
    lines += [f"note: {n}" for n in bench.notes]
    return "\n".join(lines)


def parse(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=("real", "tiny"), default="real")
    p.add_argument("--variants", default="all", help=f"comma-separated, or 'all'; of {', '.join(VARIANTS)}")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup-steps", type=int, default=2, help="steps of each variant's warm-up edit")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--cfg", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frames", type=int, default=0, help="0: 81 (tiny: 9)")
    p.add_argument("--height", type=int, default=0, help="0: 480 (tiny: 64)")
    p.add_argument("--width", type=int, default=0, help="0: 832 (tiny: 64)")
    p.add_argument("--json", default=None, help="also write the rows and the setup to this file")
    args = p.parse_args(argv)
    args.names = rm.chosen(p, args.variants, VARIANTS, "variant(s)", args.shape)
    args.command = "PYTHONPATH=. python bench/bench_edit.py " + " ".join(sys.argv[1:] if argv is None else argv)
    return args


def main(argv: Optional[list[str]] = None) -> Bench:
    args = parse(argv)
    bench = Bench(args)
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    if not bench.cuda:  # tiny ops gain nothing from threads; on a shared CPU, spinning OpenMP threads cost 10-30x
        torch.set_num_threads(1)
    try:
        bench.run(args.names)
    finally:
        torch.set_num_threads(threads)
    print(f"\n{table(bench)}\n\ntotal {time.perf_counter() - t0:.0f} s; reproduce: {args.command}", flush=True)
    if args.json:
        meta = dict(
            command=args.command,
            device=torch.cuda.get_device_name() if bench.cuda else "cpu",
            model=bench.spec["label"],
            video=[bench.frames, bench.height, bench.width],
            latent=list(bench.latent),
            tokens=bench.tokens,
            steps=args.steps,
            cfg=args.cfg,
            shift=LUCY_SHIFT,
            tflop_per_forward=bench.flops_forward / 1e12,
            matmul_tflops=bench.rate / 1e12 if bench.rate else None,
            sampling_floor_s=bench.floor,
            notes=bench.notes,
            torch=torch.__version__,
        )
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": [r.__dict__ for r in bench.rows]}, indent=2))
    return bench


if __name__ == "__main__":
    main()
