"""`viva` command line: edit and judge videos from the shell with the same core calls the ComfyUI nodes make."""

from __future__ import annotations

import argparse
import atexit
import gc
import logging
import math
import os
import sys
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

# Idle OpenMP threads sleep instead of spinning (set before torch loads; a user's own value wins): spinning threads
# take the cores other processes need (on 2 cores beside one busy process, the README's CPU demo takes 19.5 s with
# them, 13-14 s without).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .errors import InputError, OutputPathError, VivaError  # noqa: E402 (after the OpenMP setting)
from .settings import BUNDLED_STEPS, DEFAULTS, SAMPLERS, EditSettings  # noqa: E402
from .train.config import DEVICE  # noqa: E402

GC_THRESHOLD = 10_000  # allocations between cyclic-GC passes while a command runs (main)
GC_MIDDLE_THRESHOLD = 100  # young passes between passes over the middle generation too, while a command runs
SEED_MAX = 2**63 - 1  # torch generators take 64-bit seeds; best-of-N adds the candidate index


# ---------------------------------------------------------------- argument validators (argparse `type=`)
# argparse prints "argument --NAME: <message>" and exits 2, so each message only says what is wrong and the fix.


def number(
    kind: type, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False
) -> Callable[[str], int | float]:
    """An int/float argument that must be finite and within [lo, hi] ((lo, hi] with lo_open)."""
    noun = "an integer" if kind is int else "a number"
    want = noun + ("" if lo is None else f" {'>' if lo_open else '>='} {lo}") + ("" if hi is None else f" and <= {hi}")

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"'{text}' is not {noun}; give {want}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"'{text}' is not a finite number; give {want}")
        if (lo is not None and (value <= lo if lo_open else value < lo)) or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"{text} is out of range; give {want}")
        return value

    parse.__name__ = kind.__name__
    return parse


POSITIVE_INT = number(int, 1)
COUNT = number(int, 0)
SEED = number(int, 0, SEED_MAX)


def device_arg(text: str) -> str:
    """--device: a name torch understands, checked before anything loads (torch.device('banana') tracebacks)."""
    if not DEVICE.match(text):
        raise argparse.ArgumentTypeError(f"'{text}' is not a device; use auto, cpu, cuda, cuda:N or mps")
    return text


def text_arg(text: str) -> str:
    """Free text (instructions, prompts): invalid UTF-8 in argv arrives as lone surrogates and would fail deep in
    a tokenizer."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = text[e.start].encode("utf-8", "surrogateescape")
        raise argparse.ArgumentTypeError(
            f"is not valid UTF-8 (byte {bad[:1].hex()} at character {e.start}); retype it or convert it to UTF-8"
        ) from None
    return text


def instruction_arg(text: str) -> str:
    text = text_arg(text)
    if not text.strip():
        raise argparse.ArgumentTypeError('is empty; say what to change, e.g. "make the car red"')
    return text


def lora_arg(text: str) -> str:
    """FILE[:STRENGTH]: a strength that is not a finite number is an error, not part of the file name
    (unless a file of exactly that name exists)."""
    path, strength = parse_lora_arg(text)
    _, sep, tail = text.rpartition(":")
    if path == text and sep and tail and not tail.startswith(("\\", "/")) and not Path(text).exists():
        raise argparse.ArgumentTypeError(f"'{text}': strength '{tail}' is not a number; write FILE:0.8")
    if not math.isfinite(strength):
        raise argparse.ArgumentTypeError(f"'{text}': the strength must be a finite number, e.g. FILE:0.8")
    return text


def step_cache_arg(text: str):
    """first_block[:THRESHOLD] | off -> a StepCache or None (viva_core.step_cache.parse_step_cache)."""
    from .step_cache import parse_step_cache

    try:
        return parse_step_cache(text)
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


# ---------------------------------------------------------------- output paths


def _same(a: Path, b: Path) -> bool:
    try:
        return a == b or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def check_output(output: str, inputs: Iterable[Optional[str]], arg: str, *, folder: bool = False) -> None:
    """An output must not be (or lie inside) an input — `viva edit A -o A` would replace the source with the
    edit — and must be the right kind (a file where a folder exists, or the reverse, fails late otherwise)."""
    out = Path(output).expanduser().resolve()
    for item in inputs:
        if not item:
            continue
        src = Path(item).expanduser().resolve()
        if _same(out, src) or (src.is_dir() and src in out.parents):
            raise OutputPathError(
                f"{arg} {output}: is the input {item}"
                + ("" if _same(out, src) else " (inside it)")
                + "; writing there would destroy it. Choose another output path."
            )
    if folder and out.exists() and not out.is_dir():
        raise OutputPathError(f"{arg} {output}: is a file; name a folder (it is created if missing).")
    if not folder and out.is_dir():
        raise OutputPathError(f"{arg} {output}: is a folder; name a file inside it.")


def _is_judge_report(path: Path) -> bool:
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(data, dict) and isinstance(data.get("scores"), dict) and "overall" in data


def _tqdm_progress(desc: str):
    """A ProgressFn drawing a tqdm bar, opened at the first report (when the total is known: no '0step' line)."""
    from tqdm.auto import tqdm

    bars: list = []

    def progress(done: int, total: int, preview=None) -> None:
        if not bars:
            bars.append(tqdm(desc=desc, unit="step", leave=False, total=total))
        bars[0].total = total
        bars[0].update(done - bars[0].n)  # throttled by tqdm's mininterval; refresh() drew a line per call in logs

    progress.close = lambda: bars and bars[0].close()  # type: ignore[attr-defined]
    return progress


def parse_lora_arg(text: str) -> tuple[str, float]:
    """'file.safetensors:0.8' -> (file, 0.8); no ':strength' means 1.0. Windows drive letters survive."""
    path, sep, strength = text.rpartition(":")
    if sep and path and not strength.startswith(("\\", "/")):
        try:
            return path, float(strength)
        except ValueError:
            pass
    return text, 1.0


def _editor_options(args: argparse.Namespace):
    from .editor import EditorOptions

    return EditorOptions(
        dtype=args.dtype,
        device=args.device,
        offload=args.offload,
        attention=args.attention,
        compile=args.compile,
        fp8_storage=args.fp8,
        vae_tiling=args.vae_tiling,
    )


def load_editor_from_args(args: argparse.Namespace, encode_first: bool = False):
    from .editor import load_editor

    src = Path(args.editor)
    if src.is_dir():
        return load_editor(
            str(src), text_encoder_folder=args.text_encoder, options=_editor_options(args), encode_first=encode_first
        )
    if src.suffix == ".safetensors" or src.suffix in (".pt", ".ckpt", ".bin", ".pth"):
        return load_editor(
            transformer_file=str(src),
            vae_file=args.vae,
            text_encoder_folder=args.text_encoder,
            options=_editor_options(args),
            encode_first=encode_first,
        )
    raise InputError(f"{src}: --editor must be a diffusers folder or a .safetensors DiT file.")


def _candidates_label(first: int, batch: int, n: int) -> str:
    """The progress bar's label of the best-of-N batch starting at candidate `first` (0-based); `first` = n: the
    winner's full render after judging previews."""
    if first >= n:
        return "rendering the best"
    last = min(n, first + batch)
    return f"candidate {first + 1}/{n}" if last == first + 1 else f"candidates {first + 1}-{last}/{n}"


def load_instructor_from_args(args: argparse.Namespace):
    """(VLM or None, conditioning mode): --instructor with --refiner gives instructor tokens, without it a rewrite."""
    if not args.instructor:
        return None, "text"
    from .vlm import load_vlm

    vlm = load_vlm(args.instructor, dtype=args.vlm_dtype, device=args.device)
    return vlm, "instructor" if args.refiner else "rewrite"


def load_judge_from_args(args: argparse.Namespace):
    from .judge import Judge
    from .vlm import load_vlm

    return Judge(load_vlm(args.judge, dtype=args.vlm_dtype, device=args.device))


def use_bundled_models(args: argparse.Namespace) -> None:
    """No --editor: the small bundled editor, conditioned on text (and the bundled judge when --judge is given
    as 'bundled'). --instructor still applies, with the user's own VLM and refiner."""
    from . import bundled

    args.source = bundled.source_path(args.source)
    if getattr(args, "judge", None) == "bundled":
        args.judge = bundled.path(bundled.JUDGE)
    default_lora = args.lora is None and not args.editor
    args.lora = resolve_loras(args.lora, bundled_default=default_lora)
    if args.editor:
        return
    args.editor = bundled.path(bundled.EDITOR)
    if args.dtype == "bf16" and args.device in ("auto", "cpu") and not _cuda():
        # bf16 matmuls are slow on CPUs (the small models are tiny, so fp32 costs little memory), except with AMX:
        # there the editor keeps bf16, its VAE too (vae_dtype_for). README command 1 on 2 cores: sampling 3.5 -> 2.1
        # s, decode 0.62 -> 0.27 s; 32 held-out clips: edits 51 dB (median PSNR) from fp32's, EA 0.285 either way.
        # The judge stays fp32: its scores are unchanged.
        from .runtime import bf16_is_fast

        args.vlm_dtype = "fp32"
        if not bf16_is_fast("cpu"):
            args.dtype = "fp32"
    lora = " and its Edit-GRPO LoRA (--lora none: the editor alone)" if default_lora else ""
    print(
        f"using the bundled small models{lora} (64x64 synthetic shapes world); pass --editor for a real editor",
        file=sys.stderr,
    )


def resolve_loras(specs: list[str] | None, bundled_default: bool) -> list[str]:
    """The --lora list with 'bundled' made the bundled editor's Edit-GRPO LoRA (keeping its :STRENGTH) and 'none'
    made no LoRA; with no --lora, that LoRA alone when `bundled_default` (the bundled editor in `viva edit`, which
    edits better with it: docs/small_models.md, section 61), else none."""
    from . import bundled

    if specs is None:
        return [bundled.path(bundled.EDITOR_LORA)] if bundled_default else []
    if bundled.NO_LORA in specs:
        if len(specs) > 1:
            raise InputError("--lora none means no LoRA at all; leave out the other --lora flags.")
        return []
    resolved = []
    for spec in specs:
        path, strength = parse_lora_arg(spec)
        resolved.append(f"{bundled.path(bundled.EDITOR_LORA)}:{strength:g}" if path == bundled.LORA_ALIAS else spec)
    return resolved


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def cmd_edit(args: argparse.Namespace) -> int:
    from .conditioning import build_conditioning, negative_conditioning
    from .pipeline import edit
    from .runtime import available_memory_bytes
    from .video import read_image, read_video, write_video

    use_bundled_models(args)
    if args.seed + args.candidates - 1 > SEED_MAX:
        raise InputError(f"--seed {args.seed} with --candidates {args.candidates} passes {SEED_MAX}; lower --seed.")
    if args.candidate_previews is not None and not (args.judge and args.candidates > 1):
        raise InputError("--candidate-previews goes with best-of-N: --judge and --candidates N (N > 1).")
    check_output(
        args.output,
        [
            args.source,
            args.reference,
            args.editor,
            args.vae,
            args.text_encoder,
            args.instructor,
            args.refiner,
            args.judge,
            *(parse_lora_arg(x)[0] for x in args.lora or []),
        ],
        "--output",
    )
    budget = args.max_bytes or available_memory_bytes() // 2
    video = read_video(args.source, max_frames=args.max_frames, stride=args.stride, max_bytes=budget)
    # one-shot: the prompt and the negative are encoded before the DiT and VAE go onto the device, then the text
    # encoder (and the instructor VLM) are dropped: none of them is on the device while sampling (release_text_encoder)
    editor = load_editor_from_args(args, encode_first=True)
    for spec in args.lora or []:
        editor = editor.with_lora(*parse_lora_arg(spec))
    editor = editor.with_step_cache(args.step_cache)
    vlm, mode = load_instructor_from_args(args)
    reference = read_image(args.reference) if args.reference else None
    cond, prompt = build_conditioning(
        editor, args.instruction, video.frames[0], mode=mode, vlm=vlm, refiner_path=args.refiner, reference=reference
    )
    del vlm
    if prompt != args.instruction:
        print(f"instructor prompt: {prompt}")
    negative = negative_conditioning(editor, args.negative)
    editor.release_text_encoder()
    settings = sampling_settings(args)
    judge = None
    if args.judge:
        judge = load_judge_from_args(args)
    if judge is not None and args.candidates > 1:
        from .best_of_n import best_of_n

        outcome = best_of_n(
            editor,
            judge,
            video,
            cond,
            args.instruction,
            n=args.candidates,
            settings=settings,
            negative=negative,
            num_frames=args.judge_frames,
            batch=args.candidate_batch,
            previews=args.candidate_previews,
            progress_factory=lambda i: _tqdm_progress(_candidates_label(i, args.candidate_batch, args.candidates)),
        )
        result, verdict = outcome.best, outcome.best_judgement
        print(outcome.table())
    else:
        progress = _tqdm_progress("editing")
        result = edit(
            editor,
            video.frames,
            cond,
            negative=negative,
            settings=settings,
            fps=video.fps,
            audio=video.audio,
            progress=progress,
        )
        progress.close()
        verdict = (
            judge.score(video.frames, result.frames, args.instruction, num_frames=args.judge_frames)
            if judge is not None
            else None
        )
    write_video(args.output, result.frames, result.fps, result.audio)
    print(result.summary())
    if verdict is not None:
        print(verdict.to_json())
    print(f"wrote {args.output}")
    return 0


def cmd_judge(args: argparse.Namespace) -> int:
    from . import bundled
    from .video import read_video

    if not args.judge:
        args.judge = bundled.path(bundled.JUDGE)
        if args.vlm_dtype == "bf16" and not _cuda():
            args.vlm_dtype = "fp32"

    args.source = bundled.source_path(args.source)
    if args.report:
        check_output(args.report, [args.source, args.edited, args.judge], "--report")
        if Path(args.report).exists() and not args.overwrite and not _is_judge_report(Path(args.report)):
            raise OutputPathError(
                f"--report {args.report}: exists and is not a judge report; pass --overwrite to "
                "replace it, or choose another path."
            )
    src = read_video(args.source, max_frames=args.max_frames, with_audio=False)
    out = read_video(args.edited, max_frames=args.max_frames, with_audio=False)
    judge = load_judge_from_args(args)
    verdict = judge.score(src.frames, out.frames, args.instruction, num_frames=args.frames, rationale=args.rationale)
    text = verdict.to_json()
    if args.report:
        from .safe_io import write_text_atomic

        write_text_atomic(args.report, text)
    print(text)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from . import bundled
    from .eval import evaluate

    if args.editor == "bundled":
        args.editor = bundled.path(bundled.EDITOR)
    args.lora = resolve_loras(args.lora, bundled_default=False)
    if args.judge == "bundled":
        args.judge = bundled.path(bundled.JUDGE)
    if not args.outputs and not args.editor:
        raise InputError(
            "viva eval needs --outputs DIR (edits named <index>.mp4) or --editor (run it on every record)."
        )
    if args.ceiling and not args.editor:
        raise InputError("--ceiling scores an editor's VAE round trip of the ground truth: name the --editor.")
    if args.step_cache and (args.ceiling or not args.editor):
        raise InputError("--step-cache changes how --editor samples its edits; it goes with --editor, not --ceiling.")
    if args.no_outputs and not args.editor:
        raise InputError("--no-outputs goes with --editor (it skips saving the edits that --editor makes).")
    inputs = [
        args.manifest,
        args.editor,
        args.vae,
        args.text_encoder,
        args.instructor,
        args.refiner,
        args.judge,
        *(parse_lora_arg(x)[0] for x in args.lora or []),
    ]
    check_output(args.report, inputs + ([] if args.editor else [args.outputs]), "--report", folder=True)
    if args.editor and args.outputs and not args.no_outputs:
        check_output(args.outputs, inputs, "--outputs", folder=True)
        earlier = sorted(p.name for p in Path(args.outputs).glob("*.mp4") if p.stem.isdigit())
        if earlier and not args.overwrite:  # a folder of the user's: its <index>.mp4 files would be replaced
            raise OutputPathError(
                f"--outputs {args.outputs}: already holds {len(earlier)} edit(s) named <index>.mp4 "
                f"(e.g. {earlier[0]}), which this run would replace; choose an empty folder, or "
                "pass --overwrite."
            )
    if args.ceiling:
        from .data import read_frames
        from .pipeline import reconstruct

        editor = load_editor_from_args(args)

        def editor_fn(record, frames):
            return reconstruct(editor, read_frames(record.target_video, args.max_frames, "target_video")[0])
    elif args.editor:
        from .conditioning import build_conditioning, negative_conditioning
        from .lora import guidance_notes
        from .pipeline import edit

        vlm, mode = load_instructor_from_args(args)
        # Text conditioning needs no frame: every instruction is encoded up front and the text encoder dropped before
        # the DiT and VAE go onto the device, as `viva edit` does (Lucy-5B: 15.3 GiB peak, not 31.8; bench/RESULTS.md).
        # The instructor reads each source's first frame, so that mode keeps the encoder for the whole run.
        editor = load_editor_from_args(args, encode_first=mode == "text")
        for spec in args.lora or []:
            editor = editor.with_lora(*parse_lora_arg(spec))
        editor = editor.with_step_cache(args.step_cache)
        negative = negative_conditioning(editor, args.negative)
        settings = sampling_settings(args)
        for note in guidance_notes(editor.loras, settings.cfg):  # once a run, not in every edit's summary
            logging.getLogger("viva").warning(note)
        encoded = {}
        if mode == "text":
            from .data import load_manifest

            for record in load_manifest(args.manifest, check_videos=False)[: args.limit]:  # evaluate checks them
                if record.instruction not in encoded:
                    encoded[record.instruction] = editor.encode_text(record.instruction)
            editor.release_text_encoder()

        def editor_fn(record, frames):
            cond = encoded.get(record.instruction)
            if cond is None:
                cond, _ = build_conditioning(
                    editor, record.instruction, frames[0], mode=mode, vlm=vlm, refiner_path=args.refiner
                )
            return edit(editor, frames, cond, negative=negative, settings=settings).frames
    else:
        editor_fn = None
    judge = None
    if args.judge:
        judge = load_judge_from_args(args)
    outputs = None if args.no_outputs else args.outputs or str(Path(args.report) / "outputs")
    bar = _tqdm_progress("eval")
    report = evaluate(
        args.manifest,
        editor_fn,
        outputs_dir=outputs,
        judge=judge,
        limit=args.limit,
        progress=bar,
        max_frames=args.max_frames,
        judge_frames=args.judge_frames,
        previews=args.previews,
    )
    bar.close()
    out = report.write(args.report)
    print(report.table())
    print(f"wrote {out / 'report.json'} and {out / 'report.html'}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .train.checkpoint import (
        PREFIX,
        check_run_destination,
        latest_checkpoint,
        remove_checkpoints,
        verify_checkpoint,
    )
    from .train.config import load_config
    from .train.trainer import Trainer, install_sigint_handler

    cfg = load_config(args.config, args.set)
    out = Path(cfg.output_dir)
    check_output(
        cfg.output_dir,
        [
            cfg.data.manifest,
            cfg.data.val_manifest,
            cfg.model.editor,
            cfg.model.vae,
            cfg.model.text_encoder,
            cfg.model.instructor,
            cfg.lora.init_from,
        ],
        "output_dir",
        folder=True,
    )
    check_run_destination(out, cfg.output_name, resume=bool(args.resume), overwrite=args.overwrite)
    if args.resume and args.resume != "latest":
        verify_checkpoint(Path(args.resume))
    elif args.resume and latest_checkpoint(out / "checkpoints") is None and (out / "checkpoints").is_dir():
        found = sorted(p for p in (out / "checkpoints").glob(f"{PREFIX}*") if p.is_dir())
        if found:  # step-* folders but none usable: say why the newest is not, instead of silently starting over
            verify_checkpoint(found[-1])
    if args.overwrite and not args.resume:
        removed = remove_checkpoints(out / "checkpoints")
        if removed:
            print(
                f"--overwrite: removed {removed} checkpoint(s) of the earlier run in {out / 'checkpoints'}",
                file=sys.stderr,
            )
    bar = _tqdm_progress(f"train {cfg.method}")

    def on_log(step: int, metrics: dict) -> None:
        shown = {k: f"{v:.4g}" for k, v in metrics.items() if k in ("loss", "reward", "grad_norm") and v is not None}
        logging.getLogger("viva").info("step %d %s", step, shown)

    trainer = Trainer(cfg, progress=bar, on_log=on_log)
    install_sigint_handler(trainer)
    result = trainer.run(resume=args.resume if args.resume != "latest" else True)
    bar.close()
    # a stop at optim.max_minutes is what the job asked for (exit 0); a Ctrl-C is not (130, as a shell reports it)
    state = "finished"
    if result.interrupted:
        state = "stopped at optim.max_minutes, at" if result.timed_out else "interrupted at"
    if int(os.environ.get("RANK", "0")) == 0:
        print(
            f"{state} step {result.steps}; LoRA: {result.lora_path}"
            + (f"; refiner: {result.refiner_path}" if result.refiner_path else "")
        )
    return 130 if result.interrupted and not result.timed_out else 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from .train.pretrain import load_scratch_config, run_stage

    overrides = ([f"stage={args.stage}"] if args.stage else []) + args.set
    cfg = load_scratch_config(args.config, overrides)
    bar = _tqdm_progress(f"pretrain {cfg.stage}")
    out = run_stage(cfg, progress=bar)
    bar.close()
    print(f"{cfg.stage}: wrote {out}")
    return 0


def _name_list(text: str | None) -> list[str] | None:
    return None if text is None else [x.strip() for x in text.split(",") if x.strip()]


def cmd_synth(args: argparse.Namespace) -> int:
    import time

    from .synth import CATEGORIES, generate

    try:
        splits = tuple(float(x) for x in args.splits.split(","))
    except ValueError:
        raise InputError(f"--splits '{args.splits}' must be three numbers, e.g. 0.8,0.1,0.1.") from None
    if len(splits) != 3 or not all(math.isfinite(x) and x >= 0 for x in splits) or sum(splits) <= 0:
        raise InputError(
            f"--splits '{args.splits}' must be three finite numbers >= 0 with a positive sum, e.g. 0.8,0.1,0.1."
        )
    check_output(args.out, [], "--out", folder=True)
    bar = _tqdm_progress("synth")
    start = time.perf_counter()
    manifests = generate(
        args.out,
        n=args.n,
        seed=args.seed,
        frames=args.frames,
        size=args.size,
        categories=_name_list(args.categories) or CATEGORIES,
        ops=_name_list(args.ops),
        format=args.format,
        splits=splits,
        fps=args.fps,
        overwrite=args.overwrite,
        workers=args.workers,
        progress=bar,
    )
    bar.close()
    seconds = time.perf_counter() - start
    for split, path in manifests.items():
        print(f"{split}: {sum(1 for line in path.read_text().splitlines() if line.strip())} clips -> {path}")
    print(f"{args.n} clips in {seconds:.1f} s ({args.n / seconds * 60:.0f} clips/minute, {args.format})")
    return 0


def add_sampling_options(sp: argparse.ArgumentParser) -> None:
    """The fields of EditSettings, defaults from settings.DEFAULTS (--steps, --shift, --sampler left out: see
    sampling_settings)."""
    d = DEFAULTS
    sp.add_argument(
        "--steps",
        type=number(int, 1, 1000),
        default=None,
        help=f"sampling steps (default {d.steps}; {BUNDLED_STEPS} for the bundled small editor)",
    )
    sp.add_argument(
        "--cfg",
        type=number(float, 0, 100),
        default=None,
        help=f"classifier-free guidance scale; 1 = off, one DiT pass per step (default {d.cfg}, or with an Edit-GRPO "
        "--lora the scale its rollouts ran at, from its metadata)",
    )
    sp.add_argument("--seed", type=SEED, default=d.seed, help="noise seed (default %(default)s)")
    sp.add_argument(
        "--shift",
        type=number(float, 0, 100, lo_open=True),
        default=None,
        help="Wan's sigma shift: ~3 for 480p, 5 for 720p (default: from the model folder's scheduler "
        f"config, else {d.shift})",
    )
    sp.add_argument(
        "--strength",
        type=number(float, 0, 1, lo_open=True),
        default=d.strength,
        help="< 1 starts from the source noised to that level (default %(default)s)",
    )
    sp.add_argument(
        "--sampler",
        default=None,
        choices=list(SAMPLERS),
        help=f"(default: from the model folder's scheduler config, else {d.sampler})",
    )


def sampling_settings(args: argparse.Namespace) -> EditSettings:
    """EditSettings of the sampling flags; without --steps, the default (BUNDLED_STEPS for the bundled editor);
    without --cfg, the guidance the --lora stack's Edit-GRPO LoRAs trained at, else the default (such a LoRA
    overshoots under another: lora.guidance_notes); without --shift / --sampler, None: the edit takes the editor's
    (its scheduler config), else the default."""
    from . import bundled
    from .lora import LoraSpec, stack_cfg

    steps = args.steps
    if steps is None:
        small = bool(args.editor) and Path(args.editor).resolve() == bundled.EDITOR.resolve()
        steps = BUNDLED_STEPS if small else DEFAULTS.steps
    cfg = args.cfg
    if cfg is None:
        trained = stack_cfg([LoraSpec(*parse_lora_arg(x)) for x in getattr(args, "lora", None) or []])
        cfg = DEFAULTS.cfg if trained is None else trained
        if trained is not None:
            print(f"cfg {trained:g}: the guidance the LoRA's Edit-GRPO rollouts ran at (--cfg to choose another)")
    return EditSettings(
        steps=steps, cfg=cfg, seed=args.seed, shift=args.shift, strength=args.strength, sampler=args.sampler
    )


def add_step_cache_option(sp: argparse.ArgumentParser) -> None:
    """--step-cache, for the commands that sample edits (edit, eval)."""
    sp.add_argument(
        "--step-cache",
        type=step_cache_arg,
        default=None,
        metavar="SPEC",
        help="reuse DiT work between steps (diffusers' First Block Cache): first_block[:THRESHOLD], e.g. "
        "first_block:0.05; a DiT call whose first block changed less than THRESHOLD skips the other blocks. Trades "
        "quality for speed: PSNR / SSIM / EA against the full run in bench/RESULTS.md (default off)",
    )


def add_editor_options(sp: argparse.ArgumentParser) -> None:
    """How the editor runs (the options of EditorOptions), shared by every command that loads one."""
    from .editor import ATTENTION_BACKENDS, COMPILE_MODES, OFFLOAD_MODES
    from .runtime import DTYPE_NAMES

    sp.add_argument("--dtype", default="bf16", choices=DTYPE_NAMES)

    sp.add_argument(
        "--offload",
        default="none",
        choices=OFFLOAD_MODES,
        help="model: parts to the CPU between uses; block: DiT blocks streamed from RAM (least GPU memory, slowest); "
        "block_prefetch: streamed ahead on a side stream (about 2x faster than block, more GPU memory, the DiT pinned "
        "in RAM)",
    )
    sp.add_argument(
        "--attention",
        default="sdpa",
        choices=ATTENTION_BACKENDS,
        help="DiT attention; flash / sage / flash4 need their packages (flash4: flash-attn-4, Hopper or Blackwell)",
    )
    sp.add_argument("--compile", default="off", choices=COMPILE_MODES)
    sp.add_argument("--fp8", action="store_true", help="store DiT weights in fp8")
    sp.add_argument("--vae-tiling", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="viva",
        description="Instruction-based video editing (VIVA) with a "
        "self-reflection judge (ReViSE). Models load from local files only.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    from .runtime import DTYPE_NAMES

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--device", type=device_arg, default="auto", help="auto | cpu | cuda | cuda:N")
        sp.add_argument("--vlm-dtype", default="bf16", choices=DTYPE_NAMES)
        sp.add_argument("--max-frames", type=POSITIVE_INT, default=None, help="read at most this many frames")
        sp.add_argument("-v", "--verbose", action="store_true")

    e = sub.add_parser("edit", help="edit a video following an instruction")
    e.add_argument("source", help="source video file ('example': the bundled example clip)")
    e.add_argument("instruction", type=instruction_arg)
    e.add_argument("-o", "--output", required=True, help="output .mp4 (h264, source fps and audio)")
    e.add_argument(
        "--editor",
        help="diffusers editor folder, or a single-file Wan DiT .safetensors (default: the "
        "bundled small editor, with its instructor and refiner)",
    )
    e.add_argument("--vae", help="Wan VAE .safetensors (with a single-file --editor)")
    e.add_argument("--text-encoder", help="UMT5 folder (transformers format) if the editor folder has none")
    e.add_argument("--instructor", help="VLM folder: grounded instructor tokens (with --refiner) or a rewritten prompt")
    e.add_argument("--refiner", help="token refiner .safetensors trained for this instructor and editor")
    e.add_argument("--reference", help="optional reference image for the instructor")
    e.add_argument(
        "--lora",
        action="append",
        type=lora_arg,
        metavar="FILE[:STRENGTH]",
        help="LoRA file, repeatable; 'bundled': the bundled editor's Edit-GRPO LoRA, which an edit with no --editor "
        "applies unless --lora is given; 'none': no LoRA",
    )
    e.add_argument(
        "--judge",
        help="VLM folder: score the edit (and pick the best of --candidates); 'bundled' for the bundled small judge",
    )
    e.add_argument(
        "--candidates", type=number(int, 1, 1000), default=1, help="best-of-N: edit N seeds and keep the judge's best"
    )
    e.add_argument(
        "--candidate-batch",
        type=number(int, 1, 1000),
        default=1,
        metavar="K",
        help="best-of-N: sample K candidates at once (one DiT call per step for all K: faster where one edit leaves "
        "the GPU idle, e.g. small models; more memory); the same edits up to rounding",
    )
    e.add_argument(
        "--candidate-previews",
        type=step_cache_arg,
        default=None,
        metavar="SPEC",
        help="best-of-N: judge step-cached previews of the candidates (first_block[:THRESHOLD]) and render only the "
        "winning seed in full: fewer DiT calls per candidate, one more edit; the video kept is a plain edit. Time "
        "and pick quality in bench/RESULTS.md (default off: the candidates are full edits)",
    )
    e.add_argument("--judge-frames", type=POSITIVE_INT, default=4)
    e.add_argument("--negative", type=text_arg, default="", help="negative prompt for CFG")
    add_step_cache_option(e)
    add_sampling_options(e)
    e.add_argument("--stride", type=POSITIVE_INT, default=1, help="keep every Nth source frame")
    e.add_argument(
        "--max-bytes",
        type=POSITIVE_INT,
        default=None,
        help="refuse sources whose decoded frames need more RAM (default: half the free RAM)",
    )
    add_editor_options(e)
    common(e)
    e.set_defaults(func=cmd_edit)

    j = sub.add_parser("judge", help="score an edit with the self-reflection judge (P(Yes) per question)")
    j.add_argument("source", help="source video file ('example': the bundled example clip)")
    j.add_argument("edited")
    j.add_argument("instruction", type=instruction_arg)
    j.add_argument("--judge", help="VLM folder (default: the bundled small judge)")
    j.add_argument("--frames", type=POSITIVE_INT, default=4, help="frames sampled uniformly from each video")
    j.add_argument("--rationale", action="store_true", help="also generate a short explanation")
    j.add_argument(
        "--report",
        help="write the JSON report here too (an existing file is replaced only if it is a "
        "judge report, or with --overwrite)",
    )
    j.add_argument("--overwrite", action="store_true", help="let --report replace an existing file of any kind")
    common(j)
    j.set_defaults(func=cmd_judge)

    v = sub.add_parser(
        "eval",
        help="exact benchmark: score edits against a manifest's ground truth",
        description="Scores per edit (EA, PC, GN, GR in [0, 1], PSNR, SSIM) from the output vs the "
        "manifest's source, target and mask (and its per-operation 'verify' entries), aggregated per "
        "category and operation; writes report.json and a self-contained report.html.",
    )
    v.add_argument("manifest", help="JSONL manifest with target_video (and mask_video) per edit")
    v.add_argument(
        "--outputs",
        help="folder of edits named <index>.mp4 (with --editor: where they are saved; default REPORT/outputs)",
    )
    v.add_argument(
        "--editor", help="diffusers editor folder or single-file DiT: edit every record; 'bundled' for the small one"
    )
    v.add_argument("--instructor", help="VLM folder: condition with instructor tokens (with --refiner) or a rewrite")
    v.add_argument("--refiner", help="token refiner .safetensors trained for this instructor and editor")
    v.add_argument(
        "--no-outputs",
        action="store_true",
        help="with --editor: keep only the scores and the HTML "
        "report, not the edited videos (no video encoding: npz manifests then need no PyAV)",
    )
    v.add_argument(
        "--ceiling",
        action="store_true",
        help="with --editor: score its VAE's round trip of the ground "
        "truth instead of edits (the most any edit decoded by that VAE can score)",
    )
    v.add_argument("--report", required=True, help="folder for report.json and report.html")
    v.add_argument(
        "--overwrite",
        action="store_true",
        help="with --editor and --outputs: replace the <index>.mp4 edits an earlier run left in --outputs",
    )
    v.add_argument("--limit", type=POSITIVE_INT, default=None, help="score only the first N records")
    v.add_argument(
        "--judge",
        help="VLM folder: also measure the judge's agreement with the verifiers; 'bundled' for the small judge",
    )
    v.add_argument("--judge-frames", type=POSITIVE_INT, default=4)
    v.add_argument("--previews", type=COUNT, default=8, help="edits shown as frame strips in the HTML report")
    v.add_argument("--vae", help="Wan VAE .safetensors (with a single-file --editor)")
    v.add_argument("--text-encoder", help="UMT5 folder (transformers format) if the editor folder has none")
    v.add_argument(
        "--lora",
        action="append",
        type=lora_arg,
        metavar="FILE[:STRENGTH]",
        help="LoRA file, repeatable; 'bundled': the bundled editor's Edit-GRPO LoRA (--editor bundled is the editor "
        "alone)",
    )
    v.add_argument("--negative", type=text_arg, default="", help="negative prompt for CFG")
    add_step_cache_option(v)
    add_sampling_options(v)
    add_editor_options(v)
    common(v)
    v.set_defaults(func=cmd_eval)

    t = sub.add_parser(
        "train",
        help="train an editing LoRA (sft, grpo, rwo) from a TOML config",
        description="Methods: sft (mask-weighted flow matching, VIVA), grpo (Edit-GRPO: Flow-SDE "
        "rollouts, group-relative rewards), rwo (reward-weighted flow matching, a reconstruction of "
        "ReViSE's RWO). Data: a JSONL manifest, one edit per line: source_video, instruction, "
        "[target_video, mask_video, reference_image, source_caption, target_caption, type]. "
        "Multi-GPU: torchrun --nproc_per_node=K -m viva_core.cli train CONFIG.",
    )
    t.add_argument(
        "config", nargs="?", help="TOML config (sections: model, data, lora, optim, sft, rollout, rewards, log)"
    )
    t.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value")
    t.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        default=None,
        help="continue from the latest checkpoint in output_dir (or from the given checkpoint folder)",
    )
    t.add_argument(
        "--overwrite",
        action="store_true",
        help="start over: replace the LoRA named output_name and "
        "delete the checkpoints of an earlier run in output_dir",
    )
    t.add_argument("-v", "--verbose", action="store_true")
    t.set_defaults(func=cmd_train)

    pt = sub.add_parser(
        "pretrain",
        help="train the small from-scratch models (vae, editor, judge) on synth clips",
        description="Stages: vae (Wan-architecture VAE), editor (Wan DiT + UMT5 text encoder "
        "[+ Qwen2.5-VL-architecture instructor and token refiner], mask-weighted flow matching), "
        "judge_data (an editor's own outputs labelled by the verifiers, for the judge), "
        "judge (Qwen2.5-VL-architecture judge on verifier labels). Data: `viva synth --format npz`. "
        "The recipes that made the bundled models are in recipes/small/.",
    )
    pt.add_argument(
        "config", help="TOML config (stage, output_dir, seed, device; sections data, optim, vae, editor, judge)"
    )
    pt.add_argument("--stage", choices=["vae", "editor", "judge_data", "judge"], help="override the config's stage")
    pt.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value")
    pt.add_argument("-v", "--verbose", action="store_true")
    pt.set_defaults(func=cmd_pretrain)

    s = sub.add_parser(
        "synth",
        help="generate synthetic paired-edit data (source, instruction, target, mask)",
        description="Seeded procedural clips of moving shapes with exact edits: basic, hybrid, and "
        "reasoning-informed (temporal, causal, spatial, commonsense). Writes train/val/heldout "
        "JSONL manifests (heldout holds unseen (operation, attribute/referring) pairs) and "
        "synth_config.json under --out.",
    )
    s.add_argument("--out", required=True, help="output folder (manifests, media, synth_config.json)")
    s.add_argument("--n", type=POSITIVE_INT, default=1000, help="number of clips over all splits")
    s.add_argument("--seed", type=SEED, default=0, help="the same seed gives identical clips and text")
    s.add_argument("--frames", type=number(int, 2, 1000), default=17, help="frames per clip (4k+1 suits Wan)")
    s.add_argument("--size", type=number(int, 32, 4096), default=64, help="frame side in pixels (square)")
    s.add_argument(
        "--fps", type=number(float, 0, 240, lo_open=True), default=8.0, help="frame rate written into mp4 files"
    )
    s.add_argument(
        "--format",
        default="mp4",
        choices=["mp4", "npz"],
        help="mp4: video files (lossy h264); npz: exact uint8 arrays in one file per clip, ~8x faster to write and "
        "read (train, eval and pretrain read both)",
    )
    s.add_argument("--categories", help="comma list of basic,hybrid,temporal,causal,spatial,commonsense (default all)")
    s.add_argument("--ops", help="comma list of operations to allow (default all), e.g. recolour,remove,time_shift")
    s.add_argument("--splits", default="0.8,0.1,0.1", help="train,val,heldout fractions")
    s.add_argument("--overwrite", action="store_true", help="write into a folder that holds an earlier data set")
    s.add_argument(
        "--workers", type=number(int, 1, 256), default=1, help="processes making clips (same files for any number)"
    )
    s.add_argument("-v", "--verbose", action="store_true")
    s.set_defaults(func=cmd_synth)
    return p


class _CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record is emitted: in-process callers (tests, notebooks) swap
    sys.stderr between calls, and a handler bound to the first one writes into a closed stream."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def configure_logging(verbose: bool) -> None:
    """One stderr handler on the root logger (added once), its level set by -v on every call."""
    root = logging.getLogger()
    if not any(isinstance(h, _CurrentStderrHandler) for h in root.handlers):
        handler = _CurrentStderrHandler()
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Exit codes: 0 done, 2 a bad input (argparse's too; the message names it), 1 an unexpected failure (a bug:
    one line, VIVA_DEBUG=1 shows the traceback), 130 interrupted."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse has printed its message (or --help); return its code for in-process callers
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    configure_logging(args.verbose)
    # Cyclic GC runs every 700 net allocations by default: while torch, diffusers and transformers import (~650k
    # objects, nearly none of them garbage) that is ~1,050 passes, full ones repeated as the heap grows: 1.3-1.4 s
    # CPU of README command 1 on 2 cores (1.0 s in full passes). Every 10,000: ~85 passes, no full one, 0.4-0.5 s,
    # half of it in the 7 passes over the middle generation (every 10 young ones); every 100: none, 0.2 s.
    # Results are the same (GC frees Python objects, it computes nothing); the caller's setting is restored after.
    thresholds = gc.get_threshold()
    if 0 < thresholds[0] < GC_THRESHOLD:  # 0: the caller turned automatic collection off; more: the caller's choice
        gc.set_threshold(GC_THRESHOLD, max(thresholds[1], GC_MIDDLE_THRESHOLD), *thresholds[2:])
    # At exit, CPython's finalization runs full collections over every object still alive (~400k once torch,
    # diffusers and transformers are imported): 1.3 s of README command 1's wall on 2 cores. Frozen objects are
    # skipped; the process is ending, so the OS frees them anyway. Registered once however often main runs
    # (in-process callers keep normal collection until their own exit).
    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)
    try:
        return args.func(args)
    except VivaError as e:
        print(f"viva: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("viva: interrupted; no output was written.", file=sys.stderr)
        return 130
    except Exception as e:  # last resort: a case that lands here is a bug to report, not a user error
        if os.environ.get("VIVA_DEBUG", "") not in ("", "0"):
            raise
        print(
            f"viva: unexpected error: {type(e).__name__}: {' '.join(str(e).split()) or '(no message)'} "
            "(a bug: please report it; run with VIVA_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 1
    finally:
        gc.set_threshold(*thresholds)


if __name__ == "__main__":
    sys.exit(main())
