"""The small models shipped inside the package (trained by `viva pretrain` on `viva synth` clips, 64x64x17).

They make the tools work on a fresh machine without downloads: `viva edit` / `viva judge` use them when no model
is named, and the ComfyUI loaders list them beside the user's models. They know only the synthetic world of
moving shapes; for real videos, load a real editor (Wan / Lucy-Edit) and VLM. How they were made:
recipes/small/ in the repository; their scores: README, "Small models".
"""
from __future__ import annotations

from pathlib import Path

from .errors import ModelLoadError

ROOT = Path(__file__).resolve().parent / "small_models"
# Laid out as ComfyUI model folders: diffusers/ (editors), vlm/ (instructor, judge), refiners/ (token refiners).
EDITOR = ROOT / "diffusers" / "viva-small-editor"
INSTRUCTOR = ROOT / "vlm" / "viva-small-instructor"
JUDGE = ROOT / "vlm" / "viva-small-judge"
REFINER = ROOT / "refiners" / "viva-small-refiner.safetensors"
EXAMPLE = ROOT / "examples" / "shapes.mp4"
EXAMPLE_ALIAS = "example"  # what `viva edit` and `viva judge` accept in place of a source path


def path(p: Path) -> str:
    """`p` as a string, or a ModelLoadError saying the package was installed without its small models."""
    if not p.exists():
        raise ModelLoadError(f"{p}: the bundled small model is missing from this installation. Reinstall the "
                             "package from the repository (`pip install -e .`), or name your own model.")
    return str(p)


def source_path(name: str) -> str:
    """A source video argument: the bundled example clip for EXAMPLE_ALIAS, else the name unchanged."""
    return path(EXAMPLE) if name == EXAMPLE_ALIAS else name
