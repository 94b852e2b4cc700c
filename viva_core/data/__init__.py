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

Where each part lives: `manifest` (fields, `EditRecord`, `load_manifest`), `folder` (`dataset_from_folder`),
`samples` (`load_sample`, `read_frames`), `identity` (`file_identity`, `model_identity`), `cache`
(`TensorCache`). This package re-exports their public names, so `from viva_core.data import load_manifest`
keeps working.
"""

from __future__ import annotations

from .cache import CACHE_FORMAT, TensorCache
from .folder import COMPANION_FIELDS, dataset_from_folder
from .identity import file_identity, model_identity
from .manifest import (
    BENCHMARK_FIELDS,
    CLIP_ARRAYS,
    CLIP_KEY,
    CLIP_SUFFIX,
    FIELD_ALIASES,
    IMAGE_SUFFIXES,
    KNOWN_KEYS,
    PATH_FIELDS,
    REQUIRED_FIELDS,
    TEXT_FIELDS,
    VIDEO_SUFFIXES,
    EditRecord,
    ManifestError,
    is_image_path,
    load_manifest,
)
from .samples import EditSample, load_sample, mask_unit, read_frames

__all__ = [
    "BENCHMARK_FIELDS",
    "CACHE_FORMAT",
    "CLIP_ARRAYS",
    "CLIP_KEY",
    "CLIP_SUFFIX",
    "COMPANION_FIELDS",
    "FIELD_ALIASES",
    "IMAGE_SUFFIXES",
    "KNOWN_KEYS",
    "PATH_FIELDS",
    "REQUIRED_FIELDS",
    "TEXT_FIELDS",
    "VIDEO_SUFFIXES",
    "EditRecord",
    "EditSample",
    "ManifestError",
    "TensorCache",
    "dataset_from_folder",
    "file_identity",
    "is_image_path",
    "load_manifest",
    "load_sample",
    "mask_unit",
    "model_identity",
    "read_frames",
]
