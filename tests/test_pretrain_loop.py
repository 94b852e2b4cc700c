"""The pretrain stages' shared loop: a step with a non-finite gradient applies nothing (checked against a plain
AdamW loop that leaves that step out), on both the unfused path and the fused kernel's found_inf path; and the
attention guard of the training forward of models with padding masks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from viva_core.errors import InputError
from viva_core.train.config import scheduled_lr
from viva_core.train.pretrain import loop as L
from viva_core.train.pretrain.config import ScratchConfig

TARGET = torch.tensor([1.0, -2.0, 0.5, 3.0])


def _cfg(out: Path, steps: int) -> ScratchConfig:
    cfg = ScratchConfig()
    cfg.output_dir = str(out)
    cfg.optim.steps, cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.grad_clip = steps, 0.1, 3, 1.0
    return cfg


def _loss(w: torch.Tensor, step: int, bad: set[int]) -> torch.Tensor:
    loss = ((w - TARGET) ** 2).sum()
    return loss * math.nan if step in bad else loss


def _reference(steps: int, bad: set[int]) -> torch.Tensor:
    """Plain AdamW with the same schedule, clipping and betas; the bad steps simply not taken."""
    w = torch.nn.Parameter(torch.zeros(4))
    opt = torch.optim.AdamW([w], lr=0.1, weight_decay=0.01, betas=(0.9, 0.99))
    for step in range(steps):
        if step in bad:
            continue
        for g in opt.param_groups:
            g["lr"] = scheduled_lr(0.1, step, steps, 3)
        opt.zero_grad()
        _loss(w, step, set()).backward()
        torch.nn.utils.clip_grad_norm_([w], 1.0)
        opt.step()
    return w.detach()


@pytest.mark.parametrize("fused", [False, True])
def test_nonfinite_steps_apply_nothing(tmp_path, monkeypatch, fused):
    monkeypatch.setattr(L, "_fused_adamw", lambda params: fused)
    steps, bad = 25, {4, 11, 12}
    w = torch.nn.Parameter(torch.zeros(4))
    summary = L._loop(_cfg(tmp_path, steps), [w], lambda s: {"loss": _loss(w, s, bad)}, tmp_path, lambda *a: None, "t")
    assert torch.isfinite(w).all()
    torch.testing.assert_close(w.detach(), _reference(steps, bad), rtol=1e-6, atol=1e-6)
    assert summary["skipped_steps"] == len(bad) and summary["steps_done"] == steps


def test_a_run_of_nonfinite_steps_stops(tmp_path):
    w = torch.nn.Parameter(torch.zeros(4))
    with pytest.raises(InputError, match="steps 11 to 20 all had a non-finite gradient"):
        L._loop(
            _cfg(tmp_path, 40), [w], lambda s: {"loss": _loss(w, s, set(range(8, 40)))}, tmp_path, lambda *a: None, "t"
        )


def test_masked_attention_excludes_cudnn_on_cuda_only():
    """The judge's and instructor's training forward runs SDPA without cuDNN on CUDA (its backward gives NaN dq at
    padded lengths 64 mod 128 with fully masked rows: recipes/small/sdpa_nan_probe.py on the H200); the CPU and
    inference keep SDPA's own choice. The flags are global, so this holds without a GPU."""
    from viva_core.train.pretrain.loop import _masked_attention

    before = torch.backends.cuda.cudnn_sdp_enabled()
    with _masked_attention(torch.device("cuda")):
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled() == before
    with _masked_attention(torch.device("cpu")):
        assert torch.backends.cuda.cudnn_sdp_enabled() == before
