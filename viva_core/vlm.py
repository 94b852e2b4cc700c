"""The vision-language model (VLM) shared by the instructor and the judge: folder checks, loading, chat inputs.

A VLM is an HF-style folder (config.json, *.safetensors, tokenizer, chat template, image preprocessor) that
`transformers.AutoModelForImageTextToText` loads: Qwen2.5-VL, Qwen3-VL, or any other image-text-to-text
model with a chat template. Loading is local only and safetensors only. Video frames are always fed as
images (Qwen's video processor needs torchvision); without torchvision the processor is built without its
video part from the same files.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from .compat import image_text_to_text_model_types, processor_class_for, qwen2_vl_position_ids, qwen2_vl_vision
from .errors import InputError, ModelLoadError
from .runtime import ModelHost, parse_device, parse_dtype
from .safe_io import PICKLE_SUFFIXES
from .vision_attention import use_packed_vision_attention

logger = logging.getLogger(__name__)

SUPPORTED_VLMS = (
    "Qwen2.5-VL, Qwen3-VL, or any model that transformers' AutoModelForImageTextToText loads "
    "and whose folder has a chat template"
)

# Special tokens and chat template of Qwen2-VL / Qwen2.5-VL, for folders this project builds (tests, small models).
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# The chat template of Qwen2-VL / Qwen2.5-VL (images as <|vision_start|><|image_pad|><|vision_end|>).
QWEN_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# An image part of a chat may carry the next video frame under this key: `processor_inputs` puts the two in one
# temporal patch (`temporal_pairs`); the chat template ignores the key.
PAIRED_WITH = "paired_with"
# Files that make a folder a complete VLM; each part is satisfied by any one of its files.
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model")
_PREPROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
_CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")


@dataclass
class VLM:
    """A loaded, frozen VLM: the model in eval mode on `device`/`dtype` and its processor."""

    model: Any
    processor: Any
    path: str
    device: torch.device
    dtype: torch.dtype
    host: Optional[ModelHost] = None  # places the model when an app manages memory (ComfyUI); None: it stays on device

    @property
    def tokenizer(self):
        return getattr(self.processor, "tokenizer", self.processor)

    @property
    def hidden_size(self) -> int:
        """Width of the language model's hidden states (what `hidden_states[-1]` has as last dimension)."""
        return int(self.model.config.get_text_config().hidden_size)


# --------------------------------------------------------------------------------------------- folder checks


def _read_config(folder: Path) -> dict:
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise ModelLoadError(
            f"{folder}: VLM folder has no config.json. Point to the folder of a downloaded "
            f"model (e.g. Qwen2.5-VL-3B-Instruct) that contains config.json."
        )
    try:
        return json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{cfg_path}: cannot read config.json ({e}). Download the model folder again.") from e


def _has_chat_template(folder: Path) -> bool:
    if any((folder / name).is_file() for name in _CHAT_TEMPLATE_FILES):
        return True
    if (folder / "additional_chat_templates").is_dir():
        return True
    for name in ("tokenizer_config.json", "processor_config.json"):
        f = folder / name
        if f.is_file():
            try:
                if json.loads(f.read_text(encoding="utf-8")).get("chat_template"):
                    return True
            except (OSError, json.JSONDecodeError):
                pass
    return False


def check_vlm_folder(path: str | os.PathLike) -> Path:
    """Check that `path` is a complete, safetensors, image-text-to-text model folder; return it as a Path.

    Raises ModelLoadError naming the folder and the missing or wrong part."""
    folder = Path(path)
    if not folder.is_dir():
        raise ModelLoadError(
            f"{folder}: VLM folder not found. Give the path of a model folder "
            f"(config.json, *.safetensors, tokenizer, preprocessor_config.json)."
        )
    config = _read_config(folder)
    model_type = config.get("model_type")
    known = image_text_to_text_model_types()
    if known is not None and model_type not in known:
        found = f"model_type '{model_type}'" + (
            f" ({', '.join(config['architectures'])})" if config.get("architectures") else ""
        )
        raise ModelLoadError(
            f"{folder}: config.json describes {found}, which is not an image-text-to-text "
            f"model. Supported: {SUPPORTED_VLMS}."
        )
    files = [p.name for p in folder.iterdir() if p.is_file()]
    if not any(name.endswith(".safetensors") for name in files):
        pickles = sorted(n for n in files if n.lower().endswith(PICKLE_SUFFIXES))
        if pickles:
            raise ModelLoadError(
                f"{folder}: the weights are in pickle format ({', '.join(pickles)}), which is "
                "refused because loading it can run arbitrary code. Use the model's .safetensors "
                "release or convert the weights to .safetensors."
            )
        raise ModelLoadError(
            f"{folder}: no weights (*.safetensors) in the VLM folder. Download the model's "
            "model*.safetensors files into it."
        )
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        raise ModelLoadError(
            f"{folder}: no tokenizer in the VLM folder (expected one of "
            f"{', '.join(_TOKENIZER_FILES)}). Download the tokenizer files too."
        )
    if not _has_chat_template(folder):
        raise ModelLoadError(
            f"{folder}: no chat template in the VLM folder (expected chat_template.jinja, "
            "chat_template.json, or 'chat_template' in tokenizer_config.json). Use an "
            "instruction-tuned (-Instruct) model folder."
        )
    if not any((folder / name).is_file() for name in _PREPROCESSOR_FILES):
        raise ModelLoadError(
            f"{folder}: no image preprocessor in the VLM folder (expected "
            f"{' or '.join(_PREPROCESSOR_FILES)}). Download it with the model."
        )
    return folder


def find_vlm_folders(root: str | os.PathLike, *, max_depth: int = 4) -> list[str]:
    """Sub-folders of `root` (up to `max_depth` levels, links followed) that look like VLMs, sorted.

    A folder looks like a VLM when its config.json has a `vision_config` or it has an image preprocessor
    file. Folders inside a found VLM and hidden folders are not searched."""
    root = Path(root)
    if not root.is_dir():
        return []
    found: list[str] = []
    base_depth = len(root.parts)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if "config.json" in filenames and _looks_like_vlm(here, filenames):
            found.append(str(here))
            dirnames[:] = []
            continue
        if len(here.parts) - base_depth >= max_depth:
            dirnames[:] = []
    return sorted(found)


def _looks_like_vlm(folder: Path, filenames: Sequence[str]) -> bool:
    if any(name in filenames for name in _PREPROCESSOR_FILES):
        return True
    try:
        return "vision_config" in json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False


# --------------------------------------------------------------------------------------------------- loading


def load_vlm(
    path: str | os.PathLike,
    *,
    dtype: str | torch.dtype = "bf16",
    device: str | torch.device = "auto",
    host: Optional[ModelHost] = None,
) -> VLM:
    """Load a VLM folder (local files only, safetensors only) frozen in eval mode on `device`; with a `host`
    (ComfyUI's model management) it stays on the CPU until the host loads it for a forward."""
    folder = check_vlm_folder(path)
    dev = parse_device(device)
    torch_dtype = parse_dtype(dtype, dev)
    from transformers import AutoModelForImageTextToText

    try:
        model = AutoModelForImageTextToText.from_pretrained(
            folder, local_files_only=True, dtype=torch_dtype, use_safetensors=True
        )
    except Exception as e:  # transformers raises OSError / ValueError / KeyError / RuntimeError on bad folders
        raise ModelLoadError(
            f"{folder}: cannot load the VLM ({type(e).__name__}: {e}). Check that the folder is "
            f"complete and that the installed transformers supports it."
        ) from e
    model.requires_grad_(False)
    model.eval().to(dev if host is None else "cpu")
    use_packed_vision_attention(model)
    processor = _load_processor(folder)
    return VLM(model=model, processor=processor, path=str(folder), device=dev, dtype=torch_dtype, host=host)


def _load_processor(folder: Path):
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
    except ImportError as e:
        if "torchvision" not in str(e).lower():
            raise ModelLoadError(f"{folder}: cannot load the processor ({e}).") from e
        logger.info(
            "%s: torchvision is not installed; loading the processor without its video part "
            "(frames are fed as images).",
            folder,
        )
        processor = _image_only_processor(folder)
    except Exception as e:
        raise ModelLoadError(f"{folder}: cannot load the processor ({type(e).__name__}: {e}).") from e
    if getattr(processor, "chat_template", None) is None and getattr(processor, "tokenizer", None) is not None:
        processor.chat_template = processor.tokenizer.chat_template
    if getattr(processor, "chat_template", None) is None:
        raise ModelLoadError(f"{folder}: the processor has no chat template. Use an instruction-tuned model folder.")
    return processor


def _image_only_processor(folder: Path):
    """The model's processor class built from its tokenizer and image processor, without a video processor.

    Multimodal processors (Qwen2.5-VL, Qwen3-VL) require a video processor, which requires torchvision; we
    never feed videos, so a subclass whose signature lacks `video_processor` is built instead."""
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        processor_cls = processor_class_for(config)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        image_processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    except Exception as e:
        raise ModelLoadError(
            f"{folder}: cannot load the processor without torchvision ({type(e).__name__}: {e}). "
            "Install torchvision or use a Qwen2.5-VL / Qwen3-VL folder."
        ) from e

    class ImageOnlyProcessor(processor_cls):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template)

    ImageOnlyProcessor.__name__ = ImageOnlyProcessor.__qualname__ = f"ImageOnly{processor_cls.__name__}"
    processor = ImageOnlyProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=tokenizer.chat_template
    )
    processor.video_processor = None
    return processor


# ---------------------------------------------------------------------------------------------- chat inputs


def to_pil_image(image: torch.Tensor | Image.Image, *, max_side: int | None = None) -> Image.Image:
    """One frame [H,W,C] or [1,H,W,C] float 0..1 (or a PIL image) -> RGB PIL image, shrunk to `max_side`."""
    if isinstance(image, Image.Image):
        pil = image.convert("RGB")
    else:
        if not isinstance(image, torch.Tensor):
            raise InputError(f"expected an image tensor [H,W,C] or a PIL image, got {type(image).__name__}.")
        t = image[0] if image.ndim == 4 and image.shape[0] == 1 else image
        if t.ndim != 3 or t.shape[-1] not in (1, 3, 4):
            raise InputError(f"expected one image [H,W,C] with C in (1,3,4), got shape {tuple(image.shape)}.")
        arr = (t.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        if arr.shape[-1] == 1:
            arr = np.repeat(arr, 3, axis=-1)
        pil = Image.fromarray(np.ascontiguousarray(arr[..., :3]))  # uint8 [H,W,3] -> RGB
    size = shrunk_size(pil.width, pil.height, max_side)
    return pil if size == pil.size else pil.resize(size, Image.BICUBIC)


def shrunk_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """(width, height) of an image that `to_pil_image` fits into `max_side` (unchanged when it fits)."""
    if max_side is None or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def fit_max_side(images: torch.Tensor, max_side: int | None) -> torch.Tensor:
    """`to_pil_image`'s shrink in torch, differentiable: [N,H,W,C] 0..1 fit into `max_side` (bicubic, antialiased;
    PIL's resampling up to rounding), unchanged when it already fits."""
    h, w = images.shape[1:3]
    width, height = shrunk_size(w, h, max_side)
    if (width, height) == (w, h):
        return images
    out = torch.nn.functional.interpolate(
        images.permute(0, 3, 1, 2), size=(height, width), mode="bicubic", antialias=True
    )
    return out.permute(0, 2, 3, 1).clamp(0, 1)


def _grid_size(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """The size a Qwen2-VL image processor resizes an image to (its `smart_resize`): sides rounded to `factor`,
    scaled into [min_pixels, max_pixels], aspect kept."""
    h, w = max(factor, round(height / factor) * factor), max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h, w = (
            max(factor, math.floor(height / beta / factor) * factor),
            max(factor, math.floor(width / beta / factor) * factor),
        )
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


def image_patches(processor, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [N,H,W,3] 0..1 -> (pixel_values [patches, 3 * t * p * p], image_grid_thw [N, 3]) as a Qwen2-VL-family
    image processor lays them out (resized to its grid, rescaled, normalized, each image repeated over the temporal
    patch), in torch, so that gradients reach the pixels: the judge as a differentiable reward. The same values as
    the processor for images already at its grid size (the bundled judge's 64x64 frames); a resize is bicubic and
    antialiased, PIL's up to rounding."""
    ip = getattr(processor, "image_processor", processor)
    if not all(hasattr(ip, k) for k in ("patch_size", "merge_size", "temporal_patch_size")):
        raise InputError(
            f"{type(ip).__name__} does not lay images out in Qwen2-VL patches, so the judge cannot be differentiated "
            "through its pixels; use a Qwen2-VL / Qwen2.5-VL judge."
        )
    p, m, tp = ip.patch_size, ip.merge_size, ip.temporal_patch_size
    n, h, w, c = images.shape
    size = ip.size
    lo = getattr(ip, "min_pixels", None) or (size.get("shortest_edge") if hasattr(size, "get") else size.shortest_edge)
    hi = getattr(ip, "max_pixels", None) or (size.get("longest_edge") if hasattr(size, "get") else size.longest_edge)
    x = images.permute(0, 3, 1, 2).to(torch.promote_types(images.dtype, torch.float32))
    rh, rw = _grid_size(h, w, p * m, int(lo), int(hi)) if ip.do_resize else (h, w)
    if (rh, rw) != (h, w):
        x = torch.nn.functional.interpolate(x, size=(rh, rw), mode="bicubic", antialias=True).clamp(0, 1)
    if not ip.do_rescale:  # the processor takes 0..255 values then
        x = x * 255.0
    elif ip.rescale_factor != 1 / 255:
        x = x * (255.0 * ip.rescale_factor)
    if ip.do_normalize:
        mean = torch.tensor(ip.image_mean, device=x.device, dtype=x.dtype).view(1, c, 1, 1)
        std = torch.tensor(ip.image_std, device=x.device, dtype=x.dtype).view(1, c, 1, 1)
        x = (x - mean) / std
    gh, gw = rh // p, rw // p
    # (n, C, gh', mh, ph, gw', mw, pw) -> (n, gh', gw', mh, mw, C, ph, pw): the processor's patch order
    x = x.reshape(n, c, gh // m, m, p, gw // m, m, p).permute(0, 2, 5, 3, 6, 1, 4, 7)
    x = x.unsqueeze(-3).expand(*x.shape[:6], tp, p, p)  # each image repeated over the temporal patch
    grid = torch.tensor([[1, gh, gw]] * n, dtype=torch.long)
    return x.reshape(n * gh * gw, c * tp * p * p), grid


def temporal_pairs(first: torch.Tensor, second: torch.Tensor, processor) -> torch.Tensor:
    """Pixel patches whose temporal patch holds two images (`first`'s, then `second`'s) instead of one image repeated:
    how a Qwen2-VL-family model takes two adjacent video frames as one video patch, here behind the same image tokens
    (same count, same positions). `first` and `second` are rows [patches, C * 2 * p * p] of images of the same sizes in
    the same order, as the processor or `image_patches` lays them out. A judge reads frame-to-frame change from them
    at no extra token (docs/small_models.md, section 85)."""
    ip = getattr(processor, "image_processor", processor)
    tp, p = getattr(ip, "temporal_patch_size", None), getattr(ip, "patch_size", None)
    if tp != 2 or not p:
        raise InputError(
            f"{type(ip).__name__} has a temporal patch of {tp}, not 2, so it cannot take a pair of frames as one "
            "patch; use a Qwen2-VL / Qwen2.5-VL judge."
        )
    if first.shape != second.shape:
        raise InputError(
            f"paired frames laid out as {tuple(first.shape)} and {tuple(second.shape)}: each pair needs two "
            "frames of one size."
        )
    a, b = (x.reshape(x.shape[0], -1, tp, p * p) for x in (first, second))  # [patches, C, t, p * p]
    return torch.stack((a[:, :, 0], b[:, :, 0]), dim=2).reshape(first.shape)


def _image_parts(conversation: list[dict]) -> list[dict]:
    return [
        part
        for message in conversation
        if isinstance(message.get("content"), list)
        for part in message["content"]
        if part.get("type") == "image"
    ]


def processor_inputs(processor, conversations: list[list[dict]], *, add_generation_prompt: bool = True):
    """Chat conversations with PIL images -> the processor's BatchFeature on the CPU (left-padded, so that
    position -1 is the last real token of every row); image parts with a `PAIRED_WITH` frame get it in their temporal
    patch. Picklable work: trainers call it in loader workers."""
    texts = [
        processor.apply_chat_template(conv, add_generation_prompt=add_generation_prompt, tokenize=False)
        for conv in conversations
    ]
    parts = [part for conv in conversations for part in _image_parts(conv)]
    kwargs: dict[str, Any] = dict(text=texts, return_tensors="pt", padding=True, padding_side="left")
    if parts:
        kwargs["images"] = [to_pil_image(part["image"]) for part in parts]
    out = processor(**kwargs)
    paired = [part.get(PAIRED_WITH) for part in parts]
    if any(x is not None for x in paired):
        if any(x is None for x in paired):
            raise InputError(
                f"a batch of chats pairs {sum(x is not None for x in paired)} of {len(parts)} images; "
                "pair every image with its next frame or none."
            )
        second = processor.image_processor(images=[to_pil_image(x) for x in paired], return_tensors="pt")
        out["pixel_values"] = temporal_pairs(out["pixel_values"], second["pixel_values"], processor)
    return out


def to_model(vlm: VLM, inputs):
    """A BatchFeature moved to the model's device, pixel values cast to the model dtype. Every forward and
    generate builds its inputs here, so this is also where a host loads the model."""
    if vlm.host is not None:
        vlm.host.load(vlm.model)
    inputs = inputs.to(vlm.device)
    for key in ("pixel_values", "pixel_values_videos"):
        if key in inputs and torch.is_floating_point(inputs[key]):
            inputs[key] = inputs[key].to(vlm.dtype)
    return inputs


def build_inputs(vlm: VLM, messages: list[dict] | list[list[dict]], *, add_generation_prompt: bool = True):
    """Chat messages with PIL images -> the processor's BatchFeature on the model's device.

    `messages` is one conversation (`[{"role": "user", "content": [{"type": "image", "image": pil},
    {"type": "text", "text": "..."}]}]`) or a list of them (a batch, left-padded so that position -1 is the
    last real token of every row). Whatever the processor returns is passed through (Qwen3-VL's
    `mm_token_type_ids` included); pixel values are cast to the model dtype."""
    conversations = messages if messages and isinstance(messages[0], list) else [messages]
    return to_model(vlm, processor_inputs(vlm.processor, conversations, add_generation_prompt=add_generation_prompt))


def forward(vlm: VLM, inputs, **kwargs):
    """`vlm.model(**inputs, **kwargs)` computing logits for the last position only when the model allows it
    (a [B, L, 150k] fp32 logits tensor is gigabytes; the judge and the instructor need at most the last row)."""
    if "logits_to_keep" in inspect.signature(vlm.model.forward).parameters:
        kwargs.setdefault("logits_to_keep", 1)
    return vlm.model(**inputs, **kwargs)


def forward_shared_images(vlm: VLM, inputs, copies: int, host_positions: bool = True, **kwargs):
    """`forward` for chats in runs of `copies` that show the same images in the same order (the judge's four
    questions about one edit): the vision tower runs on the first chat of each run and its output is reused, so
    it runs once per edit instead of once per question. Same logits as `forward` (tests/test_judge.py); models
    other than Qwen2-VL / Qwen2.5-VL take the plain path. `host_positions`: the M-RoPE position ids from host copies
    of the batch (compat.qwen2_vl_position_ids), 1.9x faster a judge training forward on an H200 (docs/small_models.md,
    section 32). `pixel_values` may hold every chat's patches (as the processor returns them) or only the first
    chat's of each run (`Judge.score_batch`, which never lays out the copies). `copies` 1 shares nothing but still
    embeds the images here, where the tower's index tensors come once per image size (`vision_indices`)."""
    embed = qwen2_vl_vision(vlm.model)
    if embed is None or "pixel_values" not in inputs:
        return forward(vlm, inputs, **kwargs)
    ids, thw = inputs["input_ids"], inputs["image_grid_thw"]
    if copies == 1:  # transformers' per-image index loops took 3.1 of 7.0 s of one-question calls on 512 edits (H100)
        full = embed(inputs["pixel_values"], thw)
    else:
        full = _shared_image_features(vlm, embed, inputs["pixel_values"], ids, thw, copies)
    embeds = vlm.model.get_input_embeddings()(ids)
    mask = (ids == vlm.model.config.image_token_id)[..., None]
    embeds = embeds.masked_scatter(mask, full.to(embeds.dtype))
    rest = {k: v for k, v in inputs.items() if k not in ("pixel_values", "input_ids")}
    positions = qwen2_vl_position_ids(vlm.model, inputs) if host_positions else None
    if positions is not None:  # `host_positions`: the M-RoPE ids from host copies (compat.qwen2_vl_position_ids)
        rest["position_ids"] = positions
    return forward(vlm, {"input_ids": ids, "inputs_embeds": embeds, **rest}, **kwargs)


def _shared_image_features(vlm: VLM, embed, pixels: torch.Tensor, ids: torch.Tensor, thw: torch.Tensor, copies: int):
    """The merged image embeddings of every chat of runs of `copies` alike chats, the tower run on each run's first."""
    runs = ids.shape[0] // copies
    if ids.shape[0] != runs * copies or len(thw) % (runs * copies):
        raise InputError(f"{ids.shape[0]} chats with {len(thw)} images are not runs of {copies} alike chats.")
    per_run, per_chat = len(thw) // runs, len(thw) // (runs * copies)
    grid = thw.cpu()  # the index arithmetic on the host: one copy instead of a sync per image
    first = (torch.arange(per_chat)[None] + per_run * torch.arange(runs)[:, None]).flatten()  # each run's 1st chat
    patches = grid.prod(-1)
    starts = torch.cumsum(patches, 0) - patches
    if pixels.shape[0] == int(patches.sum()) != int(patches[first].sum()):  # every chat's: each run's first chat's
        rows = torch.cat([torch.arange(int(starts[i]), int(starts[i] + patches[i])) for i in first.tolist()])
        pixels = pixels[rows.to(pixels.device)]
    elif pixels.shape[0] != int(patches[first].sum()):
        raise InputError(
            f"{pixels.shape[0]} pixel patches fit neither all {int(patches.sum())} of the image grids nor the "
            f"{int(patches[first].sum())} of each run's first chat."
        )
    feats = embed(pixels, thw[first.to(thw.device)])
    merge = vlm.model.config.vision_config.spatial_merge_size
    per_run_tokens = (patches[first] // merge**2).view(runs, per_chat).sum(1)  # a run's images are contiguous
    run_starts = torch.cumsum(per_run_tokens, 0) - per_run_tokens
    pick = [torch.arange(int(s), int(s + n)) for s, n in zip(run_starts, per_run_tokens) for _ in range(copies)]
    return feats[torch.cat(pick).to(feats.device)]


@torch.no_grad()
def generate_text(vlm: VLM, messages: list[dict], *, max_new_tokens: int = 64) -> str:
    """Greedy decoding of the assistant's answer to one conversation; special tokens dropped, stripped."""
    inputs = build_inputs(vlm, messages, add_generation_prompt=True)
    tokenizer = vlm.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = vlm.model.generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        temperature=None,
        top_p=None,
        top_k=None,
        pad_token_id=pad_id,
    )
    new_tokens = out[0, inputs["input_ids"].shape[1] :]
    return tokenizer.decode(new_tokens, skip_special_tokens=True).strip()
