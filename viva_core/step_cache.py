"""Step caching: reuse of the DiT's work between sampling steps, off unless asked for. It trades quality for speed;
the measured cost (PSNR / SSIM against the uncached edit, the verifier's EA / PC) is in bench/RESULTS.md.

Built on diffusers' cache hooks (`CacheMixin.enable_cache`), not on a caching algorithm of VIVA's own:
`first_block` is diffusers' First Block Cache (TeaCache's idea without per-model calibration): every DiT call runs
its first block; when that block's residual changed by less than `threshold` (mean |change| / mean |residual|, against
the last call that ran all blocks) the remaining blocks are skipped and their cached residual is added instead.
Threshold 0 computes every call (the same edit bit for bit); larger thresholds skip more calls.

The hooks are on the DiT only for one sampling run (`step_cached`): enabled before its first step, removed after its
last (also on an error), so the DiT that ComfyUI shares between nodes is clean afterwards, and each run (one edit,
one batch of best-of-N candidates, a shared trunk) starts with an empty cache. CFG's conditioned and negative rows
are one DiT call (`pipeline.guided_velocity`), so one decision covers both; candidates sampled together
(`edit_encoded_batch` with several seeds) share one decision per call too, so with caching a batched candidate is
not bit-equal to its seed's lone edit (one at a time it is).

Tried on the tiny test DiT on the CPU (tests/test_step_cache.py): works with LoRA stacks (merged, and unmerged on fp8
weights), fp8 storage, diffusers' group offloading hooks on the same blocks (offload=block's; applied CPU to CPU here,
not yet run on a GPU), compile=full and compile=blocks (`editor.compile_dit` compiles each block's forward, which the
cache's hooks then call: compiling the block's whole call traced the hooks, which dynamo refuses with fullgraph).

Not offered (tried on the tiny test DiT, diffusers 0.42, 12 calls, interval 3):
- TaylorSeer (`TaylorSeerCacheConfig`): its default module patterns (``^blocks.*attn``) match none of Wan's
  ``attn1`` / ``attn2``, so on Wan it hooks nothing and skips nothing, silently. With patterns of our own it runs,
  on a fixed schedule whatever the input does: whole blocks predicted (every ``blocks.<i>``) left 3-7% relative error in
  the predicted calls' output, lite mode (blocks skipped, `proj_out` extrapolated) 18-36%; First Block Cache decides
  per call from the input and computes every call at threshold 0. Patterns for Wan and their quality would have to be
  measured on a real editor first.
- MagCache (`MagCacheConfig`): needs per-model magnitude ratios calibrated on a full run first.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Optional

from .errors import InputError

if TYPE_CHECKING:  # torch loads with the models, not with `viva --help` (the CLI parses specs here)
    import torch

log = logging.getLogger(__name__)

STEP_CACHE_METHODS = ("off", "first_block")
DEFAULT_THRESHOLD = 0.05  # diffusers' FirstBlockCacheConfig default
MAX_THRESHOLD = 10.0  # a relative change; beyond ~1 every call after the first reuses the cache
CONTEXT = "viva_sampling"  # the one cache context of a sampling run (CFG rows are one DiT call)
SPEC_HELP = "first_block[:THRESHOLD] (e.g. first_block:0.05), or off"


@dataclass(frozen=True)
class StepCache:
    """How the DiT reuses work between steps; `Editor.step_cache` (None: every call computed)."""

    method: str = "first_block"
    threshold: float = DEFAULT_THRESHOLD  # first_block: relative change of the first block's residual that recomputes

    def __post_init__(self) -> None:
        if self.method not in STEP_CACHE_METHODS[1:]:
            raise InputError(
                f"step cache method '{self.method}' is not one of {STEP_CACHE_METHODS[1:]}; write {SPEC_HELP}."
            )
        t = self.threshold
        if (
            isinstance(t, bool)
            or not isinstance(t, (int, float))
            or not math.isfinite(t)
            or not 0 <= t <= MAX_THRESHOLD
        ):
            raise InputError(
                f"step cache {self.method} threshold must be a number in 0..{MAX_THRESHOLD:g} (0: every DiT call "
                f"computed; diffusers' default: {self.method}:{DEFAULT_THRESHOLD:g}), got {t!r}."
            )

    def label(self) -> str:
        return f"{self.method} {self.threshold:g}"

    def diffusers_config(self):
        from diffusers.hooks import FirstBlockCacheConfig

        return FirstBlockCacheConfig(threshold=float(self.threshold))


def parse_step_cache(spec: str) -> Optional[StepCache]:
    """'first_block:0.05' -> StepCache('first_block', 0.05); 'first_block' -> the default threshold; 'off' or ''
    -> None. A bad spec is an InputError naming the form."""
    method, sep, value = spec.strip().partition(":")
    method = method.strip().lower().replace("-", "_")
    if method in ("", "off", "none") and not sep:
        return None
    if method not in STEP_CACHE_METHODS[1:]:
        raise InputError(f"step cache '{spec}': unknown method '{method}'; write {SPEC_HELP}.")
    if not sep:
        return StepCache(method)
    try:
        threshold = float(value)
    except ValueError:
        raise InputError(f"step cache '{spec}': threshold '{value}' is not a number; write {SPEC_HELP}.") from None
    return StepCache(method, threshold)


def step_cache_for(method: str, threshold: float) -> Optional[StepCache]:
    """The node's two widgets: method 'off' -> None, else StepCache(method, threshold)."""
    return None if method == "off" else StepCache(method, float(threshold))


def check_step_cache(cache: Optional[StepCache], dit: torch.nn.Module) -> None:
    """The combinations that do not work, refused up front (before any sampling) with the reason."""
    if cache is None:
        return
    if not hasattr(dit, "enable_cache"):
        raise InputError(f"step caching needs a diffusers DiT with cache hooks (CacheMixin); got {type(dit).__name__}.")
    if len(getattr(dit, "blocks", ())) < 2:
        raise InputError("the first_block step cache needs a DiT with at least 2 blocks (a first and a last one).")


@dataclass
class StepCacheCount:
    """How many DiT calls of a sampling run ran all blocks (`computed`) out of `calls`."""

    label: str
    calls: int = 0
    computed: int = 0

    def summary(self) -> str:
        return f"step cache {self.label}: {self.computed} of {self.calls} DiT calls computed"


def _leader_state(dit: torch.nn.Module):
    """The state diffusers' first-block hook keeps (its `should_compute` is the last call's decision)."""
    from diffusers.hooks import HookRegistry
    from diffusers.hooks.first_block_cache import _FBC_LEADER_BLOCK_HOOK

    hook = HookRegistry.check_if_exists_or_initialize(dit.blocks[0]).get_hook(_FBC_LEADER_BLOCK_HOOK)
    return hook.state_manager.get_state()


@contextlib.contextmanager
def step_cached(dit: torch.nn.Module, cache: Optional[StepCache]) -> Iterator[Optional[StepCacheCount]]:
    """`dit` with `cache`'s hooks for the `with` block (one sampling run, one cache context), counting its calls;
    the hooks are removed after it, also on an error. None: nothing changes, None is yielded."""
    if cache is None:
        yield None
        return
    from .compat import invalidate_hook_registries

    check_step_cache(cache, dit)
    dit.enable_cache(cache.diffusers_config())
    count = StepCacheCount(cache.label())

    def counted(module, args, output):
        count.calls += 1
        count.computed += bool(_leader_state(module).should_compute)

    handle = dit.register_forward_hook(counted)
    try:
        invalidate_hook_registries(dit)  # the blocks' new hooks must get the context (diffusers < 0.42 kept a list)
        with dit.cache_context(CONTEXT):
            yield count
    finally:
        handle.remove()
        dit.disable_cache()
        invalidate_hook_registries(dit)
    log.info("%s", count.summary())
