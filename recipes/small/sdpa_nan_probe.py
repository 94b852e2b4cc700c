"""Minimal reproduction of the patch-4 judge's NaN gradients (run it on the H200; on the CPU every line is finite).

1. kernel: SDPA alone at the judge's language-model shapes (chats x 4 heads x L x 32, bf16, causal + left-padding
   boolean mask, so some query rows are fully masked), backward with SDPA's default pick and with cuDNN excluded;
   non-finite entries of dq / dk / dv per padded length L.
2. judge: one judge training step (bundled judge resampled to patch 4, bf16 autocast, 8 items = 32 chats) with the
   batch left-padded to each length L; loss, grad norm, first parameter with a non-finite gradient; default backends
   and with cuDNN excluded (the candidate fix; docs/small_models.md, section 38).

    PYTHONPATH=. python3 recipes/small/sdpa_nan_probe.py [--device cuda] [--lengths 958,959,960,961,962,1088]
"""

import argparse
import contextlib
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

p = argparse.ArgumentParser()
p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
p.add_argument("--lengths", default="958,959,960,961,962,1088")
p.add_argument("--parts", default="kernel,judge")
a = p.parse_args()
dev = torch.device(a.device)
lengths = [int(x) for x in a.lengths.split(",")]
NO_CUDNN = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
print(
    "torch", torch.__version__, "cudnn", torch.backends.cudnn.version() if dev.type == "cuda" else None, dev, flush=True
)


def mode(name):
    return contextlib.nullcontext() if name == "default" else sdpa_kernel(NO_CUDNN)


if "kernel" in a.parts:
    for L in lengths:
        for name in ("default", "no_cudnn"):
            g = torch.Generator(device="cpu").manual_seed(0)
            B, H, D = 32, 4, 32
            q, k, v = (torch.randn(B, H, L, D, generator=g).to(dev, torch.bfloat16).requires_grad_() for _ in range(3))
            pad = torch.randint(0, 40, (B,), generator=g).to(dev)  # left padding per row
            pos = torch.arange(L, device=dev)
            mask = (pos[None, :, None] >= pos[None, None, :]) & (pos[None, None, :] >= pad[:, None, None])
            with mode(name):
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None])
            out.backward(torch.randn(out.shape, generator=g).to(dev, out.dtype))
            bad = {n: int((~torch.isfinite(t.grad)).sum()) for n, t in (("dq", q), ("dk", k), ("dv", v))}
            print(
                f"kernel L={L} ({L % 128} mod 128) {name}: out finite {bool(torch.isfinite(out).all())}, "
                f"non-finite grads {bad}",
                flush=True,
            )

if "judge" in a.parts:
    from viva_core.judge import yes_no_token_ids
    from viva_core.synth import generate
    from viva_core.train.pretrain.clips import load_clip_set
    from viva_core.train.pretrain.config import JudgeSection
    from viva_core.train.pretrain.judge import _collate_judge, _JudgeData, judge_margins
    from viva_core.train.pretrain.models import resample_vision_patch
    from viva_core.vlm import load_vlm

    data_dir = Path("/tmp/nan4_repro_data")
    if not (data_dir / "train.jsonl").exists():
        generate(data_dir, n=80, seed=0, format="npz", overwrite=True)
    folder = Path("/tmp/nan4_repro_judge4")
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree("viva_core/small_models/vlm/viva-small-judge", folder)
    resample_vision_patch(folder, 4)
    vlm = load_vlm(folder, dtype="fp32", device=dev)
    vlm.model.train().requires_grad_(True)
    yes, no = yes_no_token_ids(vlm.tokenizer)
    clips = load_clip_set(data_dir / "train.jsonl")
    sec = JudgeSection(
        candidates="target,source,other,blend,flicker,blur,shifted,wrong", ea_unlabelled="other,blend,shifted"
    )
    data = _JudgeData(clips, sec, 0, 8, 8)
    inputs, labels, _, _ = _collate_judge(vlm.processor)([data[i] for i in range(8)])
    natural = inputs["input_ids"].shape[1]
    pad_id = vlm.tokenizer.pad_token_id
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16)
    for L in [x for x in lengths if x >= natural]:
        extra = L - natural  # more left padding: the real tokens, their positions and logits stay as they are
        nb = inputs["input_ids"].shape[0]
        batch = {  # every per-token tensor (input_ids, attention_mask, mm_token_type_ids) left-padded
            key: F.pad(t, (extra, 0), value=pad_id if key == "input_ids" else 0)
            if t.ndim == 2 and t.shape == (nb, natural)
            else t
            for key, t in inputs.items()
        }
        batch = type(inputs)(batch)
        for name in ("default", "no_cudnn"):
            vlm.model.zero_grad(set_to_none=True)
            with autocast, mode(name):
                margin = judge_margins(vlm, batch.to(dev), yes, no)
            keep = labels.to(dev) >= 0
            loss = F.binary_cross_entropy_with_logits(margin[keep], labels.to(dev)[keep])
            loss.backward()
            params = [(n, q) for n, q in vlm.model.named_parameters() if q.grad is not None]
            norm = torch.nn.utils.clip_grad_norm_([q for _, q in params], 1e9)
            bad = [n for n, q in params if not torch.isfinite(q.grad).all()]
            print(
                f"judge L={L} ({L % 128} mod 128) {name}: loss {loss.item():.6f} grad_norm {float(norm):.6g} "
                f"non-finite grads in {len(bad)} tensors{(', first ' + bad[0]) if bad else ''}",
                flush=True,
            )
