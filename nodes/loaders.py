"""Loader nodes: editor (DiT + VAE + UMT5), VLM (instructor / judge), LoRA, step cache. Declarations and calls only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from comfy_api.latest import io, ui

from ..viva_core.editor import (
    ATTENTION_BACKENDS,
    COMPILE_MODES,
    OFFLOAD_MODES,
    EditorOptions,
    available_attention_backends,
    load_editor,
)
from ..viva_core.errors import InputError
from ..viva_core.lora import check_lora_fits
from ..viva_core.runtime import DTYPE_NAMES
from ..viva_core.step_cache import DEFAULT_THRESHOLD, MAX_THRESHOLD, STEP_CACHE_METHODS, step_cache_for
from ..viva_core.vlm import load_vlm
from . import common as c
from .model_management import editor_host, vlm_host

DTYPES = ["auto", *DTYPE_NAMES]  # auto: bf16 on a GPU, fp32 on a CPU
FOLDER_TAG, FILE_TAG = "folder: ", "file: "


def editor_choices() -> list[str]:
    """The `editor` combo of VIVA Load Editor and VIVA Train LoRA: diffusers folders, then single-file DiTs."""
    return [FOLDER_TAG + f for f in c.editor_folders()] + [
        FILE_TAG + f for f in c.safetensors_files("diffusion_models")
    ]


@dataclass(frozen=True)
class EditorFiles:
    """Absolute paths behind an `editor` / `vae` / `text_encoder` choice: a folder, or a DiT file + VAE file."""

    folder: Optional[str]
    transformer_file: Optional[str]
    vae_file: Optional[str]
    text_encoder: Optional[str]


def resolve_editor(editor: str, vae: str, text_encoder: str) -> EditorFiles:
    """Turn the combo values into paths inside ComfyUI's model folders (names may not leave them)."""
    te = None if text_encoder == c.FROM_EDITOR else c.resolve_dir("text_encoders", text_encoder)
    if editor.startswith(FOLDER_TAG):
        return EditorFiles(c.resolve_dir("diffusers", editor[len(FOLDER_TAG) :]), None, None, te)
    if editor.startswith(FILE_TAG):
        if vae == c.FROM_EDITOR:
            raise InputError("a single-file DiT needs a VAE file: pick one in `vae` (models/vae).")
        return EditorFiles(
            None, c.resolve_file("diffusion_models", editor[len(FILE_TAG) :]), c.resolve_file("vae", vae), te
        )
    raise InputError(
        "no editor found: put a diffusers editor folder in models/diffusers or a Wan DiT file in "
        "models/diffusion_models, then refresh."
    )


class LoadEditor(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        editors = editor_choices()
        return io.Schema(
            node_id="VIVA_LoadEditor",
            display_name="VIVA Load Editor",
            category=c.CATEGORY,
            description="Loads a Wan-architecture video editor (DiT whose input is noise + source latents, Wan VAE, "
            "optional UMT5 text encoder) from local files.",
            inputs=[
                io.Combo.Input(
                    "editor",
                    options=editors or [c.NONE],
                    tooltip="A diffusers folder under models/diffusers "
                    "(e.g. Lucy-Edit-Dev) or a single-file Wan DiT under models/diffusion_models.",
                ),
                io.Combo.Input(
                    "vae",
                    options=[c.FROM_EDITOR] + c.safetensors_files("vae"),
                    tooltip="Wan2.1 VAE file for a single-file DiT; folders use their own vae/.",
                ),
                io.Combo.Input(
                    "text_encoder",
                    options=[c.FROM_EDITOR] + c.text_encoder_folders(),
                    tooltip="UMT5 folder (transformers format) under models/text_encoders. Without one, "
                    "connect CONDITIONING from CLIP Text Encode to the Encode Instruction node.",
                ),
                io.Combo.Input(
                    "dtype",
                    options=DTYPES,
                    default="auto",
                    tooltip="Compute dtype of the DiT. auto: bf16 on a GPU, fp32 on a CPU (bf16 is slow "
                    "there). Wan needs bf16 or fp32 (fp16 overflows).",
                ),
                io.Boolean.Input(
                    "fp8_storage",
                    default=False,
                    tooltip="Store DiT weights in fp8 (half the VRAM of bf16), compute in dtype.",
                ),
                io.Combo.Input(
                    "offload",
                    options=list(OFFLOAD_MODES),
                    default="none",
                    tooltip="none / model: ComfyUI's model management loads each part onto the GPU when "
                    "it runs and offloads it when memory is needed, as for native models. block: "
                    "DiT blocks are streamed from RAM one at a time (least VRAM, slowest). block_prefetch: "
                    "the next block is copied while the current one runs (about 2x faster than block, more "
                    "VRAM, the DiT pinned in RAM).",
                ),
                io.Combo.Input(
                    "attention",
                    options=[a for a in ATTENTION_BACKENDS if a in available_attention_backends()],
                    default="sdpa",
                    tooltip="Attention kernel; only the ones usable on this machine are listed.",
                ),
                io.Combo.Input(
                    "compile",
                    options=list(COMPILE_MODES),
                    default="off",
                    tooltip="torch.compile: 'blocks' compiles one transformer block (fast to compile), "
                    "'full' the whole DiT. The first run pays the compile time.",
                ),
                io.Boolean.Input("vae_tiling", default=False, tooltip="Decode/encode in tiles for large frames."),
                io.Boolean.Input(
                    "allow_t2v",
                    default=False,
                    tooltip="Accept a text-to-video DiT by adding zero source "
                    "channels. It will ignore the source until fine-tuned with SFT.",
                ),
            ],
            outputs=[
                c.Editor.Output(
                    "editor_out",
                    display_name="editor",
                    tooltip="The loaded editor; chain LoRA loaders after it, then Encode Instruction and Edit Video.",
                ),
                io.String.Output(
                    "info", display_name="info", tooltip="What was loaded: layers, channels, VAE, dtype, device."
                ),
            ],
        )

    @classmethod
    def execute(
        cls,
        editor: str,
        vae: str,
        text_encoder: str,
        dtype: str,
        fp8_storage: bool,
        offload: str,
        attention: str,
        compile: str,
        vae_tiling: bool,
        allow_t2v: bool,
    ) -> io.NodeOutput:
        options = EditorOptions(
            dtype=dtype,
            offload=offload,
            attention=attention,
            compile=compile,
            fp8_storage=fp8_storage,
            vae_tiling=vae_tiling,
            allow_t2v=allow_t2v,
            device=str(c.mm.get_torch_device()),
        )
        files = resolve_editor(editor, vae, text_encoder)
        loaded = load_editor(
            files.folder,
            transformer_file=files.transformer_file,
            vae_file=files.vae_file,
            text_encoder_folder=files.text_encoder,
            options=options,
            host=editor_host,
        )
        info = loaded.describe()
        return io.NodeOutput(loaded, info, ui=ui.PreviewText(info))


class LoadVLM(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VIVA_LoadVLM",
            display_name="VIVA Load VLM",
            category=c.CATEGORY,
            description="Loads a vision-language model folder (Qwen2.5-VL, Qwen3-VL or any image-text-to-text model "
            "with a chat template) for the instructor and the self-reflection judge.",
            inputs=[
                io.Combo.Input(
                    "model",
                    options=c.vlm_folders() or [c.NONE],
                    tooltip="A transformers folder under models/vlm (sub-folders are scanned).",
                ),
                io.Combo.Input(
                    "dtype",
                    options=DTYPES,
                    default="auto",
                    tooltip="auto: bf16 on a GPU, fp32 on a CPU. fp16 can give non-finite judge scores.",
                ),
            ],
            outputs=[
                c.VLM.Output(
                    "vlm",
                    display_name="vlm",
                    tooltip="For Encode Instruction (instructor/rewrite), Judge and Best-of-N.",
                )
            ],
        )

    @classmethod
    def execute(cls, model: str, dtype: str) -> io.NodeOutput:
        if model == c.NONE:
            raise InputError(
                "no VLM found: put a model folder (config.json, *.safetensors, tokenizer, processor) "
                "under models/vlm and refresh."
            )
        return io.NodeOutput(
            load_vlm(
                c.resolve_dir(c.VLM_FOLDER, model), dtype=dtype, device=str(c.mm.get_torch_device()), host=vlm_host()
            )
        )


class LoraLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VIVA_LoraLoader",
            display_name="VIVA LoRA Loader",
            category=c.CATEGORY,
            description="Adds a LoRA to the editor (chain several). Reads ComfyUI/original Wan, kohya/musubi and "
            "diffusers/PEFT keys; merged only while sampling, so the base weights stay untouched.",
            inputs=[
                c.Editor.Input("editor", tooltip="The editor from VIVA Load Editor (or another LoRA loader)."),
                io.Combo.Input(
                    "lora", options=c.safetensors_files("loras") or [c.NONE], tooltip="File in models/loras."
                ),
                io.Float.Input("strength", default=1.0, min=-4.0, max=4.0, step=0.05, tooltip="0 turns it off."),
            ],
            outputs=[
                c.Editor.Output(
                    "editor_with_lora",
                    display_name="editor",
                    tooltip="The same editor with this LoRA added to its stack.",
                ),
                io.String.Output(
                    "key_report", display_name="key_report", tooltip="How the file's keys matched the DiT's modules."
                ),
            ],
        )

    @classmethod
    def execute(cls, editor, lora: str, strength: float) -> io.NodeOutput:
        if lora == c.NONE:
            raise InputError("no LoRA found in models/loras; put a .safetensors LoRA there and refresh.")
        path = c.resolve_file("loras", lora)
        text = check_lora_fits(path, editor.transformer).summary()
        return io.NodeOutput(editor.with_lora(path, strength), text, ui=ui.PreviewText(text))


class StepCache(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VIVA_StepCache",
            display_name="VIVA Step Cache",
            category=c.CATEGORY,
            description="Makes the editor reuse DiT work between sampling steps (diffusers' First Block Cache): "
            "faster, at some cost in quality (measured in bench/RESULTS.md). The hooks are on the DiT only while "
            "an edit samples, so other branches of the graph are unaffected.",
            inputs=[
                c.Editor.Input("editor", tooltip="The editor from VIVA Load Editor (or a LoRA loader)."),
                io.Combo.Input(
                    "method",
                    options=list(STEP_CACHE_METHODS),
                    default="off",
                    tooltip="off: every step runs the whole DiT. first_block: each DiT call runs the first block; "
                    "when its output changed little since the last full call, the other blocks are skipped and "
                    "their cached contribution reused.",
                ),
                io.Float.Input(
                    "threshold",
                    default=DEFAULT_THRESHOLD,
                    min=0.0,
                    max=MAX_THRESHOLD,
                    step=0.01,
                    tooltip="first_block: the relative change of the first block's residual below which a call "
                    "reuses the cache. 0 computes every call (the uncached edit); higher skips more calls: faster, "
                    "further from the full edit.",
                ),
            ],
            outputs=[
                c.Editor.Output(
                    "editor_with_step_cache",
                    display_name="editor",
                    tooltip="The same editor sampling with this step cache (the edit's report counts the DiT calls "
                    "that ran all blocks).",
                ),
            ],
        )

    @classmethod
    def execute(cls, editor, method: str, threshold: float) -> io.NodeOutput:
        return io.NodeOutput(editor.with_step_cache(step_cache_for(method, threshold)))
