"""Safe file I/O: weights are read from safetensors only (never pickle); files are written atomically."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
from pathlib import Path
from typing import Iterator

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .errors import ModelLoadError

PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle")


def check_safetensors_path(path: str | os.PathLike, what: str = "weights") -> Path:
    """Refuse pickle formats and missing files with a message that says what to do."""
    p = Path(path)
    if p.suffix.lower() in PICKLE_SUFFIXES:
        raise ModelLoadError(
            f"{p}: {what} in pickle format ({p.suffix}) are refused because loading them can run arbitrary code. "
            "Convert the file to .safetensors (e.g. safetensors.torch.save_file) and load that instead."
        )
    if not p.is_file():
        raise ModelLoadError(f"{p}: {what} file not found. Check the path, or put the .safetensors file there.")
    if p.suffix.lower() != ".safetensors":
        raise ModelLoadError(f"{p}: {what} must be a .safetensors file (got '{p.suffix or 'no suffix'}').")
    return p


def load_safetensors(
    path: str | os.PathLike, what: str = "weights", device: str = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Return (tensors, __metadata__) of a .safetensors file; a corrupt file gives a ModelLoadError."""
    p = check_safetensors_path(path, what)
    try:
        with safe_open(str(p), framework="pt", device=device) as f:
            metadata = dict(f.metadata() or {})
        tensors = load_file(str(p), device=device)
    except Exception as e:  # safetensors raises SafetensorError / OSError on truncated or foreign files
        raise ModelLoadError(
            f"{p}: cannot read {what} as safetensors ({e}). The file is corrupt or not safetensors; "
            "download or export it again."
        ) from e
    return tensors, metadata


def read_metadata_json(metadata: dict[str, str], key: str) -> dict | None:
    """Parse a JSON value stored in safetensors __metadata__ (configs, training facts)."""
    raw = metadata.get(key)
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return None


def _umask() -> int:
    """The process umask, read without changing it where Linux shows it (setting it to read it back would
    briefly affect files other threads create)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The mode a plain `open(path, "w")` gives a new file: 0666 minus the umask."""
    return 0o666 & ~_umask()


def read_json_object(path: str | os.PathLike, what: str = "config") -> dict:
    """A JSON file that must hold an object (config.json, adapter_config.json): a missing, non-UTF-8, broken or
    non-object file gives a ModelLoadError naming it, instead of a JSONDecodeError or a later AttributeError."""
    p = Path(path)
    try:
        data = json.loads(p.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(f"{p}: {what} file not found.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(
            f"{p}: {what} is not readable JSON ({e}); restore the file from the model's original download."
        ) from None
    if not isinstance(data, dict):
        raise ModelLoadError(
            f"{p}: {what} must be a JSON object ({{...}}), got a {type(data).__name__}; restore the "
            "file from the model's original download."
        )
    return data


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A hidden temp path beside `path` (same suffix, so writers that pick a format by suffix still work).
    When the block succeeds it is renamed over `path`; on any error it is removed and `path` is untouched, so a
    reader never sees half a file. The file gets the mode a plain write would give (an existing file's mode,
    else 0666 minus the umask): writers that make their own temp file leave 0600 (safetensors 0.8's save_file does)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.stem}.{secrets.token_hex(4)}.tmp{p.suffix}")
    try:
        yield tmp
        if tmp.is_file():
            os.chmod(tmp, stat.S_IMODE(p.stat().st_mode) if p.is_file() else new_file_mode())
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def save_safetensors_atomic(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> Path:
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)
