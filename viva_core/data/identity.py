"""Cheap identities of files and models for cache keys: what a cached result depends on."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from ..errors import InputError
from ..video import PathLike

SMALL_FILE_BYTES = 1 << 20  # file_identity hashes the content of files up to this size


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
    sample = flat[:: max(1, flat.numel() // 4096)][:4096]
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
