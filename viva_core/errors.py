"""User-facing errors. Every message names the file (or input) at fault and the fix.

Nodes let these propagate: ComfyUI shows the message and keeps running; the CLI prints it and exits 2.
"""

from __future__ import annotations


class VivaError(Exception):
    """Base class for errors a user can act on."""


class VideoError(VivaError):
    """A video file cannot be read or written, or its frames are unusable."""


class ModelLoadError(VivaError):
    """A model file or folder is missing, incomplete, of the wrong architecture, or not safetensors."""


class LoraError(VivaError):
    """A LoRA file matches no key of the model, has wrong shapes, or is not safetensors."""


class InputError(VivaError):
    """An argument is out of range or inconsistent (sizes, counts, paths outside allowed folders)."""


class NonFiniteError(VivaError):
    """The model produced NaN/Inf; nothing is saved."""


class ConfigError(InputError):
    """A TOML config, a `--set` override or a manifest field has the wrong type, range or name."""


class OutputPathError(InputError):
    """An output would replace an input, or a file the user did not ask to replace (`--overwrite` where offered)."""


class CheckpointError(InputError):
    """A training checkpoint is incomplete, corrupt, from an older format, or not one this trainer wrote."""
