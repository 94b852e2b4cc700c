"""The sampling settings of an edit and their defaults: one place, read by the pipeline, the CLI's flags and the
nodes' widgets. No torch import, so `viva --help` stays instant.

shift and sampler left as None come from the editor: a diffusers folder's scheduler/scheduler_config.json
(`Editor.sampling_defaults`; Lucy-Edit and Wan ship one), else DEFAULT_SHIFT / DEFAULT_SAMPLER. A value given
(a CLI flag, an API argument, a node widget) always wins."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping, Optional

from .errors import InputError

SAMPLERS = ("euler", "unipc")
DEFAULT_SHIFT = 5.0  # Wan's sigma shift when the model folder names none; ~3 for 480p, 5 for 720p
DEFAULT_SAMPLER = "unipc"


@dataclass(frozen=True)
class EditSettings:
    steps: int = 30
    cfg: float = 5.0  # classifier-free guidance on the text/instructor conditioning; 1 = off (one pass per step)
    seed: int = 0
    shift: Optional[float] = None  # Wan's sigma shift; None: the editor's (its scheduler config), else DEFAULT_SHIFT
    strength: float = 1.0  # < 1 starts from the source latents noised to that level
    sampler: Optional[str] = None  # None: the editor's (its scheduler config), else DEFAULT_SAMPLER

    def resolved(self, model: Optional[Mapping[str, object]] = None) -> EditSettings:
        """These settings with shift / sampler left as None taken from `model` (an editor's `sampling_defaults`,
        read from its folder's scheduler config), else from DEFAULT_SHIFT / DEFAULT_SAMPLER."""
        model = model or {}
        shift = self.shift if self.shift is not None else float(model.get("shift", DEFAULT_SHIFT))
        sampler = self.sampler if self.sampler is not None else str(model.get("sampler", DEFAULT_SAMPLER))
        return dataclasses.replace(self, shift=shift, sampler=sampler)

    def check(self) -> None:
        if self.steps < 1 or self.steps > 1000:
            raise InputError(f"steps must be in 1..1000, got {self.steps}.")
        if self.cfg < 0:
            raise InputError(f"cfg must be >= 0, got {self.cfg}.")
        if self.shift is not None and not self.shift > 0:
            raise InputError(f"shift must be > 0, got {self.shift}.")
        if self.sampler is not None and self.sampler not in SAMPLERS:
            raise InputError(f"sampler '{self.sampler}' is not one of {SAMPLERS}.")


DEFAULTS = EditSettings(shift=DEFAULT_SHIFT, sampler=DEFAULT_SAMPLER)  # for an editor whose folder names no scheduler
BUNDLED_STEPS = (
    12  # the bundled small editor's steps. Against the benchmark's 20 on 32 held-out clips (paired): overall
)
# +0.000 (-0.008..+0.009), EA +0.002, PC +0.005, for 40% fewer DiT calls; docs/small_models.md, section 11.
