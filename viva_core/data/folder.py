"""`dataset_from_folder`: a manifest written for a folder of videos with sidecar instruction files."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from ..errors import InputError
from ..safe_io import write_text_atomic
from ..video import PathLike
from .manifest import IMAGE_SUFFIXES, MAX_LISTED_PROBLEMS, PATH_FIELDS, VIDEO_SUFFIXES, is_image_path

log = logging.getLogger(__name__)

# dataset_from_folder: file-name endings that mark a companion of `X.<ext>`, and the field each fills.
COMPANION_FIELDS = {"_target": "target_video", "_mask": "mask_video", "_ref": "reference_image"}


def _manifest_path_value(path: Path, manifest_dir: Path) -> str:
    """How a manifest refers to `path`: relative to its folder (with /) when possible, else absolute."""
    try:
        return Path(os.path.relpath(path, manifest_dir)).as_posix()
    except ValueError:  # another drive on Windows
        return str(path)


def dataset_from_folder(
    folder: PathLike, *, instruction_file_suffix: str = ".txt", out: PathLike | None = None, skip_missing: bool = False
) -> Path:
    """Write a manifest for a folder of edits named by the sidecar convention; return the manifest's path.

    In `folder` (not its subfolders), each video or image `X.<ext>` is the source of one edit whose
    instruction is the text of `X.txt` (`X` + `instruction_file_suffix`). Optional companions, with any
    video/image suffix: `X_target.<ext>` (the edited video), `X_mask.<ext>` (the edit mask), `X_ref.<png|jpg>`
    (a reference image). Files whose name ends in `_target`, `_mask` or `_ref` are companions, never sources.
    Example: `cat.mp4` + `cat.txt` ("make the cat black") + `cat_target.mp4`.

    Sources without an instruction (no or empty `X.txt`) and companions without a source are listed in
    one InputError; with `skip_missing=True` they are skipped with a logged warning instead. The manifest
    (default `folder/manifest.jsonl`) is written atomically, paths relative to its own folder, edits sorted
    by name. Files are not probed here: `load_manifest` checks them.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise InputError(
            f"{root}: not a folder. Pass the folder that holds the videos and their "
            f"{instruction_file_suffix} instructions."
        )
    media_suffixes = VIDEO_SUFFIXES + IMAGE_SUFFIXES
    if not instruction_file_suffix or Path("x" + instruction_file_suffix).suffix.lower() in media_suffixes:
        raise InputError(f"instruction_file_suffix={instruction_file_suffix!r} must name a text file, e.g. '.txt'.")
    media = sorted(
        p for p in root.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in media_suffixes
    )
    sources: dict[str, Path] = {}
    companions: dict[str, dict[str, Path]] = {}
    problems: list[str] = []
    for p in media:
        ending = next((e for e in COMPANION_FIELDS if p.stem.endswith(e) and len(p.stem) > len(e)), None)
        if ending is None:
            if p.stem in sources:
                problems.append(f"{sources[p.stem].name} and {p.name} share the name '{p.stem}'; rename one")
            sources[p.stem] = p
            continue
        base, field = p.stem[: -len(ending)], COMPANION_FIELDS[ending]
        if field == "reference_image" and not is_image_path(p):
            problems.append(f"{p.name}: a reference image must be an image ({', '.join(IMAGE_SUFFIXES)})")
            continue
        slot = companions.setdefault(base, {})
        if field in slot:
            problems.append(f"{slot[field].name} and {p.name} are both the {ending[1:]} of '{base}'; keep one")
        slot[field] = p

    missing: list[str] = []
    lines: list[str] = []
    manifest = Path(out).expanduser() if out is not None else root / "manifest.jsonl"
    manifest_dir = Path(os.path.abspath(manifest.parent))
    for stem, src in sorted(sources.items()):
        sidecar = root / f"{stem}{instruction_file_suffix}"
        instruction = sidecar.read_text(encoding="utf-8").strip() if sidecar.is_file() else ""
        if not instruction:
            missing.append(f"{src.name}: {'empty' if sidecar.is_file() else 'no'} {sidecar.name}")
            continue
        item = {
            "source_video": _manifest_path_value(Path(os.path.abspath(src)), manifest_dir),
            "instruction": instruction,
        }
        for field, path in sorted(companions.get(stem, {}).items(), key=lambda kv: PATH_FIELDS.index(kv[0])):
            item[field] = _manifest_path_value(Path(os.path.abspath(path)), manifest_dir)
        lines.append(json.dumps(item, ensure_ascii=False))
    missing += [
        f"{p.name}: no source '{base}.<ext>' for this {field.split('_')[0]}"
        for base, slot in sorted(companions.items())
        if base not in sources
        for field, p in slot.items()
    ]

    if problems or (missing and not skip_missing):
        listed = problems + ([] if skip_missing else missing)
        hint = (
            ""
            if skip_missing or not missing
            else (" Add the missing instruction files, or pass skip_missing=True to leave those videos out.")
        )
        raise InputError(
            f"{root}: {len(listed)} problem{'s' if len(listed) != 1 else ''}; no manifest written."
            f"{hint}\n" + "\n".join(f"  {m}" for m in listed[:MAX_LISTED_PROBLEMS])
        )
    if missing:
        log.warning("%s: skipped %d file(s) without instruction or source: %s", root, len(missing), "; ".join(missing))
    if not lines:
        raise InputError(
            f"{root}: no video or image with an instruction file found. Put X.mp4 and "
            f"X{instruction_file_suffix} (the instruction) side by side."
        )
    write_text_atomic(manifest, "\n".join(lines) + "\n")
    return manifest
