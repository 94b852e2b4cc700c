"""`generate`: many clips written (mp4 or npz, in worker processes when asked) into train / val /
heldout manifests, with `synth_config.json`."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..safe_io import atomic_path, write_text_atomic
from ..video import PathLike
from .clips import CATEGORIES, OPERATIONS, Clip, _category_can, make_clip
from .world import PALETTE, SHAPES, SIZES

log = logging.getLogger(__name__)

# (operation, "attribute" | "referring", value) triples that only the heldout split contains.
DEFAULT_HELDOUT: tuple[tuple[str, str, str], ...] = (
    ("recolour", "attribute", "purple"),
    ("add", "attribute", "cyan"),
    ("replace_shape", "attribute", "diamond"),
    ("move", "attribute", "top"),
    ("remove", "referring", "size"),
    ("move", "referring", "speed"),
    ("recolour", "referring", "nearest_corner"),
    ("resize", "referring", "first_wall_hit"),
)

SPLITS = ("train", "val", "heldout")
FORMATS = ("mp4", "npz")
MP4_ADVICE_CLIPS = 5000  # above this, generate suggests npz


def split_counts(n: int, splits: Sequence[float]) -> dict[str, int]:
    """Clips per split: proportional to `splits`, remainders to the largest fractions (sums to n)."""
    if len(splits) != 3 or any(not math.isfinite(f) or f < 0 for f in splits) or sum(splits) <= 0:
        raise InputError(
            f"splits={tuple(splits)} must be three non-negative fractions (train, val, heldout) "
            "with a positive sum, e.g. (0.8, 0.1, 0.1)."
        )
    total = sum(splits)
    exact = [n * f / total for f in splits]
    counts = [int(math.floor(x)) for x in exact]
    for i in sorted(range(3), key=lambda i: counts[i] - exact[i])[: n - sum(counts)]:
        counts[i] += 1
    return dict(zip(SPLITS, counts))


@contextlib.contextmanager
def _one_torch_thread():
    """write_video converts frames with torch; on 64x64 frames its thread pool costs more than it saves (a frame
    is too little work to split across threads)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _write_mp4s(folder: Path, stem: str, clip: Clip, fps: float) -> dict[str, str]:
    import torch

    from ..video import write_video

    mask_rgb = np.repeat((clip.mask.astype(np.uint8) * 255)[..., None], 3, axis=-1)
    out = {}
    for name, arr in (("source_video", clip.source), ("target_video", clip.target), ("mask_video", mask_rgb)):
        path = folder / f"{stem}_{name.removesuffix('_video')}.mp4"
        write_video(path, torch.from_numpy(arr).float().div_(255.0), fps)
        out[name] = f"{folder.name}/{path.name}"
    return out


def _write_npz(folder: Path, stem: str, clip: Clip) -> dict[str, str]:
    """What np.savez_compressed writes (np.load reads it), at zlib level 3: 2x faster than its level 6 for
    files ~1.5x larger (about 11 KB per 64x64x17 clip)."""
    path = folder / f"{stem}.npz"
    arrays = {
        "source": clip.source,
        "target": clip.target,
        "mask": clip.mask.astype(np.uint8),
        "world": np.array(clip.world.to_json()),
        "target_world": np.array(clip.target_world.to_json()),
    }
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=3) as zf:
        for name, arr in arrays.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, arr, allow_pickle=False)
    return {"npz": f"{folder.name}/{path.name}"}


@dataclass(frozen=True)
class _ClipJob:
    """Make and write clip i of a data set (picklable: worker processes run it)."""

    out: Path
    seed: int
    frames: int
    size: int
    categories: tuple[str, ...]
    ops: tuple[str, ...]
    held: tuple
    reachable: tuple
    format: str
    fps: float

    def __call__(self, item: tuple[int, tuple[str, int]]) -> str:
        i, (split, j) = item
        rng = np.random.default_rng([self.seed, i])
        # Heldout clip j carries held-out triple j mod len: every triple gets an equal share.
        require = self.reachable[j % len(self.reachable)] if split == "heldout" else None
        clip = make_clip(
            rng,
            frames=self.frames,
            size=self.size,
            categories=self.categories,
            ops=self.ops,
            require=require,
            exclude=() if split == "heldout" else self.held,
        )
        stem, folder = f"{j:06d}", self.out / split
        paths = _write_npz(folder, stem, clip) if self.format == "npz" else _write_mp4s(folder, stem, clip, self.fps)
        return json.dumps({**paths, **clip.record()}, ensure_ascii=False)


@contextlib.contextmanager
def _pool(workers: int):
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(workers, initializer=_worker_init) as pool:
        yield pool


def _worker_init() -> None:
    """One torch thread per worker: N workers each with a full thread pool made mp4 writing 50x slower on a
    16-core machine (112 clips/minute with 14 workers, measured)."""
    import torch

    torch.set_num_threads(1)


def _check_names(kind: str, given: Sequence[str], known: Sequence[str]) -> tuple[str, ...]:
    bad = [x for x in given if x not in known]
    if bad or not given:
        raise InputError(
            f"{kind} {list(given)}: {'unknown ' + ', '.join(bad) if bad else 'none given'}; "
            f"choose from {', '.join(known)}."
        )
    return tuple(given)


def generate(
    out_dir: PathLike,
    *,
    n: int,
    seed: int,
    frames: int = 17,
    size: int = 64,
    categories: Sequence[str] = CATEGORIES,
    ops: Sequence[str] | None = None,
    format: str = "mp4",
    splits: Sequence[float] = (0.8, 0.1, 0.1),
    heldout: Iterable[tuple[str, str, str]] = DEFAULT_HELDOUT,
    fps: float = 8.0,
    overwrite: bool = False,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Path]:
    """Write `n` clips into train / val / heldout manifests under `out_dir`; return {split: manifest path}.

    Clip i is `make_clip(np.random.default_rng([seed, i]), ...)`, so a seed fixes every array and text, and
    clips do not depend on each other (so `workers` processes give the same files). Train and val never contain a
    `heldout` triple; every heldout clip
    contains at least one (in turn, among those the categories and ops can make). Splits with no clips
    get no manifest. `synth_config.json` records the seed and settings. An `out_dir` that already holds a
    synth_config.json is refused unless `overwrite` (stale media of a larger earlier run are not deleted)."""
    if not isinstance(n, int) or n < 1:
        raise InputError(f"n={n} must be a positive number of clips.")
    if frames < 2 or size < 32:
        raise InputError(
            f"frames={frames} and size={size}: clips need at least 2 frames and 32x32 pixels "
            "(objects are 7-14% of the side)."
        )
    if format not in FORMATS:
        raise InputError(f"format='{format}' must be 'mp4' (load_manifest records) or 'npz' (exact uint8 arrays).")
    if format == "mp4" and size % 2:
        raise InputError(f"size={size}: mp4 (yuv420p) needs an even size; use {size + 1} or format='npz'.")
    categories = _check_names("categories", list(categories), CATEGORIES)
    ops = _check_names("ops", list(OPERATIONS if ops is None else ops), OPERATIONS)
    held = tuple(tuple(h) for h in heldout)
    for op, field_, value in held:
        if op not in OPERATIONS or field_ not in ("attribute", "referring"):
            raise InputError(
                f"heldout triple {(op, field_, value)} must be (operation, 'attribute'|'referring', "
                f"value) with an operation of {', '.join(OPERATIONS)}."
            )
    usable = [c for c in categories if _category_can(c, ops, None)]
    if not usable:
        raise InputError(f"categories {list(categories)} cannot make any of the operations {list(ops)}.")
    if len(usable) < len(categories):
        log.warning(
            "categories %s make none of the operations %s; skipped.", sorted(set(categories) - set(usable)), list(ops)
        )
    reachable = [h for h in held if any(_category_can(c, ops, h) for c in usable)]
    counts = split_counts(n, splits)
    if counts["heldout"] and not reachable:
        raise InputError(
            f"no heldout triple of {list(held)} can be made with categories {usable} and ops {list(ops)}; "
            "pass heldout triples these can make, or splits with no heldout share."
        )
    if format == "mp4" and n > MP4_ADVICE_CLIPS:
        log.warning(
            "%d clips as mp4 take about %.0f minutes (about 500 clips/minute on 2 cores); format='npz' is "
            "about 10x faster and exact.",
            n,
            n / 500,
        )
    out = Path(out_dir).expanduser()
    if (out / "synth_config.json").exists() and not overwrite:
        raise InputError(
            f"{out}: already holds a synthetic data set (synth_config.json). Pick a new folder, or "
            "pass overwrite=True (--overwrite) to write over it."
        )
    for split, count in counts.items():
        if count:
            (out / split).mkdir(parents=True, exist_ok=True)

    labels = [(s, j) for s in SPLITS for j in range(counts[s])]
    job = _ClipJob(out, seed, frames, size, tuple(usable), tuple(ops), held, tuple(reachable), format, fps)
    records: dict[str, list[str]] = {s: [] for s in SPLITS}
    writer = contextlib.nullcontext() if format == "npz" else _one_torch_thread()
    with writer, _pool(workers) if workers > 1 else contextlib.nullcontext() as pool:
        lines = pool.imap(job, enumerate(labels), chunksize=16) if pool is not None else map(job, enumerate(labels))
        for i, ((split, _), line) in enumerate(zip(labels, lines)):
            records[split].append(line)
            if progress is not None:
                progress(i + 1, n)
    manifests: dict[str, Path] = {}
    for split in SPLITS:
        if records[split]:
            manifests[split] = out / f"{split}.jsonl"
            write_text_atomic(manifests[split], "\n".join(records[split]) + "\n")
    config = {
        "generator": "viva_core.synth",
        "version": 1,
        "seed": seed,
        "n": n,
        "frames": frames,
        "size": size,
        "fps": fps,
        "format": format,
        "categories": list(usable),
        "ops": list(ops),
        "splits": dict(zip(SPLITS, map(float, splits))),
        "counts": counts,
        "heldout": [list(h) for h in held],
        "palette": {k: list(v) for k, v in PALETTE.items()},
        "shapes": list(SHAPES),
        "sizes": SIZES,
        "manifests": {k: v.name for k, v in manifests.items()},
        "clip_seed": "numpy.random.default_rng([seed, clip_index]); clip_index runs over train, val, heldout",
    }
    write_text_atomic(out / "synth_config.json", json.dumps(config, indent=2) + "\n")
    return manifests
