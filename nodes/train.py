"""Training nodes: a manifest from a folder of edits, and LoRA training (SFT / Edit-GRPO / RWO) inside ComfyUI.

The trainer is viva_core.train's; this file only maps inputs to its config, runs it off the event loop, forwards
progress, interrupts and logged metrics to ComfyUI, and puts the finished LoRA into models/loras.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
from pathlib import Path
from typing import Optional

import comfy.model_management as mm
import comfy.utils
import folder_paths
from comfy_api.latest import io, ui
from server import PromptServer

from ..viva_core.data import IMAGE_SUFFIXES, PATH_FIELDS, VIDEO_SUFFIXES, dataset_from_folder, load_manifest
from ..viva_core.errors import InputError
from ..viva_core.safe_io import atomic_path
from ..viva_core.train.checkpoint import PREFIX as CHECKPOINT_PREFIX
from ..viva_core.train.checkpoint import latest_checkpoint, trained_by_viva
from ..viva_core.train.config import (
    METHODS,
    TRAIN_COMPILE_MODES,
    check_output_name,
    load_config,
    parse_reward_weights,
)
from ..viva_core.train.trainer import Trainer
from . import common as c
from .loaders import DTYPES, editor_choices, resolve_editor
from .model_management import lent_for_training

TRAINING_FOLDER = "viva_training"  # under ComfyUI's output folder: checkpoints, metrics, curves, cache
EVENT = "viva.train"  # websocket event of each logged step, drawn as a live curve by web/js/viva.js
CURVE_KEYS = ("loss", "reward")


def _looks_like_dataset(folder: Path) -> bool:
    """A folder with at least one video/image and one .txt instruction (the sidecar convention)."""
    names = [p.name.lower() for p in folder.iterdir() if p.is_file()]
    return any(n.endswith(".txt") for n in names) and any(n.endswith(VIDEO_SUFFIXES + IMAGE_SUFFIXES) for n in names)


class DatasetFromFolder(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VIVA_DatasetFromFolder",
            display_name="VIVA Dataset From Folder",
            category=c.CATEGORY,
            description="Writes a training manifest (manifest.jsonl) for a folder of edits in ComfyUI's input folder: "
            "X.mp4 + X.txt (the instruction), optional X_target.mp4, X_mask.mp4, X_ref.png.",
            inputs=[
                io.Combo.Input(
                    "folder",
                    options=c.input_folders(_looks_like_dataset) or [c.NONE],
                    tooltip="A sub-folder of ComfyUI's input folder holding videos with .txt instructions.",
                ),
                io.Boolean.Input(
                    "skip_missing",
                    default=False,
                    tooltip="Leave out videos without an instruction file "
                    "(and companions without a source) instead of stopping with a list of them.",
                ),
            ],
            outputs=[
                io.String.Output(
                    "manifest",
                    display_name="manifest",
                    tooltip="The manifest's path, relative to the input folder (for Train LoRA).",
                ),
                io.String.Output(
                    "summary",
                    display_name="summary",
                    tooltip="Number of edits, with how many have a target and a mask.",
                ),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, folder: str, skip_missing: bool) -> str:
        """Run again when the folder's files change (the manifest we write ourselves is left out)."""
        try:
            root = Path(c.resolve_input_dir(folder))
            files = sorted(
                (p.name, p.stat().st_size, p.stat().st_mtime_ns)
                for p in root.iterdir()
                if p.is_file() and not p.name.startswith(".") and p.name != "manifest.jsonl"
            )
        except (InputError, OSError):
            return f"{folder}:unreadable"
        return json.dumps([folder, skip_missing, files])

    @classmethod
    def execute(cls, folder: str, skip_missing: bool) -> io.NodeOutput:
        if folder == c.NONE:
            raise InputError(
                "no dataset folder found: put a folder of X.mp4 + X.txt (+ X_target.mp4, X_mask.mp4) "
                "into ComfyUI's input folder and refresh."
            )
        manifest = dataset_from_folder(c.resolve_input_dir(folder), skip_missing=skip_missing)
        records = load_manifest(manifest)  # probes every file now, so a bad video stops here, not mid-training
        targets = sum(r.target_video is not None for r in records)
        masks = sum(r.mask_video is not None for r in records)
        name = Path(os.path.relpath(manifest, folder_paths.get_input_directory())).as_posix()
        edits = f"{len(records)} edit{'s' if len(records) != 1 else ''}"
        summary = f"{edits}: {targets} with target, {masks} with mask\n{name}"
        return io.NodeOutput(name, summary, ui=ui.PreviewText(summary))


class _TrainProgress:
    """The trainer's progress callback: ComfyUI's progress bar, without throwing on interrupt.

    ComfyUI's bar hook raises (and clears the interrupt flag) when the user cancels; raised inside the trainer that
    would skip its checkpoint. So an interrupt seen here is remembered and reported through `stop_requested`."""

    def __init__(self, total: int) -> None:
        self.bar = comfy.utils.ProgressBar(total)
        self.interrupted = False

    def __call__(self, done: int, total: int, preview=None) -> None:
        if mm.processing_interrupted():
            return  # leave the flag for stop_requested; the trainer stops before the next step
        try:
            self.bar.update_absolute(done, total)
        except mm.InterruptProcessingException:
            self.interrupted = True

    def stop_requested(self) -> bool:
        return self.interrupted or mm.processing_interrupted()


def _finite(value) -> Optional[float]:
    """A JSON-safe number: NaN/Inf (invalid JSON for the browser) and missing values become None."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _curve(out_dir: Path, upto: Optional[int] = None) -> list[list]:
    """[[step, loss, reward], ...] from the run's metrics.jsonl (steps ≤ `upto`), for the node's curve."""
    path = out_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    points = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if upto is not None and row.get("step", 0) > upto:
            continue
        if any(row.get(k) is not None for k in CURVE_KEYS):
            points.append([row.get("step")] + [_finite(row.get(k)) for k in CURVE_KEYS])
    return points


def _checkpoint_step(out_dir: Path) -> Optional[int]:
    ck = latest_checkpoint(out_dir / "checkpoints")
    return int(ck.name[len(CHECKPOINT_PREFIX) :]) if ck is not None else None


def _check_lora_destination(path: Path) -> None:
    """Overwrite a LoRA only when this trainer wrote it (a re-run); never a file from elsewhere."""
    if path.exists() and not trained_by_viva(path):
        raise InputError(
            f"models/loras already has '{path.name}' and it was not trained by VIVA; choose another output_name."
        )


def _install_lora(src: Path, dest: Path) -> None:
    """Copy the trained LoRA into models/loras atomically (a LoRA loader never sees half a file)."""
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)


def _resolve_manifest(manifest: str) -> str:
    """The manifest and every file it lists must lie inside ComfyUI's input/output folders (missing files fail here)."""
    if not manifest.strip():
        raise InputError(
            "manifest is empty: connect VIVA Dataset From Folder, or type a .jsonl path inside ComfyUI's input folder."
        )
    path = c.resolve_input_file(manifest.strip())
    listed = [getattr(r, f) for r in load_manifest(path, check_videos=False) for f in PATH_FIELDS]
    outside = sorted({str(p) for p in listed if p is not None and not c.inside_user_folders(p)})
    if outside:
        raise InputError(
            f"{Path(path).name} points at {len(outside)} file(s) outside ComfyUI's input/output "
            f"folders (e.g. {outside[0]}); copy the data set into the input folder."
        )
    return path


def _rewards(text: str, judge_vlm: str, method: str) -> tuple[dict[str, float], str]:
    """Reward weights from the `rewards` text (checked for every method, though only grpo/rwo use them) and the
    judge VLM folder ('' for none)."""
    weights = parse_reward_weights(text)
    if any(k.startswith("callable") for k in weights):
        raise InputError(
            "'callable:' rewards run Python code named in the prompt; use them with `viva train` on the "
            "command line, not in ComfyUI."
        )
    judge = "" if judge_vlm == c.NONE else c.resolve_dir(c.VLM_FOLDER, judge_vlm)
    if method != "sft" and any(k.split(":")[0] == "judge" for k in weights) and not judge:
        raise InputError("the 'judge' reward needs a judge_vlm: pick a VLM folder (models/vlm).")
    return weights, judge


def _metrics_text(lora_name: str, method: str, steps: int, rank: int, metrics: dict, out_dir: Path) -> str:
    shown = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items() if _finite(v) is not None)
    where = Path(os.path.relpath(out_dir, folder_paths.get_output_directory())).as_posix()
    return f"{lora_name}: {method}, {steps} steps, rank {rank} (in models/loras)\n{shown}\ncheckpoints: output/{where}"


class TrainLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VIVA_TrainLoRA",
            display_name="VIVA Train LoRA",
            category=c.CATEGORY,
            description="Trains a LoRA for the editor on a manifest of edits: sft (mask-weighted flow matching on "
            "target videos), grpo (Edit-GRPO on rewards) or rwo (reward-weighted flow matching). Saves "
            "checkpoints under output/viva_training/<output_name>/ and the LoRA into models/loras. DiTs of 1 B "
            "parameters or more train with gradient checkpointing (far less memory, one more forward pass a step).",
            inputs=[
                io.Combo.Input(
                    "editor",
                    options=editor_choices() or [c.NONE],
                    tooltip="The base editor, as in VIVA Load Editor: a diffusers folder or a single-file Wan DiT.",
                ),
                io.Combo.Input(
                    "vae",
                    options=[c.FROM_EDITOR] + c.safetensors_files("vae"),
                    tooltip="Wan VAE file for a single-file DiT; folders use their own vae/.",
                ),
                io.Combo.Input(
                    "text_encoder",
                    options=[c.FROM_EDITOR] + c.text_encoder_folders(),
                    tooltip="UMT5 folder under models/text_encoders when the editor has none.",
                ),
                io.String.Input(
                    "manifest",
                    default="",
                    tooltip="A JSONL manifest inside ComfyUI's input or output "
                    "folder, e.g. from VIVA Dataset From Folder (relative to the input folder).",
                ),
                io.Combo.Input(
                    "method",
                    options=list(METHODS),
                    default="sft",
                    tooltip="sft: learn the target "
                    "videos. grpo: Edit-GRPO on rewards (its rollouts run without guidance: edit with its LoRA at "
                    "cfg 1, where it was trained). rwo: reward-weighted flow matching.",
                ),
                io.Int.Input(
                    "steps",
                    default=500,
                    min=1,
                    max=1_000_000,
                    tooltip="Optimizer steps in all (a resumed run continues up to this number).",
                ),
                io.Int.Input("rank", default=32, min=1, max=512, tooltip="LoRA rank (alpha = 2 x rank)."),
                io.Float.Input(
                    "learning_rate",
                    default=1e-4,
                    min=1e-7,
                    max=1.0,
                    step=1e-6,
                    round=1e-8,
                    tooltip="AdamW learning rate (1e-4 for LoRA; lower if the loss jumps).",
                ),
                io.Int.Input(
                    "group_size",
                    default=8,
                    min=2,
                    max=64,
                    tooltip="grpo/rwo: samples per edit whose rewards are compared with each other. Ignored by sft.",
                ),
                io.String.Input(
                    "rewards",
                    default="preservation=1.0",
                    tooltip="grpo/rwo: name=weight pairs, e.g. "
                    "'preservation=1.0, judge=0.5' (judge or judge:EA+PC needs judge_vlm; verifier:EA+PC "
                    "scores against the data's ground truth, e.g. `viva synth` clips; verifier:SP penalizes edits "
                    "that spill onto other objects). Ignored by sft.",
                ),
                io.Combo.Input(
                    "judge_vlm",
                    options=[c.NONE] + c.vlm_folders(),
                    default=c.NONE,
                    tooltip="VLM folder (models/vlm) scoring edits for the 'judge' reward.",
                ),
                io.Int.Input(
                    "max_frames",
                    default=17,
                    min=1,
                    max=1000,
                    tooltip="Frames read per video (snapped to 4k+1). Memory and time grow with it.",
                ),
                io.Int.Input(
                    "height",
                    default=0,
                    min=0,
                    max=4096,
                    step=16,
                    tooltip="Training height; 0 (with width "
                    "0) keeps the videos' size, snapped to the model's multiple.",
                ),
                io.Int.Input("width", default=0, min=0, max=4096, step=16, tooltip="Training width; see height."),
                io.String.Input(
                    "output_name",
                    default="viva_lora",
                    tooltip="Name of the LoRA file "
                    "(models/loras/<output_name>.safetensors) and of its checkpoint folder.",
                ),
                io.Combo.Input(
                    "dtype",
                    options=DTYPES,
                    default="auto",
                    tooltip="Compute dtype of the DiT. auto: bf16 "
                    "on a GPU, fp32 on a CPU (bf16 is slow there); fp16 overflows in Wan.",
                ),
                io.Boolean.Input(
                    "resume",
                    default=False,
                    tooltip="Continue from the latest checkpoint of "
                    "output_name (after an interrupt, or to train further).",
                ),
                io.Combo.Input(
                    "compile",
                    options=list(TRAIN_COMPILE_MODES),
                    default="off",
                    optional=True,  # API prompts written before it stay valid
                    tooltip="blocks: torch.compile each DiT block with its LoRA (needs Triton on a GPU; the first "
                    "steps pay the compile, minutes for a big DiT). An Edit-GRPO iteration of a 1.3B DiT ran ~1.35x "
                    "faster on an H100.",
                ),
                c.Editor.Input(
                    "loaded_editor",
                    optional=True,
                    tooltip="VIVA Load Editor's output: train on the "
                    "editor this graph has loaded (the same model as `editor`) instead of loading a "
                    "second copy; its dtype is used.",
                ),
            ],
            outputs=[
                io.String.Output(
                    "lora_name",
                    display_name="lora_name",
                    tooltip="File name of the trained LoRA in models/loras (refresh to list it).",
                ),
                io.String.Output("metrics", display_name="metrics", tooltip="Final metrics of the run."),
            ],
            hidden=[io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    async def execute(
        cls,
        editor: str,
        vae: str,
        text_encoder: str,
        manifest: str,
        method: str,
        steps: int,
        rank: int,
        learning_rate: float,
        group_size: int,
        rewards: str,
        judge_vlm: str,
        max_frames: int,
        height: int,
        width: int,
        output_name: str,
        dtype: str,
        resume: bool,
        compile: str = "off",
        loaded_editor=None,
    ) -> io.NodeOutput:
        name = output_name.strip()
        for problem in check_output_name(name):
            raise InputError(problem + ".")
        if bool(height) != bool(width):
            raise InputError("set both height and width, or leave both at 0 to keep the videos' size.")
        files = resolve_editor(editor, vae, text_encoder)
        chosen = Path(files.folder).name if files.folder else Path(files.transformer_file).stem
        if loaded_editor is not None and loaded_editor.name != chosen:
            raise InputError(
                f"loaded_editor is '{loaded_editor.name}' but `editor` names '{chosen}'; pick the same "
                "model in both (the LoRA's metadata names `editor`)."
            )
        manifest_path = _resolve_manifest(manifest)
        weights, judge = _rewards(rewards, judge_vlm, method)
        out_dir = Path(folder_paths.get_output_directory()) / TRAINING_FOLDER / name
        resumed_from = _checkpoint_step(out_dir)
        if resumed_from is not None and not resume:
            raise InputError(
                f"output/{TRAINING_FOLDER}/{name} holds checkpoints of an earlier run (step "
                f"{resumed_from}); turn on resume to continue it, or choose another output_name."
            )
        dest = Path(folder_paths.get_folder_paths("loras")[0]) / f"{name}.safetensors"
        _check_lora_destination(dest)
        cfg = load_config(
            None,
            [
                f"method={method}",
                f"output_dir={out_dir}",
                f"output_name={name}",
                f"model.editor={files.folder or files.transformer_file}",
                f"model.vae={files.vae_file or ''}",
                f"model.text_encoder={files.text_encoder or ''}",
                f"model.dtype={dtype}",
                f"model.device={mm.get_torch_device()}",
                f"model.compile={compile}",
                f"data.manifest={manifest_path}",
                f"data.max_frames={max_frames}",
                f"data.height={height}",
                f"data.width={width}",
                f"lora.rank={rank}",
                f"lora.alpha={2 * rank}",
                f"optim.steps={steps}",
                f"optim.lr={learning_rate}",
                "optim.gradient_checkpointing=auto",  # a 1.3B DiT at 480p needs ~44 GiB without it
                f"rollout.group_size={group_size}",
                f"rewards.weights={json.dumps(weights)}",
                f"rewards.judge_vlm={judge}",
            ],
        )

        node, server = cls.hidden.unique_id, PromptServer.instance

        def send(data: dict) -> None:
            server.send_sync(EVENT, {"node": node, "total": steps, **data}, server.client_id)

        def on_log(step: int, metrics: dict) -> None:
            send({"step": step, **{k: _finite(metrics.get(k)) for k in CURVE_KEYS}})

        send({"start": True, "history": _curve(out_dir, resumed_from) if resume and resumed_from else []})
        progress = _TrainProgress(steps)
        if loaded_editor is not None:
            with lent_for_training(loaded_editor) as lent:
                trainer = Trainer(
                    cfg, progress=progress, should_stop=progress.stop_requested, on_log=on_log, editor=lent
                )
                result = await asyncio.to_thread(trainer.run, bool(resume))
        else:
            mm.unload_all_models()  # training wants the memory ComfyUI's models hold (ours included)
            mm.soft_empty_cache()
            trainer = Trainer(cfg, progress=progress, should_stop=progress.stop_requested, on_log=on_log)
            result = await asyncio.to_thread(trainer.run, bool(resume))
        if result.interrupted:  # a checkpoint is saved; `resume` continues it. Show the run as interrupted.
            send({"step": result.steps, "interrupted": True})
            mm.throw_exception_if_processing_interrupted()
            raise mm.InterruptProcessingException()
        _install_lora(result.lora_path, dest)
        text = _metrics_text(dest.name, method, result.steps, rank, result.last_metrics, out_dir)
        return io.NodeOutput(
            dest.name, text, ui={"text": [text], "viva_curve": [{"points": _curve(out_dir), "total": steps}]}
        )
