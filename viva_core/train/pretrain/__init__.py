"""Small models from scratch on `viva synth` clips, with the project's own code (`viva pretrain STAGE CONFIG`).

Stages, in order (each writes real-format folders that the normal loaders read):
- vae:    a Wan-architecture VAE (diffusers AutoencoderKLWan, 8x space / 4x time) -> `<out>/vae/`, with the
          per-channel latent mean/std measured on the data written into its config;
- editor: a Wan DiT editor (source channel-concatenated) + a UMT5 text encoder with a word-level tokenizer, and
          optionally a Qwen2.5-VL-architecture instructor + token refiner, all trained jointly from scratch with
          VIVA's edit-mask-weighted flow-matching loss -> `<out>/editor/` (diffusers folder), `<out>/instructor/`
          (VLM folder), `<out>/refiner.safetensors`;
- judge_data: an editor's own outputs on the training clips, labelled by the benchmark's verifiers, for the judge
          -> `<out>/judge_data/`;
- judge:  a Qwen2.5-VL-architecture judge trained to answer the four ReViSE questions, with labels from the exact
          verifiers of `viva_core.eval` on ground-truth edits and corrupted ones -> `<out>/judge/` (VLM folder).
Edit-GRPO / RWO LoRAs on the editor then come from `viva train`. Training feeds every model through the same
calls inference uses (`Judge.messages`, `Instructor.messages`, the chat processor, `pad_tokens`), so what is
learned here is what the loaders serve.

Modules, each importing only those above it: `config` (the TOML sections, `ScratchConfig`), `clips` (the training
clips), `tokenizers` (word-level tokenizers), `models` (factories of the small models and their saving), `loop` (the
training loop the stages share), then one per stage: `vae`, `editor`, `judge`.
"""

from __future__ import annotations

from pathlib import Path

from ...runtime import ProgressFn, no_progress
from .clips import ClipSet, frames_float, load_clip_set, operation_weights
from .config import (
    STAGES,
    DataSection,
    EditorSection,
    JudgeSection,
    OptimSection,
    ScratchConfig,
    VaeSection,
    VLMSection,
    load_scratch_config,
)
from .editor import EditorData, conditioning_tokens, grounding_targets, instructor_hidden, latent_masks, train_editor
from .judge import CANDIDATE_LABELS, CANDIDATES, CandidateSet, _JudgeData, candidate_aucs, corrupt, train_judge
from .judge_data import EditorOutputs, load_editor_outputs, write_judge_data
from .models import new_vae, resample_vision_patch, write_vlm_folder
from .tokenizers import prompt_texts, save_tokenizer, vocabulary, word_tokenizer
from .vae import train_vae

__all__ = [
    "CANDIDATES",
    "CandidateSet",
    "CANDIDATE_LABELS",
    "ClipSet",
    "DataSection",
    "EditorData",
    "EditorOutputs",
    "EditorSection",
    "JudgeSection",
    "OptimSection",
    "STAGES",
    "ScratchConfig",
    "VLMSection",
    "VaeSection",
    "_JudgeData",
    "conditioning_tokens",
    "candidate_aucs",
    "corrupt",
    "frames_float",
    "grounding_targets",
    "instructor_hidden",
    "latent_masks",
    "load_clip_set",
    "load_editor_outputs",
    "load_scratch_config",
    "new_vae",
    "operation_weights",
    "prompt_texts",
    "resample_vision_patch",
    "run_stage",
    "save_tokenizer",
    "train_editor",
    "train_judge",
    "train_vae",
    "vocabulary",
    "word_tokenizer",
    "write_judge_data",
    "write_vlm_folder",
]


def run_stage(cfg: ScratchConfig, progress: ProgressFn = no_progress) -> Path:
    stages = {"vae": train_vae, "editor": train_editor, "judge_data": write_judge_data, "judge": train_judge}
    return stages[cfg.stage](cfg, progress)
