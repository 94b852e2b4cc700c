"""Checkpoints that survive crashes: each is a folder written under a temporary name and renamed into place,
so an interrupted write leaves the previous checkpoint intact. Everything is safetensors or JSON (no pickle):
the optimizer's state_dict is split into its tensors (safetensors) and the rest (JSON, tuples and int keys kept).

state.json carries a format marker: only folders with it count as checkpoints, and cleanup deletes nothing else,
so a user's own `step-*` folder in output_dir is never removed."""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError, OutputPathError
from ..safe_io import new_file_mode

log = logging.getLogger("viva")

PREFIX = "step-"
FORMAT = "viva-checkpoint"
VERSION = 2  # 1: optimizer.pt (a pickle); 2: optimizer.safetensors + optimizer.json
FILES = ("trainable.safetensors", "rng.safetensors", "optimizer.safetensors", "optimizer.json", "state.json")
_NAME = re.compile(rf"^{PREFIX}\d{{7}}$")
_TEMP = re.compile(rf"^\.{PREFIX}\d{{7}}\.[0-9a-f]{{8}}\.tmp$")


@dataclass
class Checkpoint:
    path: Path
    step: int
    trainable: dict[str, torch.Tensor]
    rng: dict[str, torch.Tensor]
    optimizer: dict
    state: dict  # JSON: data position, metrics so far, config


def split_state(obj: Any, tensors: dict[str, torch.Tensor], prefix: str = "t") -> Any:
    """A state_dict as JSON-ready data plus its tensors (filled into `tensors`): tensors become {"__tensor__": key},
    tuples {"__tuple__": [...]}, dicts with non-string keys {"__items__": [[key, value], ...]}. Exact inverse:
    `join_state`."""
    if isinstance(obj, torch.Tensor):
        key = f"{prefix}{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, tuple):
        return {"__tuple__": [split_state(v, tensors, prefix) for v in obj]}
    if isinstance(obj, list):
        return [split_state(v, tensors, prefix) for v in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: split_state(v, tensors, prefix) for k, v in obj.items()}
        return {
            "__items__": [[split_state(k, tensors, prefix), split_state(v, tensors, prefix)] for k, v in obj.items()]
        }
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"optimizer state holds a {type(obj).__name__}, which checkpoints cannot store as JSON")


def join_state(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of `split_state`."""
    if isinstance(obj, list):
        return [join_state(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        if set(obj) == {"__tuple__"}:
            return tuple(join_state(v, tensors) for v in obj["__tuple__"])
        if set(obj) == {"__items__"}:
            return {_hashable(join_state(k, tensors)): join_state(v, tensors) for k, v in obj["__items__"]}
        return {k: join_state(v, tensors) for k, v in obj.items()}
    return obj


def _hashable(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key


def save_checkpoint(
    root: Path,
    step: int,
    *,
    trainable: dict[str, torch.Tensor],
    rng: dict[str, torch.Tensor],
    optimizer: dict,
    state: dict,
    extra_files: Optional[dict[str, Path]] = None,
    keep: int = 3,
) -> Path:
    """Write checkpoint `step` atomically (temp folder + rename) and keep only the newest `keep` of ours."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:07d}"
    if final.exists() and not is_ours(final):
        raise OutputPathError(
            f"{final}: exists and is not a checkpoint written by viva; move it out of {root} (it would be replaced)."
        )
    tmp = root / f".{final.name}.{secrets.token_hex(4)}.tmp"
    tmp.mkdir()
    try:
        save_file({k: v.contiguous() for k, v in trainable.items()}, str(tmp / "trainable.safetensors"))
        save_file({k: v.contiguous() for k, v in rng.items()}, str(tmp / "rng.safetensors"))
        opt_tensors: dict[str, torch.Tensor] = {}
        opt_json = split_state(optimizer, opt_tensors)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "optimizer.json").write_text(json.dumps(opt_json))
        for name, src in (extra_files or {}).items():
            shutil.copy2(src, tmp / name)
        # state.json last: its marker says the folder is complete
        (tmp / "state.json").write_text(
            json.dumps({"format": FORMAT, "version": VERSION, "step": step, **state}, indent=1)
        )
        for f in tmp.iterdir():  # safetensors' save_file leaves 0600: give every file a plain write's mode
            os.chmod(f, new_file_mode())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _read_state(path: Path) -> dict:
    """state.json of checkpoint `path`, checked: ours, this format, an integer step."""
    f = path / "state.json"
    try:
        state = json.loads(f.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(
            f"{f}: missing; {path} is not a complete checkpoint. Resume from another one "
            "(--resume FOLDER) or start over."
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{f}: unreadable ({e}); resume from another checkpoint or start over.") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        if isinstance(state, dict) and "step" in state and (path / "optimizer.pt").is_file():
            raise CheckpointError(
                f"{path}: written by an older viva, with the optimizer state as a pickle "
                "(optimizer.pt), which is no longer loaded. Start a new run, or finish this one "
                "with the viva version that wrote it."
            )
        raise CheckpointError(
            f'{f}: not a viva checkpoint (no \'"format": "{FORMAT}"\'); name a step-* folder that `viva train` wrote.'
        )
    if not isinstance(state.get("step"), int) or isinstance(state["step"], bool) or state["step"] < 0:
        raise CheckpointError(
            f"{f}: 'step' is missing or not a non-negative integer; the checkpoint is damaged. "
            "Resume from another one or start over."
        )
    return state


def is_ours(path: Path) -> bool:
    """A folder this trainer wrote (cleanup and overwrite are limited to these)."""
    try:
        _read_state(path)
    except CheckpointError:
        return False
    return True


def verify_checkpoint(path: Path) -> dict:
    """Check a checkpoint without loading its tensors (files present, safetensors headers intact); returns its
    state. Cheap enough to run before any model loads."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(
            f"{path}: checkpoint folder not found; name a step-* folder under "
            "<output_dir>/checkpoints, or use --resume alone for the latest."
        )
    state = _read_state(path)
    for name in FILES:
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{f}: missing; the checkpoint is incomplete. Resume from another one or start over.")
        if name.endswith(".safetensors"):
            try:
                with safe_open(str(f), framework="pt") as handle:
                    handle.keys()
            except Exception as e:  # SafetensorError on a truncated or foreign file
                raise CheckpointError(f"{f}: corrupt ({e}); resume from another checkpoint or start over.") from None
    return state


def list_checkpoints(root: Path) -> list[Path]:
    """Our checkpoints, oldest first (temporary folders of interrupted writes and foreign folders are ignored)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and _NAME.match(p.name) and is_ours(p))


def load_checkpoint(path: Path) -> Checkpoint:
    """Load a checkpoint; any damage is a CheckpointError naming the file."""
    path = Path(path)
    state = verify_checkpoint(path)
    current = path / "trainable.safetensors"
    try:
        trainable = load_file(str(current))
        current = path / "rng.safetensors"
        rng = load_file(str(current))
        current = path / "optimizer.json"
        layout = json.loads(current.read_text(encoding="utf-8"))
        current = path / "optimizer.safetensors"
        optimizer = join_state(layout, load_file(str(current)))
    except Exception as e:  # SafetensorError, OSError, JSON errors, a tensor key the JSON names but the file lacks
        raise CheckpointError(
            f"{current}: unreadable ({type(e).__name__}: {e}); resume from an older checkpoint or start over."
        ) from None
    if not isinstance(optimizer, dict) or "state" not in optimizer or "param_groups" not in optimizer:
        raise CheckpointError(f"{path / 'optimizer.json'}: not an optimizer state (no state/param_groups).")
    if "torch" not in rng:
        raise CheckpointError(f"{path / 'rng.safetensors'}: has no 'torch' generator state; the checkpoint is damaged.")
    return Checkpoint(path, state["step"], trainable, rng, optimizer, state)


def latest_checkpoint(root: Path) -> Optional[Path]:
    """The newest complete checkpoint: one damaged after it was written (truncated, a file missing) is skipped,
    so a resume continues from the one before."""
    for path in reversed(list_checkpoints(root)):
        try:
            verify_checkpoint(path)
        except CheckpointError as e:
            log.warning("skipping damaged checkpoint: %s", e)
            continue
        return path
    return None


def remove_checkpoints(root: Path) -> int:
    """Delete our checkpoints under `root` (an `--overwrite` fresh start); foreign folders stay. Returns how many."""
    found = list_checkpoints(root)
    for p in found:
        shutil.rmtree(p)
    return len(found)


def remove_stale_temporaries(root: Path) -> None:
    """Temp folders of interrupted checkpoint writes (our exact naming only)."""
    if root.is_dir():
        for p in root.iterdir():
            if p.is_dir() and _TEMP.match(p.name):
                shutil.rmtree(p, ignore_errors=True)


def trained_by_viva(path: Path) -> bool:
    """A safetensors file whose metadata says this trainer wrote it (what a re-run may replace)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("trainer") == "viva_core"
    except Exception:  # not safetensors at all
        return False


def check_run_destination(out_dir: Path, name: str, *, resume: bool, overwrite: bool) -> None:
    """Before any model loads: refuse to replace what an earlier run (or the user) left in `out_dir` unless asked.

    A LoRA of the same name that VIVA did not train is never replaced without `overwrite`; one it trained, and
    checkpoints of an earlier run, are continued by `resume` or replaced by `overwrite`."""
    out_dir = Path(out_dir)
    outputs = [
        out_dir / f"{name}{tail}.safetensors" for tail in ("", "_refiner", "_interrupted", "_interrupted_refiner")
    ]
    for f in outputs:
        if f.exists() and not overwrite and (not f.is_file() or not trained_by_viva(f)):
            raise OutputPathError(
                f"{f}: exists and was not trained by viva; choose another output_name (or "
                "output_dir), or pass --overwrite to replace it."
            )
    if resume or overwrite:
        return
    found = list_checkpoints(out_dir / "checkpoints")
    if found:
        raise OutputPathError(
            f"{out_dir}: holds checkpoints of an earlier run (up to {found[-1].name}); pass --resume "
            "to continue it, --overwrite to start over (its checkpoints are deleted), or choose "
            "another output_dir."
        )
    if outputs[0].exists():
        raise OutputPathError(
            f"{outputs[0]}: a LoRA of an earlier run; pass --overwrite to replace it, or choose another output_name."
        )
