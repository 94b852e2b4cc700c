"""Where a judge training step's time goes (`viva pretrain` stage judge): the loader's collate (the chat processor, one
core), the step's forward + backward (CUDA events on a GPU, wall time on the CPU) with the M-RoPE position ids
computed in the forward and from host copies (`judge.host_positions`), and the host-side Python functions that take
the most of one step (cProfile over a synchronized step: on a GPU, host time the device waits for).

The judge stage ran at ~1.4 steps of 32 items a second on an H200 (docs/small_models.md, sections 30-31); the lead was
transformers' M-RoPE position ids, computed in Python over every image grid of the batch (1,536). Measured on an H200
(section 32): from host copies, the forward 1.94x and the train step 1.38x faster; `judge.host_positions` is now
the default. The stage trains with SDPA's cuDNN backend excluded (its backward gives NaN at some padded lengths,
docs/small_models.md section 40): `host_positions_no_cudnn_train_step_s_median` is that step.

    PYTHONPATH=. python bench/bench_judge_step.py --manifest data/eval_heldout/heldout.jsonl \
        [--judge viva_core/small_models/vlm/viva-small-judge --batch 32 --steps 5 --json runs/bench_judge_step.json]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import pstats
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_dit import time_cuda  # noqa: E402

from viva_core import bundled
from viva_core.judge import yes_no_token_ids
from viva_core.train.pretrain import CANDIDATES, JudgeSection, _JudgeData, load_clip_set
from viva_core.train.pretrain.judge import _collate_judge, judge_margins
from viva_core.train.pretrain.loop import _masked_attention
from viva_core.vlm import load_vlm


def step_seconds(fn, device: torch.device, steps: int) -> list[float]:
    """Seconds of each of `steps` calls of fn: CUDA events on a GPU (bench_dit.time_cuda), wall time on the CPU."""
    if device.type == "cuda":
        return time_cuda(fn, 0, steps)
    out = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--manifest", required=True, help="a `viva synth --format npz` manifest")
    p.add_argument("--judge", default=str(bundled.JUDGE))
    p.add_argument("--batch", type=int, default=32, help="items a step (each 4 chats), as judge.toml")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    clips = load_clip_set(args.manifest)
    sec = JudgeSection(candidates=",".join(CANDIDATES), ea_unlabelled="other,blend,shifted")
    data = _JudgeData(clips, sec, seed=0, size=args.batch * 2)
    vlm = load_vlm(args.judge, dtype="fp32", device=str(device))
    vlm.model.train().requires_grad_(True)
    yes, no = yes_no_token_ids(vlm.tokenizer)
    collate = _collate_judge(vlm.processor)
    items = [data[i] for i in range(args.batch)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as one loader worker
    t = time.perf_counter()
    inputs, labels, _, _ = collate(items)
    collate_s = time.perf_counter() - t
    torch.set_num_threads(threads)
    inputs, labels = inputs.to(device), labels.to(device)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    )

    host = False  # judge.host_positions: M-RoPE ids from host copies (timed both ways below)

    def forward():
        with torch.no_grad(), autocast:
            judge_margins(vlm, inputs, yes, no, host_positions=host)

    guard = False  # the training stage's attention (SDPA without cuDNN: pretrain.loop._masked_attention) or SDPA's pick

    def train_step():
        with autocast, _masked_attention(device) if guard else contextlib.nullcontext():
            m = judge_margins(vlm, inputs, yes, no, host_positions=host)
        keep = labels >= 0
        F.binary_cross_entropy_with_logits(m[keep], labels[keep]).backward()
        vlm.model.zero_grad(set_to_none=True)

    timed = {}
    for host in (True, False):  # the profile below is of transformers' own position ids (False)
        train_step()  # warm-up
        fwd = step_seconds(forward, device, args.steps)
        full = step_seconds(train_step, device, args.steps)
        timed[host] = (sorted(fwd)[len(fwd) // 2], sorted(full)[len(full) // 2])
    host, guard = True, True  # as `viva pretrain` trains the judge
    train_step()
    guarded = step_seconds(train_step, device, args.steps)
    host, guard = False, False
    profile = cProfile.Profile()
    profile.enable()
    train_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    profile.disable()
    stats = pstats.Stats(profile)
    rows = sorted(
        (
            (cum, f"{Path(file).name}:{line}({name})", calls)
            for (file, line, name), (_, calls, _, cum, _) in stats.stats.items()
            if "transformers" in file or "viva_core" in file
        ),
        reverse=True,
    )[:25]
    result = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "batch_items": args.batch,
        "chats": int(inputs["input_ids"].shape[0]),
        "image_grids": int(inputs["image_grid_thw"].shape[0]),
        "collate_s_one_core": collate_s,
        "forward_s_median": timed[False][0],
        "train_step_s_median": timed[False][1],
        "host_positions_forward_s_median": timed[True][0],
        "host_positions_train_step_s_median": timed[True][1],
        "host_positions_no_cudnn_train_step_s_median": sorted(guarded)[len(guarded) // 2],
        "host_functions_one_step": [{"cumulative_s": round(c, 4), "function": f, "calls": n} for c, f, n in rows],
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
