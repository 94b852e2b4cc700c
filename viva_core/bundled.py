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
# Laid out as ComfyUI model folders: diffusers/ (the editor), loras/ (its LoRA), vlm/ (the judge). The editor is
# conditioned on text alone: in the measured ablation its 20 M DiT doubled the edit accuracy of the earlier 7 M DiT
# with a jointly trained instructor (README, "Small models"), so no bundled instructor or refiner is paired with it.
EDITOR = ROOT / "diffusers" / "viva-small-editor"
# The editor's Edit-GRPO LoRA (recipes/small/grpo_v13.toml, 218 steps), a LoRA beside the editor and not merged into
# it: it trained on unguided rollouts and gains at their CFG 1 (+13% held-out EA over the editor alone at its best
# CFG 5, PC held); at CFG 5 its edits overshoot (docs/small_models.md, section 61). Its `rollout_cfg` metadata says
# so to `viva edit` (which applies it to the bundled editor unless --lora is given) and to ComfyUI users.
EDITOR_LORA = ROOT / "loras" / "viva-small-editor-grpo.safetensors"
LORA_ALIAS = "bundled"  # what --lora accepts in place of EDITOR_LORA's path
NO_LORA = "none"  # `viva edit --lora none`: the bundled editor without EDITOR_LORA
JUDGE = ROOT / "vlm" / "viva-small-judge"
EXAMPLE = ROOT / "examples" / "shapes.mp4"
EXAMPLE_ALIAS = "example"  # what `viva edit` and `viva judge` accept in place of a source path


def path(p: Path) -> str:
    """`p` as a string, or a ModelLoadError saying the package was installed without its small models."""
    if not p.exists():
        raise ModelLoadError(
            f"{p}: the bundled small model is missing from this installation. Reinstall the "
            "package from the repository (`pip install -e .`), or name your own model."
        )
    return str(p)


def source_path(name: str) -> str:
    """A source video argument: the bundled example clip for EXAMPLE_ALIAS, else the name unchanged."""
    return path(EXAMPLE) if name == EXAMPLE_ALIAS else name


# The example as ComfyUI users get it in their input folder (nodes/common.py copies it there at start-up): the clip
# for Load Video, and the same clip as a one-edit training folder in the sidecar layout of Dataset From Folder.
EXAMPLE_INPUT_CLIP = "viva_example.mp4"
EXAMPLE_INPUT_FOLDER = "viva_example"


def example_inputs() -> dict[str, Path]:
    """Input-folder-relative name -> bundled file, for every example file offered to ComfyUI users.

    The training folder's `shapes.txt` is made from the manifest's instruction (see install_examples)."""
    ex = EXAMPLE.parent
    folder = EXAMPLE_INPUT_FOLDER
    return {
        EXAMPLE_INPUT_CLIP: EXAMPLE,
        f"{folder}/shapes.mp4": EXAMPLE,
        f"{folder}/shapes_target.mp4": ex / "shapes_target.mp4",
        f"{folder}/shapes_mask.mp4": ex / "shapes_mask.mp4",
        f"{folder}/shapes.txt": ex / "shapes.jsonl",
    }


def install_examples(input_dir: str | Path) -> list[Path]:
    """Copy the example clip and its training folder into `input_dir` where the names are free; return what was
    written. An existing file is never replaced (a user's own file of that name, or their edits of ours), and each
    copy is atomic, so two servers starting at once cannot leave half a video."""
    import json

    from .safe_io import atomic_path  # imports torch; keep `bundled` itself light for the CLI

    written = []
    for name, src in example_inputs().items():
        dest = Path(input_dir) / name
        if dest.exists() or not src.is_file():
            continue
        with atomic_path(dest) as tmp:
            if src.suffix == ".jsonl":  # X.txt of the sidecar layout holds the instruction alone
                tmp.write_text(
                    json.loads(src.read_text(encoding="utf-8").splitlines()[0])["instruction"] + "\n", encoding="utf-8"
                )
            else:
                tmp.write_bytes(src.read_bytes())
        written.append(dest)
    return written
