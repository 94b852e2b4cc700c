"""The training loop the three `viva pretrain` stages share (AMP, Ctrl-C, metrics, checkpoints)."""

from __future__ import annotations

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


def _loop(
    cfg: ScratchConfig,
    params: list[torch.nn.Parameter],
    step_fn: Callable[[int], dict],
    out: Path,
    progress: ProgressFn,
    title: str,
    should_stop: Callable[[], bool] = lambda: False,
) -> dict:
    """AdamW + warmup/cosine + grad clipping; `step_fn(step)` returns metrics incl. a differentiable 'loss'."""
    o = cfg.optim
    fused = all(p.is_cuda for p in params)  # one kernel for the whole update instead of several per tensor
    opt = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay, betas=(0.9, 0.99), fused=fused or None)
    metrics = MetricsLog(out, tensorboard=False)
    start, last = time.perf_counter(), {}
    with _StopFlag() as flag:
        for step in range(o.steps):
            for g in opt.param_groups:
                g["lr"] = lr = scheduled_lr(o.lr, step, o.steps, o.warmup_steps)
            opt.zero_grad(set_to_none=True)
            values = step_fn(step)
            loss = values.pop("loss")
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, o.grad_clip)
            opt.step()
            if step % 10 == 0 or step == o.steps - 1:  # the only host syncs: reading values every 10 steps
                if not torch.isfinite(loss):
                    raise InputError(f"{title}: the loss became {float(loss)} by step {step}; lower optim.lr.")
                last = {
                    "loss": float(loss.detach()),
                    "grad_norm": float(grad_norm),
                    "lr": lr,
                    "elapsed_s": time.perf_counter() - start,
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
