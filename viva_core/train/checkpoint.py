"""Checkpoints that survive crashes: each is a folder written under a temporary name and renamed into place,
so an interrupted write leaves the previous checkpoint intact. Optimizer state is loaded with
`torch.load(weights_only=True)`; everything else is safetensors or JSON."""
from __future__ import annotations

import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save_file

from ..errors import InputError

PREFIX = "step-"


@dataclass
class Checkpoint:
    path: Path
    step: int
    trainable: dict[str, torch.Tensor]
    rng: dict[str, torch.Tensor]
    optimizer: dict
    state: dict  # JSON: data position, metrics so far, config


def save_checkpoint(root: Path, step: int, *, trainable: dict[str, torch.Tensor], rng: dict[str, torch.Tensor],
                    optimizer: dict, state: dict, extra_files: Optional[dict[str, Path]] = None,
                    keep: int = 3) -> Path:
    """Write checkpoint `step` atomically (temp folder + rename) and keep only the newest `keep`."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:07d}"
    tmp = root / f".{final.name}.{secrets.token_hex(4)}.tmp"
    tmp.mkdir()
    try:
        save_file({k: v.contiguous() for k, v in trainable.items()}, str(tmp / "trainable.safetensors"))
        save_file({k: v.contiguous() for k, v in rng.items()}, str(tmp / "rng.safetensors"))
        torch.save(optimizer, tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, **state}, indent=1))
        for name, src in (extra_files or {}).items():
            shutil.copy2(src, tmp / name)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders of interrupted writes are ignored)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX)
                  and (p / "state.json").is_file())


def load_checkpoint(path: Path) -> Checkpoint:
    try:
        state = json.loads((path / "state.json").read_text())
        trainable = load_file(str(path / "trainable.safetensors"))
        rng = load_file(str(path / "rng.safetensors"))
        optimizer = torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu")
    except (OSError, ValueError, RuntimeError) as e:
        raise InputError(f"{path}: checkpoint is unreadable ({e}); resume from an older one or start over.") from e
    return Checkpoint(path, int(state["step"]), trainable, rng, optimizer, state)


def latest_checkpoint(root: Path) -> Optional[Path]:
    found = list_checkpoints(root)
    return found[-1] if found else None


def remove_stale_temporaries(root: Path) -> None:
    if root.is_dir():
        for p in root.glob(f".{PREFIX}*.tmp"):
            shutil.rmtree(p, ignore_errors=True)
