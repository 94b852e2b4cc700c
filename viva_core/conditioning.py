"""What the DiT is conditioned on, in the three modes users pick from.

- text: UMT5 tokens of the instruction (Lucy-Edit style);
- instructor: UMT5 tokens + VLM instructor tokens through the trained token refiner (VIVA);
- rewrite: the VLM rewrites the instruction into a grounded target description, encoded by UMT5 (no extra weights).
"""

from __future__ import annotations

import logging
from typing import Optional

import torch

from .editor import Conditioning, Editor
from .errors import InputError

MODES = ("text", "instructor", "rewrite")
log = logging.getLogger(__name__)


def build_conditioning(
    editor: Editor,
    instruction: str,
    first_frame: torch.Tensor,
    *,
    mode: str = "text",
    vlm=None,
    refiner_path: Optional[str] = None,
    reference: Optional[torch.Tensor] = None,
    text_cond: Optional[Conditioning] = None,
) -> tuple[Conditioning, str]:
    """Returns (conditioning, the prompt the text encoder saw). `text_cond` replaces UMT5 encoding of the
    instruction (ComfyUI's CLIP Text Encode output)."""
    if mode not in MODES:
        raise InputError(f"mode '{mode}' is not one of {MODES}.")
    if not instruction.strip():
        raise InputError("the instruction is empty; say what to change, e.g. 'replace the dog with a fox'.")
    if mode == "text":
        return (text_cond or editor.encode_text(instruction)), instruction
    if vlm is None:
        raise InputError(f"mode '{mode}' needs a VLM (load one with VIVA Load VLM / pass --instructor).")
    from .instructor import Instructor, load_refiner

    if mode == "rewrite":
        prompt = Instructor(vlm, None).rewrite(instruction, first_frame, reference)
        log.info("instructor rewrote %r as %r", instruction, prompt)
        return editor.encode_text(prompt), prompt
    if not refiner_path:
        raise InputError(
            "mode 'instructor' needs a trained token refiner (.safetensors). Train one with "
            "`viva train` (method sft), or use mode 'rewrite', which needs no extra weights."
        )
    tokens = Instructor(vlm, load_refiner(refiner_path)).encode(instruction, first_frame, reference)
    base = text_cond or editor.encode_text(instruction)
    return base.concat(Conditioning(tokens, "instructor tokens")), instruction


def negative_conditioning(editor: Editor, negative_prompt: str) -> Optional[Conditioning]:
    """UMT5 tokens of the negative prompt, or None when the editor has no text encoder (then CFG uses zeros); after
    Editor.release_text_encoder, encode_text's error (zeros would silently change the edit)."""
    if editor.text_encoder is None and not editor.text_encoder_released:
        return None
    return editor.encode_text(negative_prompt)
