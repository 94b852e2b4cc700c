"""VIVA's VLM instructor: instruction + first frame (+ reference image) -> grounded tokens for the DiT.

Two modes:
- tokens (VIVA): the frozen VLM reads the chat prompt; its last hidden states over the whole sequence,
  `hidden_states[-1]` [1, L, H_vlm] (fp32), go through a trainable `TokenRefiner` to [1, L, out_dim], the
  DiT's cross-attention width (Wan text_dim = 4096). The refiner is trained by `viva train` (method sft).
- rewrite (no extra weights): the VLM writes a grounded description of the edited video, which the DiT's
  own text encoder then encodes.

VLM results are cached per loaded model (LRU keyed by a hash of the instruction and the image bytes), so
re-running a graph with the same inputs costs no VLM forward; the refiner is applied on every call.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import weakref
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from .errors import InputError, ModelLoadError
from .safe_io import load_safetensors, read_metadata_json, save_safetensors_atomic
from .vlm import VLM, build_inputs, forward, generate_text, to_pil_image

logger = logging.getLogger(__name__)

REFINER_FORMAT = "viva-token-refiner"

# The instructor prompt. A trained refiner expects exactly this wording: changing it means retraining.
INSTRUCTOR_SYSTEM_PROMPT = (
    "Describe the key features of the input video frame (color, shape, size, texture, objects, background), "
    "then explain how the user's edit instruction should alter or modify the video. Generate a new video that "
    "meets the user's requirements while keeping everything else consistent with the original video."
)
REWRITE_PROMPT = (
    "You see the first frame of a video{reference}. Rewrite the edit instruction into a full description of "
    "the edited video: the scene, subjects, colors, lighting and motion as they should appear after the edit, "
    "keeping everything the instruction does not change as it is. Answer with the description only.\n"
    "Instruction: {instruction}"
)


# ------------------------------------------------------------------------------------------- token refiner


@dataclass
class RefinerConfig:
    in_dim: int  # VLM hidden size
    out_dim: int = 4096  # DiT text_dim
    hidden_dim: int = 1024
    depth: int = 2
    heads: int = 8

    def __post_init__(self) -> None:
        sizes = {k: getattr(self, k) for k in ("in_dim", "out_dim", "hidden_dim", "depth", "heads")}
        wrong = [k for k, v in sizes.items() if isinstance(v, bool) or not isinstance(v, int)]
        if wrong:  # e.g. depth 1.5 from forged metadata: it would fail later, inside nn.ModuleList
            raise InputError(f"token refiner sizes must be whole numbers; {', '.join(wrong)} in {sizes} are not.")
        if min(self.in_dim, self.out_dim, self.hidden_dim, self.heads) < 1 or self.depth < 0:
            raise InputError(f"token refiner sizes must be positive, got {self}.")
        if self.hidden_dim % self.heads:
            raise InputError(f"token refiner hidden_dim {self.hidden_dim} is not divisible by heads {self.heads}.")


class TokenRefiner(nn.Module):
    """Linear in -> `depth` pre-norm transformer encoder layers (GELU) -> LayerNorm -> Linear out."""

    def __init__(self, config: RefinerConfig):
        super().__init__()
        self.config = config
        self.proj_in = nn.Linear(config.in_dim, config.hidden_dim)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                config.hidden_dim,
                config.heads,
                dim_feedforward=4 * config.hidden_dim,
                dropout=0.0,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(config.hidden_dim)
        self.proj_out = nn.Linear(config.hidden_dim, config.out_dim)

    def forward(self, hidden: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """[B, L, in_dim] -> [B, L, out_dim]; `padding_mask` [B, L] is True where a token is padding."""
        x = self.proj_in(hidden)
        for block in self.blocks:
            x = block(x, src_key_padding_mask=padding_mask)
        return self.proj_out(self.norm(x))


def save_refiner(path: str | os.PathLike, refiner: TokenRefiner, metadata: dict[str, Any] | None = None) -> Path:
    """Write the refiner as .safetensors (config JSON in `__metadata__["config"]`), atomically."""
    p = Path(path)
    if p.suffix.lower() != ".safetensors":
        raise InputError(f"{p}: the token refiner is saved as .safetensors; use that suffix.")
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    meta.update(format=REFINER_FORMAT, config=json.dumps(asdict(refiner.config)))
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in refiner.state_dict().items()}
    return save_safetensors_atomic(p, tensors, meta)


def load_refiner(
    path: str | os.PathLike, *, in_dim: int | None = None, device: str | torch.device = "cpu"
) -> TokenRefiner:
    """Read a refiner written by `save_refiner`; `in_dim` (the VLM hidden size) is checked when given."""
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(
            f"{p}: token refiner file not found. The refiner must be trained first with "
            '`viva train` (method sft), or use instructor mode "rewrite", which needs no refiner.'
        )
    tensors, metadata = load_safetensors(p, "token refiner")
    config_dict = read_metadata_json(metadata, "config")
    if config_dict is None:
        raise ModelLoadError(
            f"{p}: not a token refiner file (no 'config' in its safetensors metadata). Use a "
            "refiner written by `viva train` (method sft)."
        )
    try:
        config = RefinerConfig(**config_dict)
    except (TypeError, InputError) as e:
        raise ModelLoadError(f"{p}: the token refiner config is invalid ({e}).") from e
    if in_dim is not None and config.in_dim != in_dim:
        raise ModelLoadError(_in_dim_message(p, config.in_dim, in_dim))
    refiner = TokenRefiner(config)
    try:
        refiner.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise ModelLoadError(f"{p}: the token refiner weights do not match its config ({e}).") from e
    return refiner.to(device).eval()


def _in_dim_message(where: object, refiner_in: int, vlm_hidden: int) -> str:
    return (
        f"{where}: the token refiner expects VLM hidden size {refiner_in}, but the VLM's hidden size is "
        f"{vlm_hidden}. Use the refiner trained for this VLM."
    )


# ---------------------------------------------------------------------------------------------- instructor


class _LRU:
    def __init__(self, size: int):
        self.size, self.items = size, OrderedDict()

    def get(self, key: str):
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        return None

    def put(self, key: str, value) -> None:
        self.items[key] = value
        self.items.move_to_end(key)
        while len(self.items) > self.size:
            self.items.popitem(last=False)


# One cache per loaded VLM model, shared by every Instructor built on it (nodes build one per run).
_CACHES: weakref.WeakKeyDictionary[nn.Module, _LRU] = weakref.WeakKeyDictionary()
CACHE_SIZE = 16


def _cache_for(vlm: VLM) -> _LRU:
    cache = _CACHES.get(vlm.model)
    if cache is None:
        cache = _CACHES[vlm.model] = _LRU(CACHE_SIZE)
    return cache


def _key(kind: str, instruction: str, images: list[Image.Image | None], *extra: object) -> str:
    h = hashlib.sha256()
    for part in (kind, instruction, *map(str, extra)):
        h.update(part.encode("utf-8"))
        h.update(b"\0")
    for img in images:
        if img is None:
            h.update(b"none\0")
        else:
            h.update(f"{img.width}x{img.height}\0".encode())
            h.update(img.tobytes())
    return h.hexdigest()


class Instructor:
    """The VLM in its instructor role; `refiner` is needed for `encode` only (moved to the VLM's device)."""

    def __init__(self, vlm: VLM, refiner: TokenRefiner | None = None):
        if refiner is not None:
            if refiner.config.in_dim != vlm.hidden_size:
                raise ModelLoadError(_in_dim_message(vlm.path, refiner.config.in_dim, vlm.hidden_size))
            refiner = refiner.to(vlm.device) if vlm.host is None else refiner  # a host loads it in `encode`
        self.vlm = vlm
        self.refiner = refiner

    @staticmethod
    def _images(first_frame, reference_image) -> tuple[Image.Image, Image.Image | None]:
        if isinstance(first_frame, torch.Tensor) and first_frame.ndim == 4:
            first_frame = first_frame[:1]  # a whole clip: its first frame
        if isinstance(reference_image, torch.Tensor) and reference_image.ndim == 4:
            reference_image = reference_image[:1]
        return to_pil_image(first_frame), (None if reference_image is None else to_pil_image(reference_image))

    @staticmethod
    def messages(instruction: str, frame: Image.Image, reference: Image.Image | None) -> list[dict]:
        content: list[dict] = [
            {"type": "text", "text": "First frame of the source video: "},
            {"type": "image", "image": frame},
        ]
        if reference is not None:
            content += [{"type": "text", "text": "\nReference image: "}, {"type": "image", "image": reference}]
        content.append({"type": "text", "text": f"\nEdit instruction: {instruction}"})
        return [{"role": "system", "content": INSTRUCTOR_SYSTEM_PROMPT}, {"role": "user", "content": content}]

    def hidden_states(self, instruction: str, first_frame, reference_image=None) -> torch.Tensor:
        """The VLM's last hidden states over the whole prompt, [1, L, H_vlm] fp32 (cached; a copy is returned)."""
        instruction = _check_instruction(instruction)
        frame, reference = self._images(first_frame, reference_image)
        cache = _cache_for(self.vlm)
        key = _key("hidden", instruction, [frame, reference])
        hidden = cache.get(key)
        if hidden is None:
            inputs = build_inputs(self.vlm, self.messages(instruction, frame, reference), add_generation_prompt=True)
            with torch.no_grad():
                out = forward(self.vlm, inputs, output_hidden_states=True)
            hidden = out.hidden_states[-1].float()
            cache.put(key, hidden)
        return hidden.clone()

    def encode(self, instruction: str, first_frame, reference_image=None) -> torch.Tensor:
        """Grounded tokens [1, L, out_dim] (refiner dtype, VLM device) for the DiT's cross-attention."""
        if self.refiner is None:
            raise ModelLoadError(
                "the instructor has no token refiner: load one (VIVA Load Token Refiner / "
                '--refiner), train one with `viva train` (method sft), or use mode "rewrite".'
            )
        hidden = self.hidden_states(instruction, first_frame, reference_image)
        if self.vlm.host is not None:
            self.vlm.host.load(self.refiner)
        param = next(self.refiner.parameters())
        return self.refiner(hidden.to(device=param.device, dtype=param.dtype))

    def rewrite(self, instruction: str, first_frame, reference_image=None, max_new_tokens: int = 77) -> str:
        """Mode b: the VLM's grounded description of the edited video (greedy; cached). Falls back to the
        instruction itself, with a warning, when the VLM writes nothing."""
        instruction = _check_instruction(instruction)
        frame, reference = self._images(first_frame, reference_image)
        cache = _cache_for(self.vlm)
        key = _key("rewrite", instruction, [frame, reference], max_new_tokens)
        text = cache.get(key)
        if text is None:
            prompt = REWRITE_PROMPT.format(
                instruction=instruction, reference=" and a reference image" if reference is not None else ""
            )
            content: list[dict] = [{"type": "image", "image": frame}]
            if reference is not None:
                content.append({"type": "image", "image": reference})
            content.append({"type": "text", "text": prompt})
            text = generate_text(self.vlm, [{"role": "user", "content": content}], max_new_tokens=max_new_tokens)
            cache.put(key, text)
        if not text:
            logger.warning("the VLM wrote an empty description for %r; using the instruction itself.", instruction)
            return instruction
        return text


def _check_instruction(instruction: str) -> str:
    if not isinstance(instruction, str) or not instruction.strip():
        raise InputError("the instruction is empty; say what to change, e.g. 'replace the dog with a fox'.")
    return instruction.strip()
