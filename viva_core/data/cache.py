"""`TensorCache`: encoded tensors on disk (safetensors), keyed by everything the result depends on."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ..errors import InputError
from ..safe_io import save_safetensors_atomic
from ..video import PathLike

log = logging.getLogger(__name__)

CACHE_FORMAT = "viva-tensor-cache"


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
    raise InputError(
        f"{where}: a cache key part of type {type(part).__name__} has no stable identity; pass "
        "strings or numbers, e.g. file_identity(path) and model_identity(module, name)."
    )


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
        save_safetensors_atomic(
            path,
            {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()},
            {"format": CACHE_FORMAT, "key": key_text},
        )

    def get(self, kind: str, key_parts: tuple) -> dict[str, torch.Tensor] | None:
        """The stored tensors for (kind, key_parts), or None when there are none (or they are unreadable)."""
        digest, key_text = self._key(kind, key_parts)
        path = self.root / kind / f"{digest}.safetensors"
        stored = self._read(path, key_text) if path.is_file() else None
        if stored is not None:
            self.hits += 1
        return stored

    def put(self, kind: str, key_parts: tuple, tensors: dict[str, torch.Tensor]) -> None:
        """Store `tensors` for (kind, key_parts) (a dict of name -> tensor), replacing any entry there."""
        if not isinstance(tensors, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in tensors.items()
        ):
            raise InputError(
                f"cache kind '{kind}': an entry must be a dict of name → tensor, got {type(tensors).__name__}."
            )
        digest, key_text = self._key(kind, key_parts)
        self._write(self.root / kind / f"{digest}.safetensors", tensors, key_text)

    def get_or_compute(
        self, kind: str, key_parts: tuple, compute: Callable[[], dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """The stored tensors for (kind, key_parts), or `compute()`'s result, stored for next time."""
        stored = self.get(kind, key_parts)
        if stored is not None:
            return stored
        self.misses += 1
        result = compute()
        self.put(kind, key_parts, result)
        return result
