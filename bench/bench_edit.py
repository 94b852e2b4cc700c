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
  fast       sdpa_cudnn + vae bf16 (best without compile: the step cache's reference)
  fast+fbcT  fast with the step cache (viva_core.step_cache, diffusers' First Block Cache) at threshold T (0.05,
             0.1, 0.2). Each also reports its edit's PSNR and SSIM against the uncached variant before the '+' (run
             first, added when not chosen) and how many DiT calls ran all blocks
  compile    compile=blocks
  best       sdpa_cudnn + vae bf16 + compile=blocks
  best_fa4   best with attention=flash4 (the flash-attn-4 package installed)
  best+fbcT  best with the step cache at threshold T (0.1, 0.2, 0.5, 1, 2: random weights change more between steps
             than trained ones, so the larger ones show the time a skipped call saves at this shape)
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

Best-of-N (`--best-of N`, default 0 = off; issue 13, target 4: N=4 in at most 3.3x one edit): after the variants,
one more measurement with the editor options of the last variant of ours that ran without failing (`best` when it
ran; `ours` when only `diffusers` ran) and a judge: Qwen2.5-VL-3B-shaped (random weights, bf16, resident beside
the editor, ~7 GiB; the tiny qwen3b on `--shape tiny`), `viva_core.judge.Judge` defaults. A warm-up best_of_n
(n=1, `--warmup-steps`), then `--repeats` times: one plain edit (`Editor.encode_text` + `pipeline.edit`, as the
`ours` variant) and `viva_core.best_of_n.best_of_n(n=N)` with `encode_text(PROMPT)` inside the timed region too,
same settings (seeds seed..seed+N-1), judged on 4 frames. best_of_n encodes the source and CFG's negative once and
keeps only the best video; the judge's share is timed by wrapping `Judge.score` (N calls). Reported: both seconds,
their ratio, the judge seconds, the phase split of both (sampling summed over each candidate's run of DiT calls),
the calls of each phase in the timed best-of-N (1 VAE encode, N decodes, N judge calls), peak allocated GiB, and the
`unshared` ratio (N x one edit + judge) / one edit, what N separate edits plus judging would cost. With
`--best-of-batch K` the same best-of-N is timed again with K candidates sampled together (`best_of_n(batch=K)`: one
DiT call per step for K candidates, decoded and judged one by one; its batched shapes warmed first), reported beside
it with its peak and how far its best video is from the one-at-a-time run's. With `--best-of-previews T` it is timed
again judging step-cached previews (first_block T) and rendering only the winning seed (`best_of_n(previews=...)`),
reported with the seed the previews picked beside the full candidates' pick.

Defaults (30 steps, 1 repeat, 2-step warm-ups, all twelve variants) take ~7-8 min on an H200 (DiT + UMT5 + VAE
resident, ~25 GiB); `--repeats 2` adds ~1.5 min; `--best-of 4` adds about six edits plus the judge's build and
calls. `--shape tiny` runs the same code on tiny configs on the CPU with one torch thread (tests/test_bench_edit.py:
baseline and ours must agree).

    PYTHONPATH=. python bench/bench_edit.py [--steps 30 --repeats 1 --variants diffusers,ours,best --json out.json]
    PYTHONPATH=. python bench/bench_edit.py --variants best --best-of 4 [--best-of-batch 2] [--best-of-previews 0.5]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import math
import shutil
import statistics
import sys
import tempfile
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
BEST_OF_TARGET = 3.3  # issue 13, target 4: best-of-4 in at most 3.3x the time of one edit


@dataclass(frozen=True)
class Variant:
    name: str
    attention: str = "sdpa"
    compile: str = "off"
    vae_dtype: str = "fp32"
    step_cache: Optional[float] = None  # first_block threshold (viva_core.step_cache); None: off

    @property
    def base(self) -> str:
        """The uncached variant this one's edit is compared with (itself without a step cache)."""
        return self.name.partition("+")[0]

    def options(self) -> str:
        cache = "" if self.step_cache is None else f", step_cache=first_block:{self.step_cache:g}"
        return f"attention={self.attention}, compile={self.compile}, vae_dtype={self.vae_dtype}{cache}"


FAST = dict(attention="sdpa_cudnn", vae_dtype="bf16")


VARIANTS = {
    v.name: v
    for v in (
        Variant("diffusers"),
        Variant("ours"),
        Variant("cudnn", attention="sdpa_cudnn"),
        Variant("vae_bf16", vae_dtype="bf16"),
        Variant("fast", **FAST),
        *(Variant(f"fast+fbc{t:g}", **FAST, step_cache=t) for t in (0.05, 0.1, 0.2)),
        Variant("compile", compile="blocks"),
        Variant("best", attention="sdpa_cudnn", vae_dtype="bf16", compile="blocks"),
        Variant("best_fa4", attention="flash4", vae_dtype="bf16", compile="blocks"),  # flash-attn-4 installed
        *(
            Variant(f"best+fbc{t:g}", attention="sdpa_cudnn", vae_dtype="bf16", compile="blocks", step_cache=t)
            for t in (0.1, 0.2, 0.5, 1, 2)
        ),
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
    psnr_vs_uncached_db: Optional[float] = None  # step cache: the edit vs its uncached variant's (Variant.base)
    ssim_vs_uncached: Optional[float] = None
    dit_calls_computed: Optional[str] = None  # step cache: "computed/calls" DiT calls of the timed edit
    computed_fraction: Optional[float] = None
    note: str = ""


@dataclass
class BestOfRow:
    """One edit against best-of-N (`--best-of N`) with the same editor options and settings, in the same process."""

    n: int
    variant: str  # whose editor options
    options: str
    judge: str = ""  # the judge's VLM and its weights
    edit_s: float = math.nan  # one plain edit (text encode included), median of the repeats
    best_of_s: float = math.nan  # best_of_n(n) (text encode included), median
    ratio: Optional[float] = None  # best_of_s / edit_s
    unshared_ratio: Optional[float] = None  # (n x edit_s + judge_s) / edit_s: n separate edits, each judged
    judge_s: Optional[float] = None  # the n Judge.score calls of the timed best-of-N, median
    edit_s_all: list = field(default_factory=list)
    best_of_s_all: list = field(default_factory=list)
    edit_phases_s: dict = field(default_factory=dict)
    best_of_phases_s: dict = field(default_factory=dict)  # + "judge"; sampling summed over the candidates
    edit_calls: dict = field(default_factory=dict)  # calls per phase (sampling: DiT forwards)
    best_of_calls: dict = field(default_factory=dict)
    edit_peak_gib: Optional[float] = None  # both peaks count the judge's weights (resident through both)
    peak_gib: Optional[float] = None  # best-of-N, editor and judge resident
    judge_build_s: float = math.nan
    first_call_s: float = math.nan  # the warm-up best_of_n (n=1, warmup_steps)
    seeds: list = field(default_factory=list)
    overall: list = field(default_factory=list)  # the judge's overall score of each seed (random weights)
    best_seed: Optional[int] = None
    best_vs_edit_psnr_db: Optional[float] = None  # when the best seed is the plain edit's: inf = the same video
    batch: int = 1  # --best-of-batch: candidates sampled together in the batched run (1: none)
    batched_s: Optional[float] = None  # best_of_n(n, batch=batch), median
    batched_ratio: Optional[float] = None  # batched_s / edit_s
    batched_peak_gib: Optional[float] = None
    batched_vs_sequential_psnr_db: Optional[float] = None  # the best video of each (the same seed up to rounding)
    previews_threshold: Optional[float] = None  # --best-of-previews: candidates judged as step-cached previews
    previews_s: Optional[float] = None  # best_of_n(n, previews=first_block:T), median: previews + the winner's render
    previews_ratio: Optional[float] = None  # previews_s / edit_s
    previews_best_seed: Optional[int] = None  # the seed the previews picked (best_seed: the full candidates' pick)
    previews_computed: Optional[str] = None  # "computed/calls": the previews' DiT calls that ran all blocks
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
        self.order: list[str] = []  # the phase of every call, in call order

    def _now(self):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def start(self, phase: str) -> None:
        self.order.append(phase)
        self.marks.setdefault(phase, []).append([self._now(), None])

    def end(self, phase: str) -> None:
        self.marks[phase][-1][1] = self._now()

    def _span(self, a, b) -> float:
        return a.elapsed_time(b) / 1e3 if self.cuda else b - a

    def seconds(self) -> dict[str, float]:
        """Sum of each phase's calls; sampling sums the runs of consecutive DiT calls (no other phase between), each
        from its first call's start to its last one's end: one run per edit (a best-of-N has one per candidate)."""
        out = {p: sum(self._span(a, b) for a, b in marks) for p, marks in self.marks.items() if p != "sampling"}
        runs: list[list[int]] = []  # [first, last] index into marks["sampling"] of each run
        i, previous = 0, None
        for phase in self.order:
            if phase == "sampling":
                if previous == "sampling":
                    runs[-1][1] = i
                else:
                    runs.append([i, i])
                i += 1
            previous = phase
        if runs:
            marks = self.marks["sampling"]
            out["sampling"] = sum(self._span(marks[a][0], marks[b][1]) for a, b in runs)
        return out

    def calls(self) -> dict[str, int]:
        return {phase: len(marks) for phase, marks in self.marks.items()}

    @contextlib.contextmanager
    def hooks(self, te: torch.nn.Module, dit: torch.nn.Module, vae: torch.nn.Module, judge=None):
        """`judge` (a viva_core.judge.Judge): its score calls are the phase "judge"."""
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
        if judge is not None:
            judge.score = wrap(judge.score, "judge")
        try:
            yield self
        finally:
            for h in handles:
                h.remove()
            del vae.encode, vae.decode  # the class's methods again
            if judge is not None:
                del judge.score


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
    """Undo `compile_dit` so the next variant compiles with its own attention backend."""
    from viva_core.editor import uncompile_dit

    uncompile_dit(module)
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
        self.best_of: Optional[BestOfRow] = None
        self.best_of_result = None  # the timed best_of_n's BestOfN (the last repeat)
        self.best_of_editor = None  # the editor it ran with
        self.last_edit = None  # ours_edit's last EditResult (its step cache count)

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
        from viva_core.step_cache import StepCache

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
        if v.step_cache is not None:
            editor = editor.with_step_cache(StepCache("first_block", v.step_cache))

        def run(steps: int) -> torch.Tensor:
            settings = EditSettings(steps=steps, cfg=self.args.cfg, seed=self.args.seed)
            self.last_edit = edit(editor, self.video, editor.encode_text(PROMPT), settings=settings, fps=16.0)
            return self.last_edit.frames

        return run, editor, note

    # ---- measuring -----------------------------------------------------------------------------------------
    def timed(
        self, fn: Callable[[], object], vae: torch.nn.Module, judge=None
    ) -> tuple[float, dict, int, object, dict]:
        """Seconds (synchronized), phase seconds (+ "other"), peak allocated bytes, fn's result, calls per phase."""
        self.free()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        clock = PhaseClock(self.cuda)
        with clock.hooks(self.te, self.dit, vae, judge):
            self.sync()
            t0 = time.perf_counter()
            out = fn()
            self.sync()
            seconds = time.perf_counter() - t0
        phases = clock.seconds()
        phases["other"] = seconds - sum(phases.values())
        peak = torch.cuda.max_memory_allocated() if self.cuda else 0
        return seconds, phases, peak, out, clock.calls()

    def run_variant(self, v: Variant) -> Row:
        vae = self.vae(v.vae_dtype)
        editor, note = None, ""
        if v.name == "diffusers":
            fn = self.diffusers_edit(vae)
            options = "LucyEditPipeline, SDPA, CFG as two passes, VAE fp32"
        else:
            fn, editor, note = self.ours_edit(v, vae)
            options = v.options()
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
        if v.name in ("diffusers", "ours") or any(VARIANTS[n].base == v.name != n for n in self.args.names):
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
        if v.step_cache is not None:
            from viva_core.eval.metrics import ssim

            count = self.last_edit.step_cache
            row.dit_calls_computed = f"{count.computed}/{count.calls}"
            row.computed_fraction = round(count.computed / count.calls, 3)
            if v.base in self.outputs:
                row.psnr_vs_uncached_db = round(psnr(out, self.outputs[v.base]), 2)
                row.ssim_vs_uncached = round(ssim(out.float().cpu(), self.outputs[v.base].float().cpu()), 4)
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
        if self.args.best_of > 0:
            v = self.best_of_variant()
            try:
                self.run_best_of(v, self.args.best_of)
            except Exception as e:
                self.best_of = BestOfRow(
                    self.args.best_of, v.name, "", note=f"FAILED: {type(e).__name__}: {str(e)[:300]}"
                )
                print(json.dumps(self.best_of.__dict__), flush=True)
                uncompile(self.dit)
                self.free()
        return self.rows

    # ---- best-of-N -----------------------------------------------------------------------------------------
    def best_of_variant(self) -> Variant:
        """The last variant of ours that ran without failing (the order puts `best` last), else `ours`."""
        ran = [r.variant for r in self.rows if r.variant != "diffusers" and not r.note.startswith("FAILED")]
        return VARIANTS[ran[-1] if ran else "ours"]

    def build_judge(self, folder: Path):
        """A Qwen2.5-VL-3B-shaped judge (random weights) wrapped as `load_vlm` wraps a loaded model."""
        from viva_core.judge import Judge

        spec = rm.SHAPES[self.args.shape]["qwen3b"]
        torch.manual_seed(1)
        tokenizer = rm.qwen_tokenizer()
        model = rm.build_vlm_model(spec["vlm"], tokenizer, self.device, self.dtype)
        rm.write_vlm_files(folder, model, tokenizer)
        weights = rm.nbytes(model)
        vlm = rm.vlm_in_memory(model, folder, self.device, self.dtype)
        return Judge(vlm), f"{spec['label']} {self.dtype_name}, {weights / GIB:.3g} GiB"

    def run_best_of(self, v: Variant, n: int) -> BestOfRow:
        from viva_core.best_of_n import best_of_n
        from viva_core.settings import EditSettings
        from viva_core.step_cache import StepCache
        from viva_core.video import Video

        a = self.args
        vae = self.vae(v.vae_dtype)
        fn, editor, note = self.ours_edit(v, vae)
        row = BestOfRow(n, v.name, v.options(), note=note)
        folder = Path(tempfile.mkdtemp(prefix="viva_bench_edit_judge_"))
        try:
            t0 = time.perf_counter()
            judge, row.judge = self.build_judge(folder)
            self.sync()
            row.judge_build_s = round(time.perf_counter() - t0, 1)
            print(json.dumps({"built": row.judge, "seconds": row.judge_build_s}), flush=True)
            video = Video(self.video, fps=16.0)

            previews = None if a.best_of_previews is None else StepCache("first_block", a.best_of_previews)

            def run(n_: int, steps: int, batch: int = 1, previews: Optional[StepCache] = None):
                settings = EditSettings(steps=steps, cfg=a.cfg, seed=a.seed)
                cond = editor.encode_text(PROMPT)
                return best_of_n(
                    editor,
                    judge,
                    video,
                    cond,
                    rm.INSTRUCTION,
                    n=n_,
                    settings=settings,
                    num_frames=4,
                    batch=batch,
                    previews=previews,
                )

            t0 = time.perf_counter()
            run(1, a.warmup_steps)  # kernels, compile and the judge warm
            self.sync()
            row.first_call_s = round(time.perf_counter() - t0, 2)
            edits, bests, batched, previewed = [], [], [], []
            row.batch = min(a.best_of_batch, n)
            if row.batch > 1:
                run(row.batch, a.warmup_steps, row.batch)  # the batched shapes warm (compile, kernels)
            for _ in range(a.repeats):
                edits.append(self.timed(lambda: fn(a.steps), vae))
                bests.append(self.timed(lambda: run(n, a.steps), vae, judge))
                if row.batch > 1:
                    batched.append(self.timed(lambda: run(n, a.steps, row.batch), vae, judge))
                if previews is not None:
                    previewed.append(self.timed(lambda: run(n, a.steps, 1, previews), vae, judge))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
            if v.compile != "off":
                uncompile(self.dit)
        result = bests[-1][3]
        row.edit_s_all = [round(r[0], 3) for r in edits]
        row.best_of_s_all = [round(r[0], 3) for r in bests]
        row.edit_s = round(statistics.median(r[0] for r in edits), 3)
        row.best_of_s = round(statistics.median(r[0] for r in bests), 3)
        row.edit_phases_s = {
            k: round(statistics.median(r[1].get(k, 0.0) for r in edits), 3) for k in (*PHASES, "other")
        }
        row.best_of_phases_s = {
            k: round(statistics.median(r[1].get(k, 0.0) for r in bests), 3) for k in (*PHASES, "judge", "other")
        }
        row.edit_calls, row.best_of_calls = edits[-1][4], bests[-1][4]
        row.judge_s = row.best_of_phases_s["judge"]
        row.ratio = round(row.best_of_s / row.edit_s, 3)
        row.unshared_ratio = round((n * row.edit_s + row.judge_s) / row.edit_s, 3)
        if self.cuda:
            row.edit_peak_gib = round(max(r[2] for r in edits) / GIB, 2)
            row.peak_gib = round(max(r[2] for r in bests) / GIB, 2)
        row.seeds = list(result.seeds)
        row.overall = [round(j.overall, 4) for j in result.judgements]
        row.best_seed = result.best.seed
        if row.best_seed == a.seed:
            row.best_vs_edit_psnr_db = round(psnr(result.best.frames, edits[-1][3]), 2)
        if batched:
            row.batched_s = round(statistics.median(r[0] for r in batched), 3)
            row.batched_ratio = round(row.batched_s / row.edit_s, 3)
            if self.cuda:
                row.batched_peak_gib = round(max(r[2] for r in batched) / GIB, 2)
            row.batched_vs_sequential_psnr_db = round(psnr(batched[-1][3].best.frames, result.best.frames), 2)
        if previewed:
            row.previews_threshold = a.best_of_previews
            row.previews_s = round(statistics.median(r[0] for r in previewed), 3)
            row.previews_ratio = round(row.previews_s / row.edit_s, 3)
            row.previews_best_seed = previewed[-1][3].best.seed
            counted = previewed[-1][3].previews
            row.previews_computed = f"{counted.computed}/{counted.calls}"
        self.best_of, self.best_of_result, self.best_of_editor = row, result, editor
        print(json.dumps(row.__dict__), flush=True)
        judge = None
        self.free()
        return row


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
        if r.dit_calls_computed is not None:
            base = VARIANTS[r.variant].base
            notes.append(
                f"step cache: {r.dit_calls_computed} DiT calls computed; vs uncached {base}: PSNR "
                f"{f(r.psnr_vs_uncached_db)} dB, SSIM {f(r.ssim_vs_uncached, '{:.4f}')}"
            )
        lines.append(
            f"| {r.variant} ({r.options}) | {f(r.seconds)} | {f(r.vs_baseline, '{:.3f}')} | "
            f"{f(r.x_floor_sampling)} | {f(r.peak_gib)} | {f(r.psnr_vs_baseline_db)} | {ph} | "
            f"{f(r.first_call_s, '{:.1f}')} | {'; '.join(notes)} |"
        )
    if bench.best_of is not None:
        lines += ["", *best_of_table(bench.best_of, a, f)]
    lines += [f"note: {n}" for n in bench.notes]
    return "\n".join(lines)


def best_of_table(r: BestOfRow, a: argparse.Namespace, f: Callable) -> list[str]:
    target = f" (issue 13 target 4: best-of-4 <= {BEST_OF_TARGET:g}x one edit)" if r.n == 4 else ""
    ph = " / ".join(f(r.edit_phases_s.get(k)) for k in (*PHASES, "other"))
    ph_n = " / ".join(f(r.best_of_phases_s.get(k)) for k in (*PHASES, "judge", "other"))
    calls = " / ".join(str(r.best_of_calls.get(k, 0)) for k in (*PHASES, "judge"))
    notes = [r.note] if r.note else []
    if r.best_seed is not None:
        notes.append(f"best seed {r.best_seed} of {r.seeds}")
    if r.best_vs_edit_psnr_db is not None:
        notes.append(f"its video vs the plain edit {f(r.best_vs_edit_psnr_db)} dB")
    if r.batched_s is not None:
        notes.append(
            f"candidates sampled {r.batch} at a time: {f(r.batched_s)} s, ratio {f(r.batched_ratio, '{:.3f}')}, "
            f"peak {f(r.batched_peak_gib)} GiB, best video vs the one-at-a-time run's "
            f"{f(r.batched_vs_sequential_psnr_db)} dB"
        )
    if r.previews_s is not None:
        notes.append(
            f"step-cached previews (first_block {r.previews_threshold:g}, {r.previews_computed} DiT calls computed) "
            f"judged, only the winner rendered: {f(r.previews_s)} s, ratio {f(r.previews_ratio, '{:.3f}')}, "
            f"picked seed {r.previews_best_seed} (the full candidates: {r.best_seed})"
        )
    return [
        f"Best-of-{r.n}{target}: {r.variant} ({r.options}); judge {r.judge or 'n/a'}, 4 frames of each video; "
        f"seconds: median of {a.repeats}, both with the prompt's text encode; unshared = ({r.n} x one edit + judge) "
        "/ one edit.",
        "",
        "| N | one edit s | best-of-N s | ratio | unshared ratio | judge s | one edit phases s (text / enc / sampling "
        "/ dec / other) | best-of-N phases s (text / enc / sampling / dec / judge / other) | best-of-N calls (text / "
        "enc / DiT / dec / judge) | peak GiB (edit / best-of-N) | first call s | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {r.n} | {f(r.edit_s)} | {f(r.best_of_s)} | {f(r.ratio, '{:.3f}')} | {f(r.unshared_ratio, '{:.3f}')} | "
        f"{f(r.judge_s)} | {ph} | {ph_n} | {calls} | {f(r.edit_peak_gib)} / {f(r.peak_gib)} | "
        f"{f(r.first_call_s, '{:.1f}')} | {'; '.join(notes)} |",
    ]


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
    p.add_argument(
        "--best-of",
        type=int,
        default=0,
        metavar="N",
        help="after the variants, time best-of-N (with a 3B-shaped judge) against one edit; 0: off",
    )
    p.add_argument(
        "--best-of-previews",
        type=float,
        default=None,
        metavar="T",
        help="also time best-of-N judging step-cached previews (first_block:T) and rendering only the winner "
        "(best_of_n(previews=...); docs/small_models.md, section 37)",
    )
    p.add_argument(
        "--best-of-batch",
        type=int,
        default=1,
        metavar="K",
        help="also time best-of-N with K candidates sampled together (best_of_n(batch=K)); 1: only one at a time",
    )
    p.add_argument("--json", default=None, help="also write the rows and the setup to this file")
    args = p.parse_args(argv)
    if args.best_of < 0:
        p.error(f"--best-of must be >= 0, got {args.best_of}")
    if args.best_of_batch < 1:
        p.error(f"--best-of-batch must be >= 1, got {args.best_of_batch}")
    args.names = rm.chosen(p, args.variants, VARIANTS, "variant(s)", args.shape)
    args.names += [b for b in dict.fromkeys(VARIANTS[n].base for n in args.names) if b not in args.names]
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
        best_of = bench.best_of.__dict__ if bench.best_of is not None else None
        rows = [r.__dict__ for r in bench.rows]
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows, "best_of": best_of}, indent=2))
    return bench


if __name__ == "__main__":
    main()
