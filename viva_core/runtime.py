"""Device, dtype and progress plumbing shared by every model role.

ComfyUI services (progress bar, interrupt, device choice) reach the core only through these small
arguments; the core never imports ComfyUI.
"""

from __future__ import annotations

from typing import Optional, Protocol, Sequence

import torch

from .errors import InputError

DTYPE_NAMES = ("bf16", "fp16", "fp32")  # what the CLI and the nodes offer; DTYPES also reads torch's spellings
DTYPES = {
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
}


def parse_dtype(name: str | torch.dtype, device: str | torch.device | None = None) -> torch.dtype:
    """A dtype by name; "auto" is bf16 on CUDA and fp32 elsewhere (bf16 matmuls are slow on CPUs: one ComfyUI
    edit graph on 2 cores takes 246 s in bf16, 146 s in fp32)."""
    if isinstance(name, torch.dtype):
        return name
    if name.lower() == "auto":
        dev = default_device() if device is None or device == "auto" else torch.device(device)
        return torch.bfloat16 if dev.type == "cuda" else torch.float32
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise InputError(f"dtype '{name}' is not one of {['auto'] + sorted(set(DTYPES))}.") from None


def cpu_has_bf16_matmul() -> bool:
    """Whether this CPU multiplies bf16 in hardware (Intel AMX): there bf16 matmuls are faster than fp32, where
    elsewhere they are slower (the reason CPU defaults are fp32)."""
    check = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private, so looked up: absent means no
    return bool(check is not None and check())


def bf16_is_fast(device: str | torch.device) -> bool:
    """Whether bf16 runs faster than fp32 on `device`: a GPU, or a CPU with AMX (`cpu_has_bf16_matmul`). The one
    rule for the dtypes that default to bf16 where it pays (the VAE's auto dtype, the bundled editor's)."""
    device = torch.device(device)
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16_matmul())


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def parse_device(name: str | torch.device | None) -> torch.device:
    if name is None or name == "auto":
        return default_device()
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device '{name}' was asked for but CUDA is not available; use 'cpu' or 'auto'.")
    return dev


class ProgressFn(Protocol):
    """Called after each unit of work: (done, total, preview). `preview` is None or, from the sampler, the
    predicted clean latents [1, z, T, H, W] fp32 of that step (ComfyUI turns them into its latent preview).

    May raise to interrupt (ComfyUI's interrupt exception propagates unchanged)."""

    def __call__(self, done: int, total: int, preview: Optional[torch.Tensor] = None) -> None: ...


def no_progress(done: int, total: int, preview: Optional[torch.Tensor] = None) -> None:
    return None


def available_memory_bytes() -> int:
    """Free RAM (Linux /proc/meminfo MemAvailable; elsewhere total physical memory as an upper bound)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class ModelHost(Protocol):
    """Places model parts for an app that manages memory itself (ComfyUI: nodes/model_management.py).

    A hosted part is never moved by the core: right before it runs, the core calls `load(part)`, and the host
    puts it on its device (evicting other models if it must) and decides when it leaves again (another model
    needs the memory, the user unloads models). Without a host the loading options (`offload`) place parts."""

    def load(self, part: torch.nn.Module, loras: Sequence = ()) -> bool:
        """Make `part` ready to run on its device. For the editor's DiT `loras` is its LoRA stack (LoraSpec);
        returns True when the host applied them itself (as weight patches it undoes), False when the core must
        (`lora.applied_loras`)."""
        ...
