"""Tiny models, a LoRA, a bad LoRA and an input video laid out for a real ComfyUI run (tests/test_comfyui.py).

    python tests/make_comfy_models.py OUT_DIR     # prints the paths as JSON

writes, under OUT_DIR:

    models/diffusers/tiny-editor/              diffusers editor folder (tests/tiny_editor.py)
    models/vlm/tiny-vlm/                       Qwen2.5-VL-shaped VLM folder (tests/tiny_vlm.py)
    models/loras/tiny_lora.safetensors         ComfyUI-native LoRA for the tiny DiT (viva_core.lora.save_lora)
    models/loras/sd_unet_lora.safetensors      a kohya LoRA for an SD UNet: matches no key of a Wan DiT
    models/refiners/tiny_refiner.safetensors   a random token refiner from tiny-vlm (hidden 32) to the bundled
                                               small editor's text_dim (128), for instructor-mode runs
    input/viva_square.mp4                      9 frames 32x32 @ 8 fps, a moving square, a 440 Hz sine track
    input/viva_edits/                          3 recolouring edits for training: editN.mp4 + editN.txt (instruction)
                                               + editN_target.mp4 + editN_mask.mp4 (tests/tiny_data.py)
    extra_model_paths.yaml                     points ComfyUI's diffusers / loras / viva_vlm / viva_refiners here, first
                                               (is_default), so a trained LoRA is written here, not into ComfyUI

Start ComfyUI with ``--extra-model-paths-config OUT_DIR/extra_model_paths.yaml --input-directory OUT_DIR/input``.
Everything is seeded, so the files are the same on every run.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
for p in (HERE, HERE.parent):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from tiny_data import build_dataset  # noqa: E402
from tiny_editor import build_editor_folder, tiny_transformer  # noqa: E402
from tiny_vlm import build_tiny_vlm  # noqa: E402

from viva_core.instructor import RefinerConfig, TokenRefiner, save_refiner  # noqa: E402
from viva_core.lora import LoraLayer, lora_target_names, save_lora  # noqa: E402
from viva_core.video import Audio, write_video  # noqa: E402

EDITOR = "tiny-editor"
VLM = "tiny-vlm"
LORA = "tiny_lora.safetensors"
REFINER = "tiny_refiner.safetensors"
BAD_LORA = "sd_unet_lora.safetensors"
VIDEO = "viva_square.mp4"
DATASET = "viva_edits"
FRAMES, SIZE, FPS, SAMPLE_RATE = 9, 32, 8, 16000


def square_video(frames: int = FRAMES, size: int = SIZE) -> torch.Tensor:
    """[T,H,W,3] float 0..1: a dark blue background with a red 10x10 square moving left to right."""
    video = torch.zeros(frames, size, size, 3)
    video[..., 2] = 0.3
    for t in range(frames):
        x = 2 + t * 2
        video[t, 11:21, x : x + 10] = torch.tensor([0.9, 0.1, 0.1])
    return video


def sine_audio(seconds: float, hz: float = 440.0) -> Audio:
    n = int(round(seconds * SAMPLE_RATE))
    t = torch.arange(n, dtype=torch.float32) / SAMPLE_RATE
    return Audio((0.3 * torch.sin(2 * math.pi * hz * t)).unsqueeze(0), SAMPLE_RATE)


def write_tiny_lora(path: Path, rank: int = 4, seed: int = 0) -> Path:
    """A small random LoRA on every block Linear of the tiny DiT, saved in ComfyUI-native keys."""
    model = tiny_transformer()
    modules = dict(model.named_modules())
    g = torch.Generator().manual_seed(seed)
    layers = {}
    for name in lora_target_names(model):
        out_f, in_f = modules[name].weight.shape
        layers[name] = LoraLayer(
            down=torch.randn(rank, in_f, generator=g) * 0.01,
            up=torch.randn(out_f, rank, generator=g) * 0.01,
            alpha=float(rank),
        )
    return save_lora(path, layers, metadata={"base_model": "tests tiny Wan DiT", "rank": rank, "alpha": rank})


def write_bad_lora(path: Path) -> Path:
    """A kohya-style LoRA for a Stable Diffusion UNet: none of its keys names a Wan DiT module."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(1)
    tensors = {}
    for block in ("down_blocks_0_attentions_0_proj_in", "mid_block_attentions_0_proj_out"):
        key = f"lora_unet_{block}"
        tensors[f"{key}.lora_down.weight"] = torch.randn(4, 320, generator=g)
        tensors[f"{key}.lora_up.weight"] = torch.randn(320, 4, generator=g)
        tensors[f"{key}.alpha"] = torch.tensor(4.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path


def write_extra_model_paths(root: Path) -> Path:
    """ComfyUI's extra_model_paths.yaml format (utils/extra_config.py): one section, a base_path, and
    folder-name keys whose values are paths relative to it."""
    yaml = root / "extra_model_paths.yaml"
    models = (root / "models").resolve()
    yaml.write_text(
        "viva_tests:\n"
        f"  base_path: {json.dumps(str(models))}\n"
        "  is_default: true\n"
        "  diffusers: diffusers\n"
        "  loras: loras\n"
        "  viva_vlm: vlm\n"
        "  viva_refiners: refiners\n"
        "  diffusion_models: diffusion_models\n"
        "  vae: vae\n"
        "  text_encoders: text_encoders\n",
        encoding="utf-8",
    )
    return yaml


def write_tiny_refiner(path: Path) -> Path:
    """A seeded random refiner: tiny-vlm's hidden states (32) to the bundled small editor's text_dim (128)."""
    torch.manual_seed(0)
    return save_refiner(path, TokenRefiner(RefinerConfig(in_dim=32, out_dim=128, hidden_dim=32, depth=1, heads=2)))


def write_edit_folder(folder: Path, n: int = 3) -> Path:
    """tests/tiny_data.py's edits renamed into the sidecar convention of viva_core.data.dataset_from_folder:
    editN.mp4 (source), editN.txt (instruction), editN_target.mp4, editN_mask.mp4. No manifest: the
    VIVA Dataset From Folder node writes it."""
    staging = folder.parent / f".{folder.name}_staging"
    manifest = build_dataset(staging, n, frames=FRAMES)
    folder.mkdir(parents=True, exist_ok=True)
    for i, line in enumerate(manifest.read_text().splitlines()):
        item = json.loads(line)
        for field, suffix in (("source_video", ""), ("target_video", "_target"), ("mask_video", "_mask")):
            (staging / item[field]).replace(folder / f"edit{i}{suffix}.mp4")
        (folder / f"edit{i}.txt").write_text(item["instruction"] + "\n", encoding="utf-8")
    manifest.unlink()
    staging.rmdir()
    return folder


def build_all(root: str | Path) -> dict[str, str]:
    root = Path(root)
    models = root / "models"
    for sub in ("diffusion_models", "vae", "text_encoders"):
        (models / sub).mkdir(parents=True, exist_ok=True)
    editor = build_editor_folder(models / "diffusers" / EDITOR)
    vlm = build_tiny_vlm(models / "vlm" / VLM)
    lora = write_tiny_lora(models / "loras" / LORA)
    bad = write_bad_lora(models / "loras" / BAD_LORA)
    refiner = write_tiny_refiner(models / "refiners" / REFINER)
    video = write_video(root / "input" / VIDEO, square_video(), FPS, sine_audio(FRAMES / FPS))
    dataset = write_edit_folder(root / "input" / DATASET)
    yaml = write_extra_model_paths(root)
    return {
        "root": str(root),
        "models": str(models),
        "input_dir": str(root / "input"),
        "yaml": str(yaml),
        "editor": str(editor),
        "vlm": str(vlm),
        "lora": str(lora),
        "bad_lora": str(bad),
        "refiner": str(refiner),
        "video": str(video),
        "dataset": str(dataset),
    }


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(json.dumps(build_all(sys.argv[1]), indent=2))
