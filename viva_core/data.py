"""Training data: the edit manifest, building one from a folder, per-record samples, and a tensor disk cache.

The story of a training step's data: `load_manifest` (or `dataset_from_folder` then `load_manifest`) checks
every line before any compute and returns `EditRecord`s → `load_sample` reads one record's frames, aligned
and snapped to the model's sizes → the trainer encodes them, through `TensorCache` so the second epoch reads
latents and text tokens from disk instead of re-encoding.

Manifest format: JSONL, one edit per line, paths relative to the manifest's folder (absolute allowed)::

    {"source_video": "clips/a.mp4", "instruction": "make the car red", "target_video": "clips/a_red.mp4",
     "mask_video": "clips/a_mask.mp4", "reference_image": "refs/red.png",
     "source_caption": "a grey car on a road", "target_caption": "a red car on a road", "type": "color"}

Only `source_video` and `instruction` are required. ReViSE items
(`{"source_video_path", "target_video_path", "instruction", "type"}`) are read as the same record; any
`<field>_path` spelling of a path field is accepted. An image pair (source and target are .png/.jpg/...)
is a 1-frame video, as VIVA mixes image pairs into video training. A line may give one `npz` clip instead
of the three video paths (what `viva synth --format npz` writes): uint8 arrays `source` and `target`
[T,H,W,3] and `mask` [T,H,W] (1 or 255 = edited), read exactly and ~10x faster than decoding mp4.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import zipfile
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from .errors import InputError, VideoError
from .video import conform_frames, format_size, probe_video, read_image, read_video
from .safe_io import save_safetensors_atomic, write_text_atomic

log = logging.getLogger(__name__)

PathLike = str | os.PathLike

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
# dataset_from_folder: file-name endings that mark a companion of `X.<ext>`, and the field each fills.
COMPANION_FIELDS = {"_target": "target_video", "_mask": "mask_video", "_ref": "reference_image"}
CACHE_FORMAT = "viva-tensor-cache"
SMALL_FILE_BYTES = 1 << 20  # file_identity hashes the content of files up to this size


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
        head = (f"{self.path}: {n} problem{'s' if n != 1 else ''}; nothing was loaded. "
                "Fix these lines and load the manifest again:")
        rows = [f"  {self.path.name}{f' line {line}' if line else ''}: {text}"
                for line, text in self.problems[:MAX_LISTED_PROBLEMS]]
        if n > MAX_LISTED_PROBLEMS:
            rows.append(f"  ... and {n - MAX_LISTED_PROBLEMS} more problems ({n} in all).")
        return "\n".join([head, *rows])


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
                    read_header = (np.lib.format.read_array_header_1_0 if major == 1
                                   else np.lib.format.read_array_header_2_0)
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
        return (f"npz clip arrays have shapes source {src}, target {shapes['target']}, mask {shapes['mask']}; "
                "expected [T,H,W,3], the same, and [T,H,W]")
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
        return None, [f"no known keys (got: {got}); an edit needs 'source_video' and 'instruction' "
                      f"(or ReViSE's 'source_video_path'), optionally {optional}"], []
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
            problems.append(f"both '{CLIP_KEY}' and {', '.join(both)} are given; an npz clip already holds source, "
                            "target and mask: keep one")
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
            problems.append(f"source has {source.num_frames} frames, {other} {info.num_frames}{cap} - they must match "
                            f"(trim the longer one, or set max_frames ≤ {min(n_src, n_other)})")
        if (source.height, source.width) != (info.height, info.width):
            problems.append(f"source is {format_size(source.height, source.width)} (width x height), {other} "
                            f"{format_size(info.height, info.width)} - they must match; export both at one size")
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
        raise ManifestError(manifest, [(0, f"{what}. Pass the .jsonl manifest (build one from a folder of videos "
                                           "with viva_core.data.dataset_from_folder, or the VIVA Dataset From Folder node).")])
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
        problems.append((0, "has no edits (the file is empty). Add one JSON object per line with 'source_video' "
                            "and 'instruction'."))
    if problems:
        raise ManifestError(manifest, sorted(problems, key=lambda item: item[0]))

    records = [EditRecord(index=i, line=number, **{k: v for k, v in fields.items() if not k.startswith("_")})
               for i, (number, fields) in enumerate(parsed)]
    seen: dict[str, int] = {}
    for r in records:
        if r.key() in seen:
            log.warning("%s: line %d repeats the edit of line %d (same files and instruction)", manifest, r.line,
                        seen[r.key()])
        seen.setdefault(r.key(), r.line)
    return records


# ========================================================================================== folder → manifest



def _manifest_path_value(path: Path, manifest_dir: Path) -> str:
    """How a manifest refers to `path`: relative to its folder (with /) when possible, else absolute."""
    try:
        return Path(os.path.relpath(path, manifest_dir)).as_posix()
    except ValueError:  # another drive on Windows
        return str(path)


def dataset_from_folder(folder: PathLike, *, instruction_file_suffix: str = ".txt", out: PathLike | None = None,
                        skip_missing: bool = False) -> Path:
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
        raise InputError(f"{root}: not a folder. Pass the folder that holds the videos and their "
                         f"{instruction_file_suffix} instructions.")
    media_suffixes = VIDEO_SUFFIXES + IMAGE_SUFFIXES
    if not instruction_file_suffix or Path("x" + instruction_file_suffix).suffix.lower() in media_suffixes:
        raise InputError(f"instruction_file_suffix={instruction_file_suffix!r} must name a text file, e.g. '.txt'.")
    media = sorted(p for p in root.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in media_suffixes)
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
        base, field = p.stem[:-len(ending)], COMPANION_FIELDS[ending]
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
        item = {"source_video": _manifest_path_value(Path(os.path.abspath(src)), manifest_dir),
                "instruction": instruction}
        for field, path in sorted(companions.get(stem, {}).items(), key=lambda kv: PATH_FIELDS.index(kv[0])):
            item[field] = _manifest_path_value(Path(os.path.abspath(path)), manifest_dir)
        lines.append(json.dumps(item, ensure_ascii=False))
    missing += [f"{p.name}: no source '{base}.<ext>' for this {field.split('_')[0]}"
                for base, slot in sorted(companions.items()) if base not in sources for field, p in slot.items()]

    if problems or (missing and not skip_missing):
        listed = problems + ([] if skip_missing else missing)
        hint = "" if skip_missing or not missing else (" Add the missing instruction files, or pass "
                                                       "skip_missing=True to leave those videos out.")
        raise InputError(f"{root}: {len(listed)} problem{'s' if len(listed) != 1 else ''}; no manifest written."
                         f"{hint}\n" + "\n".join(f"  {m}" for m in listed[:MAX_LISTED_PROBLEMS]))
    if missing:
        log.warning("%s: skipped %d file(s) without instruction or source: %s", root, len(missing), "; ".join(missing))
    if not lines:
        raise InputError(f"{root}: no video or image with an instruction file found. Put X.mp4 and "
                         f"X{instruction_file_suffix} (the instruction) side by side.")
    write_text_atomic(manifest, "\n".join(lines) + "\n")
    return manifest


# ================================================================================================= samples

@dataclass
class EditSample:
    """What the trainer consumes for one record: frames aligned in time and size, snapped to the model.

    `source`/`target`: [T,H,W,3] float32 0..1 (same T, H, W); `mask`: [T,H,W] float32 0..1 (soft values kept,
    1 = edited); `reference`: [H',W',3] as stored. Image pairs have T=1 and `fps` None."""

    source: torch.Tensor
    target: torch.Tensor | None
    mask: torch.Tensor | None
    reference: torch.Tensor | None
    instruction: str
    source_caption: str | None
    target_caption: str | None
    type: str | None
    fps: float | None
    key: str
    index: int
    conform: str  # what conform_frames changed, e.g. "9 frames kept of 10 (4k+1)" or "unchanged"


def mask_unit(mask: torch.Tensor) -> torch.Tensor:
    """An edit mask stored as integers, 0/1 (npz clips) or 0/255 (8-bit mask videos), as float 0..1."""
    m = mask.float()
    return m.div_(255.0) if m.numel() and float(m.max()) > 1.0 else m


def read_frames(path: PathLike, max_frames: int | None = None, field: str = "source_video"
                ) -> tuple[torch.Tensor, float | None]:
    """[T,H,W,3] float frames in 0..1 of a video (the first `max_frames`), an image (T=1) or the `field`'s array
    of an npz clip (a mask as 3 equal channels), and the frame rate (None for images and clips)."""
    path = Path(path)
    if path.suffix.lower() == CLIP_SUFFIX:
        try:
            with np.load(path, allow_pickle=False) as z:
                arr = z[CLIP_ARRAYS[field]][:max_frames]
        except (OSError, KeyError, ValueError) as e:
            raise VideoError(f"{path}: not a readable npz clip ({e}); write it again with `viva synth --format npz`."
                             ) from e
        frames = torch.from_numpy(np.ascontiguousarray(arr))
        if field == "mask_video":
            return mask_unit(frames).unsqueeze(-1).expand(*arr.shape, 3), None
        return frames.float().div_(255.0), None
    if is_image_path(path):
        return read_image(path).unsqueeze(0), None
    video = read_video(path, max_frames=max_frames, with_audio=False)
    return video.frames, video.fps


def load_sample(record: EditRecord, *, max_frames: int | None = None, size: tuple[int, int] | None = None,
                temporal_factor: int = 4, spatial_multiple: int = 16) -> EditSample:
    """Read one record's frames: source, target and mask take the same frames (the first `max_frames`),
    then each goes through `conform_frames` (T → k·temporal_factor+1, optional resize to `size` (h, w),
    center crop to multiples of `spatial_multiple`). Pass the editor's `temporal_factor` and
    `spatial_multiple`. The mask becomes one channel (mean over RGB). Raises InputError when the files
    disagree in frame count or size (load_manifest reports that before training starts)."""
    source, fps = read_frames(record.source_video, max_frames)
    source_c, report = conform_frames(source, temporal_factor, spatial_multiple, resize_to=size)
    aligned: dict[str, torch.Tensor | None] = {"target": None, "mask": None}
    for name, path in (("target", record.target_video), ("mask", record.mask_video)):
        if path is None:
            continue
        frames, _ = read_frames(path, max_frames, f"{name}_video")
        if frames.shape[:3] != source.shape[:3]:
            raise InputError(f"{path}: {name} frames {tuple(frames.shape[:3])} (T, H, W) do not match the source "
                             f"{record.source_video.name} {tuple(source.shape[:3])}; run load_manifest on the "
                             "manifest to list every such record.")
        aligned[name] = conform_frames(frames, temporal_factor, spatial_multiple, resize_to=size)[0]
    mask = aligned["mask"]
    if mask is not None:
        mask = mask.mean(dim=-1).clamp_(0.0, 1.0)
    reference = read_image(record.reference_image) if record.reference_image is not None else None
    return EditSample(source=source_c, target=aligned["target"], mask=mask, reference=reference,
                      instruction=record.instruction, source_caption=record.source_caption,
                      target_caption=record.target_caption, type=record.type, fps=fps, key=record.key(),
                      index=record.index, conform=report.message())


# ============================================================================================ tensor cache

def file_identity(path: PathLike) -> str:
    """What a cached result of a file depends on: its content hash for files up to 1 MiB (survives copies
    and touches), else absolute path + size + modification time (cheap for large videos)."""
    p = Path(path).expanduser()
    try:
        st = p.stat()
    except OSError as e:
        raise InputError(f"{p}: cannot identify the file for caching ({e}). Check the path.") from e
    if not p.is_file():
        raise InputError(f"{p}: not a file; cache keys identify files.")
    if st.st_size <= SMALL_FILE_BYTES:
        return f"sha256:{hashlib.sha256(p.read_bytes()).hexdigest()}:{st.st_size}"
    return f"{os.path.abspath(p)}:{st.st_size}:{st.st_mtime_ns}"


def _plain_config(config: object) -> dict:
    """A module's config as a JSON-able dict without bookkeeping keys (paths, library versions)."""
    if isinstance(config, Mapping):
        d = dict(config)
    elif hasattr(config, "to_dict"):
        d = config.to_dict()
    else:
        d = dict(vars(config))
    drop = {"_name_or_path", "_diffusers_version", "transformers_version", "_commit_hash"}
    return {k: v for k, v in d.items() if k not in drop}


def _parameter_checksum(p: torch.Tensor) -> str:
    """Exact float64 sums of the whole tensor and of a position-weighted strided sample (≤ 4096 values)."""
    if p.is_meta:
        return "meta"
    flat = p.detach().reshape(-1)
    sample = flat[::max(1, flat.numel() // 4096)][:4096]
    try:
        total = float(flat.sum(dtype=torch.float64))
        sample = sample.to("cpu").double()
    except (RuntimeError, TypeError):  # dtypes without these kernels (some float8s): go through float32
        total = float(flat.float().sum(dtype=torch.float64))
        sample = sample.to("cpu").float().double()
    weighted = float((sample * torch.arange(1, sample.numel() + 1, dtype=torch.float64)).sum())
    return f"{total.hex()}/{weighted.hex()}"


def model_identity(module: torch.nn.Module, name: str, *, checksummed: int = 8) -> str:
    """A cheap id of a module for cache keys: `name` + a hash of its class, config (`.config`, when it has
    one), parameter names/shapes/dtypes and checksums of `checksummed` parameters spread over the model.
    Different weights in those parameters or a different dtype give a different id. Not a full weight
    hash: put what it cannot see (e.g. LoRAs merged into other layers) into `name`."""
    h = hashlib.sha256(f"{type(module).__module__}.{type(module).__qualname__}".encode())
    config = getattr(module, "config", None)
    if config is not None:
        h.update(json.dumps(_plain_config(config), sort_keys=True, default=str).encode())
    params = list(module.named_parameters())
    h.update(json.dumps([(n, list(p.shape), str(p.dtype)) for n, p in params]).encode())
    if params:
        count = min(checksummed, len(params))
        picks = sorted({round(i * (len(params) - 1) / max(1, count - 1)) for i in range(count)})
        for i in picks:
            h.update(f"{params[i][0]}={_parameter_checksum(params[i][1])};".encode())
    return f"{name}:{h.hexdigest()[:16]}"


def _canonical(part: object, where: str) -> object:
    """A key part as plain JSON; refuse values whose text is not a stable identity (tensors, objects)."""
    if part is None or isinstance(part, (str, bool, int)):
        return part
    if isinstance(part, float):
        return part if math.isfinite(part) else str(part)
    if isinstance(part, os.PathLike):
        return os.fspath(part)
    if isinstance(part, (tuple, list)):
        return [_canonical(p, where) for p in part]
    raise InputError(f"{where}: a cache key part of type {type(part).__name__} has no stable identity; pass "
                     "strings or numbers, e.g. file_identity(path) and model_identity(module, name).")


class TensorCache:
    """Encoded tensors on disk, so later epochs read instead of re-encode.

    Entries live in `root/<kind>/<sha256>.safetensors` (never pickle), keyed by the kind and the key parts,
    which should hold everything the result depends on: `file_identity` of the inputs, `model_identity` of
    the encoder, settings (frame count, size). Writes are atomic (temp file + rename), so parallel workers
    and interrupted runs never leave a half-written entry; a corrupt or foreign entry is recomputed and
    overwritten with a logged warning. `hits`/`misses` count lookups. A hit returns CPU tensors; a miss
    returns what `compute` returned."""

    def __init__(self, root: PathLike):
        self.root = Path(root).expanduser()
        self.hits = 0
        self.misses = 0

    def _key(self, kind: str, key_parts: tuple) -> tuple[str, str]:
        if not kind or not all(c.isalnum() or c in "-_." for c in kind) or kind.startswith("."):
            raise InputError(f"cache kind {kind!r} must be a non-empty name of letters, digits, '-', '_' or '.'.")
        text = json.dumps([kind, _canonical(tuple(key_parts), f"cache kind '{kind}'")], ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest(), text

    def path_for(self, kind: str, key_parts: tuple) -> Path:
        """The file an entry is (or will be) stored in."""
        digest, _ = self._key(kind, key_parts)
        return self.root / kind / f"{digest}.safetensors"

    def _read(self, path: Path, key_text: str) -> dict[str, torch.Tensor] | None:
        """The stored tensors, or None (with a warning) when the file is corrupt or holds another key."""
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            if meta.get("format") != CACHE_FORMAT or meta.get("key") != key_text:
                raise ValueError("the entry was written for another key")
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types for truncated/foreign files
            log.warning("%s: cache entry unreadable (%s); recomputing it.", path, e)
            return None

    def _write(self, path: Path, tensors: dict[str, torch.Tensor], key_text: str) -> None:
        save_safetensors_atomic(path, {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()},
                                {"format": CACHE_FORMAT, "key": key_text})

    def get_or_compute(self, kind: str, key_parts: tuple,
                       compute: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """The stored tensors for (kind, key_parts), or `compute()`'s result, stored for next time."""
        digest, key_text = self._key(kind, key_parts)
        path = self.root / kind / f"{digest}.safetensors"
        if path.is_file():
            stored = self._read(path, key_text)
            if stored is not None:
                self.hits += 1
                return stored
        self.misses += 1
        result = compute()
        if not isinstance(result, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                   for k, v in result.items()):
            raise InputError(f"cache kind '{kind}': compute must return a dict of name → tensor, got "
                             f"{type(result).__name__}.")
        self._write(path, result, key_text)
        return result
