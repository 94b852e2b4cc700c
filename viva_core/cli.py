"""`viva` command line: edit and judge videos from the shell with the same core calls the ComfyUI nodes make."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from .errors import InputError, VivaError
from .runtime import available_memory_bytes


def _tqdm_progress(desc: str):
    from tqdm.auto import tqdm

    bar = tqdm(desc=desc, unit="step", leave=False)

    def progress(done: int, total: int, preview=None) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    progress.close = bar.close  # type: ignore[attr-defined]
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

    return EditorOptions(dtype=args.dtype, device=args.device, offload=args.offload, attention=args.attention,
                         compile=args.compile, fp8_storage=args.fp8, vae_tiling=args.vae_tiling)


def load_editor_from_args(args: argparse.Namespace):
    from .editor import load_editor

    src = Path(args.editor)
    if src.is_dir():
        return load_editor(str(src), text_encoder_folder=args.text_encoder, options=_editor_options(args))
    if src.suffix == ".safetensors" or src.suffix in (".pt", ".ckpt", ".bin", ".pth"):
        return load_editor(transformer_file=str(src), vae_file=args.vae, text_encoder_folder=args.text_encoder,
                           options=_editor_options(args))
    raise InputError(f"{src}: --editor must be a diffusers folder or a .safetensors DiT file.")


def cmd_edit(args: argparse.Namespace) -> int:
    from .conditioning import build_conditioning, negative_conditioning
    from .pipeline import EditSettings, edit
    from .video import read_image, read_video, write_video
    from .vlm import load_vlm

    budget = args.max_bytes or available_memory_bytes() // 2
    video = read_video(args.source, max_frames=args.max_frames, stride=args.stride, max_bytes=budget)
    editor = load_editor_from_args(args)
    for spec in args.lora or []:
        editor = editor.with_lora(*parse_lora_arg(spec))
    vlm = load_vlm(args.instructor, dtype=args.vlm_dtype, device=args.device) if args.instructor else None
    mode = "text" if vlm is None else ("instructor" if args.refiner else "rewrite")
    reference = read_image(args.reference) if args.reference else None
    cond, prompt = build_conditioning(editor, args.instruction, video.frames[0], mode=mode, vlm=vlm,
                                      refiner_path=args.refiner, reference=reference)
    if prompt != args.instruction:
        print(f"instructor prompt: {prompt}")
    negative = negative_conditioning(editor, args.negative)
    settings = EditSettings(steps=args.steps, cfg=args.cfg, seed=args.seed, shift=args.shift,
                            strength=args.strength, sampler=args.sampler)
    judge = None
    if args.judge:
        from .judge import Judge

        judge = Judge(load_vlm(args.judge, dtype=args.vlm_dtype, device=args.device))
    if judge is not None and args.candidates > 1:
        from .best_of_n import best_of_n

        outcome = best_of_n(editor, judge, video, cond, args.instruction, n=args.candidates, settings=settings,
                            negative=negative, num_frames=args.judge_frames,
                            progress_factory=lambda i: _tqdm_progress(f"candidate {i + 1}/{args.candidates}"))
        result, verdict = outcome.best, outcome.best_judgement
        print(outcome.table())
    else:
        progress = _tqdm_progress("editing")
        result = edit(editor, video.frames, cond, negative=negative, settings=settings, fps=video.fps,
                      audio=video.audio, progress=progress)
        progress.close()
        verdict = judge.score(video.frames, result.frames, args.instruction, num_frames=args.judge_frames) \
            if judge is not None else None
    write_video(args.output, result.frames, result.fps, result.audio)
    print(result.summary())
    if verdict is not None:
        print(verdict.to_json())
    print(f"wrote {args.output}")
    return 0


def cmd_judge(args: argparse.Namespace) -> int:
    from .judge import Judge
    from .video import read_video
    from .vlm import load_vlm

    src = read_video(args.source, max_frames=args.max_frames, with_audio=False)
    out = read_video(args.edited, max_frames=args.max_frames, with_audio=False)
    judge = Judge(load_vlm(args.judge, dtype=args.vlm_dtype, device=args.device))
    verdict = judge.score(src.frames, out.frames, args.instruction, num_frames=args.frames, rationale=args.rationale)
    text = verdict.to_json()
    if args.report:
        Path(args.report).write_text(text)
    print(text)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .train.config import load_config
    from .train.trainer import Trainer, install_sigint_handler

    cfg = load_config(args.config, args.set)
    bar = _tqdm_progress(f"train {cfg.method}")

    def on_log(step: int, metrics: dict) -> None:
        shown = {k: f"{v:.4g}" for k, v in metrics.items() if k in ("loss", "reward", "grad_norm") and v is not None}
        logging.getLogger("viva").info("step %d %s", step, shown)

    trainer = Trainer(cfg, progress=bar, on_log=on_log)
    install_sigint_handler(trainer)
    result = trainer.run(resume=args.resume if args.resume != "latest" else True)
    bar.close()
    state = "interrupted at" if result.interrupted else "finished"
    if int(os.environ.get("RANK", "0")) == 0:
            print(f"{state} step {result.steps}; LoRA: {result.lora_path}" +
              (f"; refiner: {result.refiner_path}" if result.refiner_path else ""))
    return 130 if result.interrupted else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="viva", description="Instruction-based video editing (VIVA) with a "
                                "self-reflection judge (ReViSE). Models load from local files only.")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
        sp.add_argument("--vlm-dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
        sp.add_argument("--max-frames", type=int, default=None, help="read at most this many frames")
        sp.add_argument("-v", "--verbose", action="store_true")

    e = sub.add_parser("edit", help="edit a video following an instruction")
    e.add_argument("source", help="source video file")
    e.add_argument("instruction")
    e.add_argument("-o", "--output", required=True, help="output .mp4 (h264, source fps and audio)")
    e.add_argument("--editor", required=True, help="diffusers editor folder, or a single-file Wan DiT .safetensors")
    e.add_argument("--vae", help="Wan VAE .safetensors (with a single-file --editor)")
    e.add_argument("--text-encoder", help="UMT5 folder (transformers format) if the editor folder has none")
    e.add_argument("--instructor", help="VLM folder: grounded instructor tokens (with --refiner) or a rewritten prompt")
    e.add_argument("--refiner", help="token refiner .safetensors trained for this instructor and editor")
    e.add_argument("--reference", help="optional reference image for the instructor")
    e.add_argument("--lora", action="append", metavar="FILE[:STRENGTH]", help="LoRA file, repeatable")
    e.add_argument("--judge", help="VLM folder: score the edit (and pick the best of --candidates)")
    e.add_argument("--candidates", type=int, default=1, help="best-of-N: edit N seeds and keep the judge's best")
    e.add_argument("--judge-frames", type=int, default=4)
    e.add_argument("--negative", default="", help="negative prompt for CFG")
    e.add_argument("--steps", type=int, default=30)
    e.add_argument("--cfg", type=float, default=5.0)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--shift", type=float, default=5.0)
    e.add_argument("--strength", type=float, default=1.0)
    e.add_argument("--sampler", default="unipc", choices=["unipc", "euler"])
    e.add_argument("--stride", type=int, default=1, help="keep every Nth source frame")
    e.add_argument("--max-bytes", type=int, default=None, help="refuse sources whose decoded frames need more RAM "
                   "(default: half the free RAM)")
    e.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    e.add_argument("--offload", default="none", choices=["none", "model", "block"])
    e.add_argument("--attention", default="sdpa")
    e.add_argument("--compile", default="off", choices=["off", "blocks", "full"])
    e.add_argument("--fp8", action="store_true", help="store DiT weights in fp8")
    e.add_argument("--vae-tiling", action="store_true")
    common(e)
    e.set_defaults(func=cmd_edit)

    j = sub.add_parser("judge", help="score an edit with the self-reflection judge (P(Yes) per question)")
    j.add_argument("source")
    j.add_argument("edited")
    j.add_argument("instruction")
    j.add_argument("--judge", required=True, help="VLM folder")
    j.add_argument("--frames", type=int, default=4, help="frames sampled uniformly from each video")
    j.add_argument("--rationale", action="store_true", help="also generate a short explanation")
    j.add_argument("--report", help="write the JSON report here too")
    common(j)
    j.set_defaults(func=cmd_judge)

    t = sub.add_parser("train", help="train an editing LoRA (sft, grpo, rwo) from a TOML config",
                       description="Methods: sft (mask-weighted flow matching, VIVA), grpo (Edit-GRPO: Flow-SDE "
                       "rollouts, group-relative rewards), rwo (reward-weighted flow matching, a reconstruction of "
                       "ReViSE's RWO). Data: a JSONL manifest, one edit per line: source_video, instruction, "
                       "[target_video, mask_video, reference_image, source_caption, target_caption, type]. "
                       "Multi-GPU: torchrun --nproc_per_node=K -m viva_core.cli train CONFIG.")
    t.add_argument("config", nargs="?", help="TOML config (sections: model, data, lora, optim, sft, rollout, "
                   "rewards, log)")
    t.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value")
    t.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="continue from the latest checkpoint in output_dir (or from the given checkpoint folder)")
    t.add_argument("-v", "--verbose", action="store_true")
    t.set_defaults(func=cmd_train)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        return args.func(args)
    except VivaError as e:
        print(f"viva: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("viva: interrupted; no output was written.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
