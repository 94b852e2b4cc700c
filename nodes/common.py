"""Adapters between ComfyUI and viva_core: model folders, file-name safety, progress/interrupt, type conversion.

Nothing here edits, judges or loads weights; it only turns ComfyUI values into core arguments and back.
"""

from __future__ import annotations

import logging
import os
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Optional

import comfy.model_management as mm
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import InputImpl, Types, io

from ..viva_core import bundled
from ..viva_core.errors import InputError, VivaError
from ..viva_core.judge import judge_generates_text
from ..viva_core.video import Audio, Video, read_video
from ..viva_core.vlm import find_vlm_folders

# Custom socket types of this pack (frozen: renaming one breaks saved workflows).
Editor = io.Custom("VIVA_EDITOR")
VLM = io.Custom("VIVA_VLM")
Cond = io.Custom("VIVA_CONDITIONING")

CATEGORY = "VIVA video editing"
VLM_FOLDER = "viva_vlm"  # models/vlm: transformers folders of Qwen2.5-VL / Qwen3-VL style VLMs
REFINER_FOLDER = "viva_refiners"  # models/viva/refiners: token refiner .safetensors
FROM_EDITOR = "(from editor folder)"
NONE = "(none)"
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".m4v", ".gif")


def register_model_folders() -> None:
    """Register this pack's model folders once, beside ComfyUI's own."""
    for name, sub in ((VLM_FOLDER, "vlm"), (REFINER_FOLDER, os.path.join("viva", "refiners"))):
        folder_paths.add_model_folder_path(name, os.path.join(folder_paths.models_dir, sub), is_default=True)
    for base in folder_paths.get_folder_paths(VLM_FOLDER):
        os.makedirs(base, exist_ok=True)
    # The small models shipped in the package: listed after the user's own (e.g. "folder: viva-small-editor").
    for name, sub in (
        ("diffusers", "diffusers"),
        ("loras", "loras"),
        (VLM_FOLDER, "vlm"),
        (REFINER_FOLDER, "refiners"),
    ):
        if (bundled.ROOT / sub).is_dir():
            folder_paths.add_model_folder_path(name, str(bundled.ROOT / sub), is_default=False)


def offer_example_inputs() -> None:
    """Copy the bundled example clip (and its one-edit training folder) into ComfyUI's input folder, so the shipped
    templates run as loaded on a fresh install. A copy, not a combo entry pointing into the package: Load Video's
    preview, upload and validation all work on input-folder files (README, ComfyUI). Never replaces a file."""
    try:
        written = bundled.install_examples(folder_paths.get_input_directory())
    except OSError as e:  # a read-only input folder: the pack still works, only the example is missing
        logging.getLogger(__name__).warning("VIVA: could not copy the example clip into the input folder: %s", e)
        return
    if written:
        logging.getLogger(__name__).info(
            "VIVA: example clip copied into the input folder: %s", ", ".join(p.name for p in written)
        )


def yes_no_only_vlms() -> list[str]:
    """The VLM folders (names as VIVA Load VLM lists them) that cannot write text: judges trained on Yes/No answers
    (viva_judge.json says so). web/js/viva.js offers the Judge node's rationale only for the other VLMs."""
    names = []
    for name in vlm_folders():
        try:
            if not judge_generates_text(resolve_dir(VLM_FOLDER, name)):
                names.append(name)
        except VivaError:  # an unreadable viva_judge.json: the Judge node reports it when run
            continue
    return names


def register_routes() -> None:
    """GET /viva/yes_no_only_vlms for the frontend extension (web/js/viva.js)."""
    from aiohttp import web
    from server import PromptServer

    @PromptServer.instance.routes.get("/viva/yes_no_only_vlms")
    async def _yes_no_only_vlms(request) -> web.Response:
        return web.json_response(yes_no_only_vlms())


def _sub_dirs(bases: Iterable[str], marker, depth: int = 3) -> list[str]:
    """Relative names of folders below `bases` (up to `depth` levels) for which marker(path) is true."""
    found: set[str] = set()
    for base in bases:
        base_p = Path(base)
        if not base_p.is_dir():
            continue
        frontier = [base_p]
        for _ in range(depth):
            nxt = []
            for d in frontier:
                for child in sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")):
                    if marker(child):
                        found.add(child.relative_to(base_p).as_posix())
                    else:
                        nxt.append(child)
            frontier = nxt
    return sorted(found)


def editor_folders() -> list[str]:
    return _sub_dirs(
        folder_paths.get_folder_paths("diffusers"), lambda p: (p / "transformer" / "config.json").is_file()
    )


def vlm_folders() -> list[str]:
    names: set[str] = set()
    for base in folder_paths.get_folder_paths(VLM_FOLDER):
        names.update(Path(f).relative_to(base).as_posix() for f in find_vlm_folders(base))
    return sorted(names)


def text_encoder_folders() -> list[str]:
    return _sub_dirs(
        folder_paths.get_folder_paths("text_encoders"),
        lambda p: (p / "config.json").is_file() and any(p.glob("*.safetensors")),
    )


def safetensors_files(folder: str) -> list[str]:
    return [f for f in folder_paths.get_filename_list(folder) if f.lower().endswith(".safetensors")]


def resolve_dir(folder: str, name: str) -> str:
    """Resolve a listed folder name inside one of ComfyUI's `folder` paths; names may not leave them."""
    for base in folder_paths.get_folder_paths(folder):
        candidate = os.path.realpath(os.path.join(base, name))
        if os.path.commonpath([candidate, os.path.realpath(base)]) == os.path.realpath(base) and os.path.isdir(
            candidate
        ):
            return candidate
    raise InputError(
        f"'{name}' is not a folder inside the {folder} model folders "
        f"({folder_paths.get_folder_paths(folder)}); put the model there and refresh."
    )


def resolve_file(folder: str, name: str) -> str:
    """folder_paths.get_full_path refuses names outside the folder; say so in our words."""
    path = folder_paths.get_full_path(folder, name)
    if path is None:
        raise InputError(f"'{name}' is not a file in ComfyUI's models/{folder} folders; put it there and refresh.")
    return path


def inside_user_folders(path: str) -> bool:
    """True when `path` (links resolved) lies inside ComfyUI's input, temp or output folder."""
    path = os.path.realpath(path)
    allowed = [
        os.path.realpath(folder_paths.get_input_directory()),
        os.path.realpath(folder_paths.get_temp_directory()),
        os.path.realpath(folder_paths.get_output_directory()),
    ]
    return any(os.path.commonpath([path, a]) == a for a in allowed)


def resolve_input_file(name: str) -> str:
    """A user input file (video/image) that must stay inside ComfyUI's input folder."""
    path = os.path.realpath(folder_paths.get_annotated_filepath(name))
    if not inside_user_folders(path):
        raise InputError(f"'{name}' leaves ComfyUI's input/output folders; only files inside them can be used.")
    if not os.path.isfile(path):
        raise InputError(f"'{name}' was not found in ComfyUI's input folder; upload it again.")
    return path


def input_folders(marker, depth: int = 2) -> list[str]:
    """Sub-folders of ComfyUI's input folder (relative names, up to `depth` levels) for which marker(path) is true."""
    return _sub_dirs([folder_paths.get_input_directory()], marker, depth)


def resolve_input_dir(name: str) -> str:
    """A sub-folder of ComfyUI's input folder; names that leave it (.., absolute paths, links out) are refused."""
    base = os.path.realpath(folder_paths.get_input_directory())
    path = os.path.realpath(os.path.join(base, name))
    if path == base or os.path.commonpath([path, base]) != base:
        raise InputError(f"'{name}' is not a sub-folder of ComfyUI's input folder; only folders inside it can be used.")
    if not os.path.isdir(path):
        raise InputError(
            f"'{name}' was not found in ComfyUI's input folder ({base}); put the folder there and refresh."
        )
    return path


def input_videos() -> list[str]:
    base = folder_paths.get_input_directory()
    files = [f for f in os.listdir(base) if os.path.isfile(os.path.join(base, f))] if os.path.isdir(base) else []
    return sorted(f for f in files if f.lower().endswith(VIDEO_EXTENSIONS))


def memory_budget_bytes() -> int:
    """Half the free RAM: the most a decoded source may take as float32 frames."""
    return int(mm.get_free_memory(torch.device("cpu")) * 0.5)


class Progress:
    """viva_core ProgressFn backed by ComfyUI's progress bar; every update is an interrupt point. With a
    `previewer` (model_management.previewer) the sampler's predicted clean latents become the bar's preview image,
    as latent_preview.prepare_callback does for ComfyUI's samplers."""

    def __init__(self, total: int = 1, offset: int = 0, grand_total: Optional[int] = None, previewer=None) -> None:
        self.offset, self.grand_total, self.previewer = offset, grand_total, previewer
        self.bar = comfy.utils.ProgressBar(grand_total or total)

    def __call__(self, done: int, total: int, preview: Optional[torch.Tensor] = None) -> None:
        mm.throw_exception_if_processing_interrupted()
        image = None
        if self.previewer is not None and preview is not None:
            image = self.previewer.decode_latent_to_preview_image("JPEG", preview)
        self.bar.update_absolute(self.offset + done, self.grand_total or total, image)


def interrupt_check() -> None:
    mm.throw_exception_if_processing_interrupted()


def comfy_audio_to_core(audio: Optional[dict]) -> Optional[Audio]:
    if not audio or audio.get("waveform") is None:
        return None
    return Audio(audio["waveform"][0].float().cpu(), int(audio["sample_rate"]))


def core_audio_to_comfy(audio: Optional[Audio]) -> Optional[dict]:
    return None if audio is None else {"waveform": audio.waveform.unsqueeze(0), "sample_rate": audio.sample_rate}


def source_video(images: Optional[torch.Tensor], video, fps: float, max_frames: int) -> Video:
    """IMAGE batch or VIDEO input -> core Video. A file-backed VIDEO is streamed with the frame cap."""
    if video is not None:
        # Only a file-backed VIDEO streams from its path; the base get_stream_source() of other VIDEOs
        # (e.g. VideoFromComponents) re-encodes everything into memory, the opposite of what we want.
        src = video.get_stream_source() if isinstance(video, InputImpl.VideoFromFile) else None
        if isinstance(src, str):
            return read_video(src, max_frames=max_frames or None, max_bytes=memory_budget_bytes())
        comp = video.get_components()
        frames = comp.images[:max_frames] if max_frames else comp.images
        return Video(frames.float().cpu(), float(comp.frame_rate), comfy_audio_to_core(comp.audio))
    if images is None:
        raise InputError("connect either `images` (an IMAGE batch of frames) or `video`.")
    frames = images[:max_frames] if max_frames else images
    return Video(frames[..., :3].float().cpu(), float(fps), None)


def to_video_output(frames: torch.Tensor, fps: float, audio: Optional[Audio]):
    return InputImpl.VideoFromComponents(
        Types.VideoComponents(
            images=frames, audio=core_audio_to_comfy(audio), frame_rate=Fraction(fps).limit_denominator(1000)
        )
    )


def text_and_scores_ui(text: str, scores: dict[str, float], label: str = "") -> dict:
    """UI payload for nodes that judge: the text (shown like PreviewText) and the four scores for web/js/viva.js's
    bar chart. Every value is a list, as ComfyUI merges UI outputs list-wise."""
    return {"text": [text], "viva_scores": [{"scores": {k: float(v) for k, v in scores.items()}, "label": label}]}
