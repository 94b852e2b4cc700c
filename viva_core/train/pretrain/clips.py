"""The training clips of `viva pretrain`: the manifest's synth clips held in memory as uint8 tensors."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ...errors import InputError


@dataclass
class ClipSet:
    """Clips of a synth npz manifest in memory: uint8 frames [N,T,H,W,3], masks [N,T,H,W], manifest lines, and the
    (source, target) worlds as JSON where the npz holds them (the judge re-edits a source world)."""

    source: torch.Tensor
    target: torch.Tensor
    mask: torch.Tensor
    records: list[dict]
    worlds: list[tuple[str, str] | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)


def load_clip_set(manifest: str | Path, limit: int = 0) -> ClipSet:
    path = Path(manifest)
    if not path.is_file():
        raise InputError(f"{path}: manifest not found. Make one with `viva synth --format npz --out DIR`.")
    records = _pretrain_records(path)
    if limit:
        records = records[:limit]
    if not records:
        raise InputError(f"{path}: the manifest has no clips.")
    arrays: dict[str, list[np.ndarray]] = {"source": [], "target": [], "mask": []}
    worlds: list[tuple[str, str] | None] = []
    for i, rec in enumerate(records):
        npz = path.parent / rec["npz"]
        try:
            with np.load(npz, allow_pickle=False) as z:
                for k in arrays:
                    arrays[k].append(z[k])
                worlds.append((str(z["world"]), str(z["target_world"])) if "world" in z.files else None)
        except (OSError, KeyError, ValueError) as e:
            raise InputError(f"{npz} (line {i + 1} of {path}): unreadable clip ({e}). Re-run `viva synth`.") from e
    shapes = {a.shape for a in arrays["source"]}
    if len(shapes) != 1:
        raise InputError(f"{path}: clips have different shapes {sorted(shapes)}; pretraining needs one size.")
    return ClipSet(*(torch.from_numpy(np.stack(arrays[k])) for k in ("source", "target", "mask")), records, worlds)


def _pretrain_records(path: Path) -> list[dict]:
    """The manifest's lines as `viva synth --format npz` writes them: JSON objects with an "npz" file and an
    "instruction". Every bad line is reported at once (line numbers), before any clip is read."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read the manifest ({e}); it must be UTF-8 JSON lines.") from None
    records, problems = [], []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"line {n}: not JSON ({e.msg})")
            continue
        missing = [k for k in ("npz", "instruction") if not isinstance(rec, dict) or not isinstance(rec.get(k), str)]
        if missing:
            problems.append(f"line {n}: needs " + " and ".join(f'"{k}" (text)' for k in missing))
            continue
        records.append(rec)
    if problems:
        raise InputError(
            f"{path}: {len(problems)} bad line(s); pretraining reads npz clips made by `viva synth "
            "--format npz`:\n" + "\n".join(f"  {p}" for p in problems[:20])
        )
    return records


def frames_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 [..., T,H,W,3] -> float [..., T,H,W,3] in 0..1."""
    return x.float() / 255.0


def video_batch(x: torch.Tensor) -> torch.Tensor:
    """uint8 [B,T,H,W,3] -> [B,3,T,H,W] in -1..1 (the VAE's input)."""
    return frames_float(x).permute(0, 4, 1, 2, 3) * 2 - 1


def operation_weights(records: list[dict], power: float) -> torch.Tensor:
    """Sampling weight of each clip (summing to 1) that evens out how often each operation is trained: a clip weighs
    the mean of 1 / (clips containing o) over its operations o ("move+style" counts for move and for style), raised to
    `power` (0 = uniform, 1 = every operation about equally often). On synth's clips add and move are in ~7% of
    them, time shift in 17%; docs/small_models.md, section 24."""
    ops = [str(r.get("operation") or "").split("+") for r in records]
    counts: dict[str, int] = {}
    for parts in ops:
        for o in set(parts):
            counts[o] = counts.get(o, 0) + 1
    w = torch.tensor([sum(1.0 / counts[o] for o in parts) / len(parts) for parts in ops], dtype=torch.float64)
    w = w.pow(power)
    return w / w.sum()
