"""The training loop the three `viva pretrain` stages share (AMP, Ctrl-C, metrics, checkpoints)."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import time
from pathlib import Path
from typing import Callable

import torch

from ...errors import InputError
from ...runtime import ProgressFn
from ..config import scheduled_lr
from ..metrics import MetricsLog
from .config import ScratchConfig

log = logging.getLogger(__name__)


def _autocast(device: torch.device):
    return (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    )


def _masked_attention(device: torch.device):
    """For the forward of a model trained with padding masks (the VLM judge and instructor): on CUDA, SDPA
    without its cuDNN backend. cuDNN's backward returns NaN in dq when the padded length is 64 mod 128 and some
    query rows are fully masked (left padding), measured on the H200 with torch 2.11 / cuDNN 9.19 by
    recipes/small/sdpa_nan_probe.py (docs/small_models.md, section 40); the forward is finite, so inference keeps
    cuDNN. The backward runs the kernel the forward picked, so guarding the forward is enough."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


class _StopFlag:
    """Ctrl-C ends the loop after the current step; the stage then saves what it has."""

    def __init__(self) -> None:
        self.stop = False

    def __enter__(self):
        try:
            self.previous = signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # not the main thread
            self.previous = None
        return self

    def _handler(self, signum, frame) -> None:
        log.warning("interrupt: stopping after this step and saving the models trained so far")
        self.stop = True

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def _fused_adamw(params: list[torch.nn.Parameter]) -> bool:
    """One kernel for the whole update instead of several per tensor, on the GPU."""
    return all(p.is_cuda for p in params)


def _loop(
    cfg: ScratchConfig,
    params: list[torch.nn.Parameter],
    step_fn: Callable[[int], dict],
    out: Path,
    progress: ProgressFn,
    title: str,
    should_stop: Callable[[], bool] = lambda: False,
) -> dict:
    """AdamW + warmup/cosine + grad clipping; `step_fn(step)` returns metrics incl. a differentiable 'loss'.

    A step whose gradient norm is not finite applies nothing (a single bad batch or bf16 overflow would otherwise
    turn every weight into NaN for good: docs/small_models.md, section 38); the count is logged as
    `skipped_steps`, and a run that skips all 10 steps of a logging interval stops with an error."""
    o = cfg.optim
    fused = _fused_adamw(params)
    opt = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay, betas=(0.9, 0.99), fused=fused or None)
    metrics = MetricsLog(out, tensorboard=False)
    start, last = time.perf_counter(), {}
    skipped = torch.zeros((), device=params[0].device)  # on the device: no host sync per step
    skipped_at_log = 0
    with _StopFlag() as flag:
        for step in range(o.steps):
            for g in opt.param_groups:
                g["lr"] = lr = scheduled_lr(o.lr, step, o.steps, o.warmup_steps)
            opt.zero_grad(set_to_none=True)
            values = step_fn(step)
            loss = values.pop("loss")
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, o.grad_clip)
            bad = (~torch.isfinite(grad_norm)).float()
            skipped += bad
            if fused:  # the fused kernel skips the whole update (step count included) where found_inf is 1
                opt.found_inf = bad
                opt.step()
            elif not bad:  # the unfused path: one host read, cheap off the GPU
                opt.step()
            if step % 10 == 0 or step == o.steps - 1:  # the only host syncs: reading values every 10 steps
                n_skipped = int(skipped)
                if n_skipped - skipped_at_log >= 10:
                    raise InputError(
                        f"{title}: steps {step - 9} to {step} all had a non-finite gradient "
                        f"(loss {float(loss.detach())}); nothing was applied since; lower optim.lr or check the data."
                    )
                skipped_at_log = n_skipped
                last = {
                    "loss": float(loss.detach()),
                    "grad_norm": float(grad_norm),
                    "lr": lr,
                    "elapsed_s": time.perf_counter() - start,
                    "skipped_steps": n_skipped,
                    **{k: float(v) for k, v in values.items()},
                }
                metrics.log(step, last)
            progress(step + 1, o.steps)
            over_time = o.max_minutes and time.perf_counter() - start > 60 * o.max_minutes
            if flag.stop or should_stop() or over_time:
                log.warning("%s stopped at step %d of %d", title, step + 1, o.steps)
                break
    last["seconds"] = time.perf_counter() - start
    last["steps_done"] = step + 1
    metrics.plot(out / "curves.png", title=title)
    metrics.close()
    return last


def _write_json(path: Path, data: dict) -> None:
    from ...safe_io import write_text_atomic

    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def _one_thread(_worker: int) -> None:
    """Loader workers are many; each runs single-threaded so they do not fight over the cores."""
    torch.set_num_threads(1)
