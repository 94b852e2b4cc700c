"""The edit manifest: its fields, `EditRecord`, and `load_manifest`, which checks every line (and probes
every file's headers) before any compute. Format: the package docstring."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError, VideoError
from ..video import PathLike, format_size, probe_video

log = logging.getLogger(__name__)

PATH_FIELDS = ("source_video", "target_video", "mask_video", "reference_image")
TEXT_FIELDS = ("instruction", "source_caption", "target_caption", "type")
REQUIRED_FIELDS = ("source_video", "instruction")
# ReViSE spells path fields with a `_path` suffix; every path field may be spelled that way.
FIELD_ALIASES = {f"{name}_path": name for name in PATH_FIELDS}
# Labels `viva synth` writes for the exact benchmark (`viva eval` reads them from the raw lines); training
# ignores them without a warning.
BENCHMARK_FIELDS = ("operation", "attribute", "referring", "verify")
# An npz clip stands for the three videos: field -> array name inside it.
CLIP_KEY, CLIP_SUFFIX = "npz", ".npz"
CLIP_ARRAYS = {"source_video": "source", "target_video": "target", "mask_video": "mask"}
KNOWN_KEYS = frozenset(PATH_FIELDS + TEXT_FIELDS + (CLIP_KEY,)) | frozenset(FIELD_ALIASES)
# Video files (decoded by PyAV) and image files (a 1-frame video) a record may point at.
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MAX_LISTED_PROBLEMS = 50


def is_image_path(path: PathLike) -> bool:
    """True for the suffixes read as a 1-frame video (image pairs)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


# ============================================================================================== manifest


@dataclass(frozen=True)
class EditRecord:
    """One edit of a manifest: absolute paths, the instruction, optional captions and edit type.

    `index` is the record's position in the loaded list (0-based); the manifest line it came from is in
    `line`."""

    index: int
    source_video: Path
    instruction: str
    target_video: Path | None = None
    mask_video: Path | None = None
    reference_image: Path | None = None
    source_caption: str | None = None
    target_caption: str | None = None
    type: str | None = None
    line: int = 0

    def key(self) -> str:
        """Stable id of the edit: sha1 of its resolved paths and instruction (captions and type excluded,
        so two records of the same edit share it). Moving the data set changes it."""
        content = [str(getattr(self, name)) if getattr(self, name) is not None else None for name in PATH_FIELDS]
        return hashlib.sha1(json.dumps(content + [self.instruction], ensure_ascii=False).encode()).hexdigest()


class ManifestError(InputError):
    """A manifest has problems; the message lists every bad line (the first 50, then a count).

    `problems` holds all of them as (line number, text); line 0 is the file as a whole."""

    def __init__(self, path: PathLike, problems: list[tuple[int, str]]):
        self.path = Path(path)
        self.problems = list(problems)
        super().__init__(self._message())

    def _message(self) -> str:
        n = len(self.problems)
        head = (
            f"{self.path}: {n} problem{'s' if n != 1 else ''}; nothing was loaded. "
            "Fix these lines and load the manifest again:"
        )
        rows = [
            f"  {self.path.name}{f' line {line}' if line else ''}: {text}"
            for line, text in self.problems[:MAX_LISTED_PROBLEMS]
        ]
        if n > MAX_LISTED_PROBLEMS:
            rows.append(f"  ... and {n - MAX_LISTED_PROBLEMS} more problems ({n} in all).")
        return "\n".join([head, *rows])


# numpy parses .npy headers with `ast.literal_eval`, and CPython 3.11's AST constructor keeps its recursion depth in
# interpreter-wide state: two threads parsing at once can raise "SystemError: AST constructor recursion depth
# mismatch" (python/cpython#106905; seen in CI). The header reads of `_probe_all`'s threads take turns.
_NPY_HEADER_LOCK = threading.Lock()


@dataclass(frozen=True)
class _Media:
    """What validation needs to know of one file, found without decoding frames."""

    num_frames: int
    height: int
    width: int


def _probe_clip(path: Path) -> _Media | str:
    """Frame count and size of an npz clip from its array headers (nothing decompressed)."""
    shapes = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for name in CLIP_ARRAYS.values():
                with zf.open(f"{name}.npy") as f:
                    major, _ = np.lib.format.read_magic(f)
                    read_header = (
                        np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                    )
                    with _NPY_HEADER_LOCK:
                        shape, _, dtype = read_header(f)
                    if dtype != np.uint8:
                        return f"array '{name}' is {dtype}, expected uint8 (as `viva synth --format npz` writes)"
                    shapes[name] = shape
    except KeyError as e:
        return f"npz clip without the array {e} (needs source, target and mask)"
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        return f"not a readable npz clip ({e}); write it again with `viva synth --format npz`"
    src = shapes["source"]
    if len(src) != 4 or src[-1] != 3 or shapes["target"] != src or shapes["mask"] != src[:3]:
        return (
            f"npz clip arrays have shapes source {src}, target {shapes['target']}, mask {shapes['mask']}; "
            "expected [T,H,W,3], the same, and [T,H,W]"
        )
    return _Media(*src[:3])


def _probe_media(path: Path) -> _Media | str:
    """Frame count and size of a video (probe_video), npz clip or image (header only); the problem text if
    unreadable."""
    if path.suffix.lower() == CLIP_SUFFIX:
        return _probe_clip(path)
    if is_image_path(path):
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                width, height = im.size
        except (UnidentifiedImageError, OSError) as e:
            return f"not a readable image ({e}); use a PNG or JPEG"
        return _Media(1, height, width)
    try:
        info = probe_video(path)
    except VideoError as e:
        return str(e).removeprefix(f"{path}: ")
    return _Media(info.num_frames, info.height, info.width)


def _probe_all(paths: list[Path]) -> dict[Path, _Media | str]:
    """Probe each distinct file once; a few threads, since probing waits on the disk more than the CPU."""
    if not paths:
        return {}
    with ThreadPoolExecutor(max_workers=min(8, len(paths))) as pool:
        return dict(zip(paths, pool.map(_probe_media, paths)))


def _resolve(value: str, base: Path) -> Path:
    """A manifest path: `~` expanded, relative ones joined to the manifest's folder, `..` collapsed."""
    p = Path(value).expanduser()
    return Path(os.path.abspath(p if p.is_absolute() else base / p))


def _parse_line(obj: object, base: Path) -> tuple[dict | None, list[str], list[str]]:
    """(fields with resolved paths, problems, unknown keys) of one parsed JSON line."""
    if not isinstance(obj, dict):
        return None, [f"expected a JSON object {{...}}, got {type(obj).__name__}"], []
    unknown = sorted(k for k in obj if k not in KNOWN_KEYS and k not in BENCHMARK_FIELDS)
    if len(unknown) == len(obj):
        got = ", ".join(unknown) or "no keys"
        optional = ", ".join(PATH_FIELDS[1:] + TEXT_FIELDS[1:])
        return (
            None,
            [
                f"no known keys (got: {got}); an edit needs 'source_video' and 'instruction' "
                f"(or ReViSE's 'source_video_path'), optionally {optional}"
            ],
            [],
        )
    problems: list[str] = []
    raw: dict[str, object] = {}
    for key, value in obj.items():
        name = FIELD_ALIASES.get(key, key)
        if name not in KNOWN_KEYS:
            continue
        if name in raw:
            problems.append(f"both '{name}' and '{name}_path' are given; keep one")
            continue
        raw[name] = value
    fields: dict[str, object] = {}
    clip = raw.pop(CLIP_KEY, None)
    if clip is not None:
        both = [name for name in CLIP_ARRAYS if raw.get(name) is not None]
        if both:
            problems.append(
                f"both '{CLIP_KEY}' and {', '.join(both)} are given; an npz clip already holds source, "
                "target and mask: keep one"
            )
        elif not isinstance(clip, str) or not clip.strip() or not clip.lower().endswith(CLIP_SUFFIX):
            problems.append(f"{CLIP_KEY} must be the path of a {CLIP_SUFFIX} clip, got {json.dumps(clip)}")
        else:
            raw.update(dict.fromkeys(CLIP_ARRAYS, clip))
    for name in REQUIRED_FIELDS:
        if raw.get(name) is None:
            problems.append(f"missing required key '{name}'")
    for name in PATH_FIELDS:
        value = raw.get(name)
        if value is None:
            continue
        if not isinstance(value, str) or not value.strip():
            problems.append(f"{name} must be a non-empty path string, got {json.dumps(value)}")
            continue
        fields[name] = _resolve(value, base)
        fields[f"_{name}_raw"] = value
    for name in TEXT_FIELDS:
        value = raw.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            problems.append(f"{name} must be a string, got {json.dumps(value)}")
        elif name == "instruction" and not value.strip():
            problems.append("instruction is empty")
        else:
            fields[name] = value.strip()
    return fields, problems, unknown


def _pair_problems(fields: dict, media: dict[Path, _Media | str], max_frames: int | None) -> list[str]:
    """Unreadable files, and frame-count / size mismatches between source, target and mask."""
    problems: list[str] = []
    readable: dict[str, _Media] = {}
    reported: set[Path] = set()
    for name in PATH_FIELDS:
        path = fields.get(name)
        if path is None or path not in media:
            continue
        info = media[path]
        if isinstance(info, str):
            if path not in reported:  # an npz clip stands for three fields: one problem
                label = CLIP_KEY if path.suffix.lower() == CLIP_SUFFIX else name
                problems.append(f"{label} '{fields[f'_{name}_raw']}' is unreadable: {info}")
            reported.add(path)
        elif name != "reference_image":
            readable[name.removesuffix("_video")] = info
    source = readable.get("source")
    if source is None:
        return problems
    cap = "" if max_frames is None else f" (compared up to max_frames={max_frames})"
    for other in ("target", "mask"):
        info = readable.get(other)
        if info is None:
            continue
        n_src, n_other = source.num_frames, info.num_frames
        if max_frames is not None:
            n_src, n_other = min(n_src, max_frames), min(n_other, max_frames)
        if n_src != n_other:
            problems.append(
                f"source has {source.num_frames} frames, {other} {info.num_frames}{cap} - they must match "
                f"(trim the longer one, or set max_frames ≤ {min(n_src, n_other)})"
            )
        if (source.height, source.width) != (info.height, info.width):
            problems.append(
                f"source is {format_size(source.height, source.width)} (width x height), {other} "
                f"{format_size(info.height, info.width)} - they must match; export both at one size"
            )
    return problems


def load_manifest(path: PathLike, *, check_videos: bool = True, max_frames: int | None = None) -> list[EditRecord]:
    """Read and check a JSONL manifest; return its edits in file order.

    Everything is checked before any compute, and every problem is reported in one ManifestError naming
    each line: invalid JSON, lines with no known key, missing required keys (`source_video`,
    `instruction`), empty instructions, missing files. With `check_videos` (default) each distinct file is
    also probed (container headers only, no decoding): unreadable videos/images, and source/target/mask
    that differ in frame count (compared after capping at `max_frames` when given, as training will read
    them) or in size. Unknown keys on an otherwise valid line are ignored with a logged warning; blank
    lines are skipped. An empty manifest is an error.
    """
    if max_frames is not None and max_frames < 1:
        raise InputError(f"max_frames={max_frames} must be at least 1, or None for no cap.")
    manifest = Path(path).expanduser()
    if not manifest.is_file():
        what = "is a folder, not a manifest file" if manifest.is_dir() else "not found"
        raise ManifestError(
            manifest,
            [
                (
                    0,
                    f"{what}. Pass the .jsonl manifest (build one from a folder of videos "
                    "with viva_core.data.dataset_from_folder, or the VIVA Dataset From Folder node).",
                )
            ],
        )
    try:
        text = manifest.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError(manifest, [(0, f"cannot be read as UTF-8 text ({e})")]) from e
    base = Path(os.path.abspath(manifest.parent))

    problems: list[tuple[int, str]] = []
    parsed: list[tuple[int, dict]] = []
    unknown_seen: dict[str, list[int]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append((number, f"not JSON ({e.msg} at column {e.colno}); each line must be one JSON object"))
            continue
        fields, line_problems, unknown = _parse_line(obj, base)
        for key in unknown:
            unknown_seen.setdefault(key, []).append(number)
        for name in PATH_FIELDS:
            if fields is not None and name in fields and not fields[name].is_file():
                what = "is a folder, not a file" if fields[name].is_dir() else "not found"
                line_problems.append(f"{name} '{fields[f'_{name}_raw']}' {what} (looked for {fields[name]})")
                del fields[name]
        problems += [(number, p) for p in line_problems]
        if fields is not None:
            parsed.append((number, fields))
    for key, numbers in unknown_seen.items():
        shown = ", ".join(map(str, numbers[:10])) + (f" and {len(numbers) - 10} more" if len(numbers) > 10 else "")
        log.warning("%s: unknown key '%s' ignored (line%s %s)", manifest, key, "s" if len(numbers) > 1 else "", shown)

    if check_videos:
        files = sorted({fields[name] for _, fields in parsed for name in PATH_FIELDS if name in fields})
        media = _probe_all(files)
        for number, fields in parsed:
            problems += [(number, p) for p in _pair_problems(fields, media, max_frames)]
    if not parsed and not problems:
        problems.append(
            (0, "has no edits (the file is empty). Add one JSON object per line with 'source_video' and 'instruction'.")
        )
    if problems:
        raise ManifestError(manifest, sorted(problems, key=lambda item: item[0]))

    records = [
        EditRecord(index=i, line=number, **{k: v for k, v in fields.items() if not k.startswith("_")})
        for i, (number, fields) in enumerate(parsed)
    ]
    seen: dict[str, int] = {}
    for r in records:
        if r.key() in seen:
            log.warning(
                "%s: line %d repeats the edit of line %d (same files and instruction)", manifest, r.line, seen[r.key()]
            )
        seen.setdefault(r.key(), r.line)
    return records
