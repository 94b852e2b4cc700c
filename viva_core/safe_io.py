"""Safe file I/O: weights are read from safetensors only (never pickle); text files are written atomically."""
from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

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


def load_safetensors(path: str | os.PathLike, what: str = "weights", device: str = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Return (tensors, __metadata__) of a .safetensors file; a corrupt file gives a ModelLoadError."""
    p = check_safetensors_path(path, what)
    try:
        with safe_open(str(p), framework="pt", device=device) as f:
            metadata = dict(f.metadata() or {})
        tensors = load_file(str(p), device=device)
    except Exception as e:  # safetensors raises SafetensorError / OSError on truncated or foreign files
        raise ModelLoadError(f"{p}: cannot read {what} as safetensors ({e}). The file is corrupt or not safetensors; "
                             "download or export it again.") from e
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


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write into a hidden temp file beside `path`, then rename it over `path`: never a half-written file."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{secrets.token_hex(4)}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return p
