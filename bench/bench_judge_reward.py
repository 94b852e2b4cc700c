"""The judge as an Edit-GRPO reward: `Judge.score` one edit at a time (all four questions, what `JudgeReward` did
until the twenty-eighth session) against `Judge.score_batch` (the reward's questions for many edits in shared
forwards). On an H100 the one-at-a-time judge took 45-58 s of each 52 s `grpo_v15_judge` step for its 512 rollouts
(docs/small_models.md, section 69). Random 64x64x17 clips stand in for rollouts: R records x G samples, each group
sharing its source and instruction, as in a step. Wall time around synchronized calls (the host side is what costs).

    PYTHONPATH=. python bench/bench_judge_reward.py [--records 8 --group 8 --questions EA,PC --json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from viva_core import bundled
from viva_core.judge import Judge
from viva_core.vlm import load_vlm


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--judge", default=None, help="judge VLM folder (default: the bundled judge)")
    ap.add_argument("--records", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--questions", default="EA,PC")
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    vlm = load_vlm(args.judge or bundled.path(bundled.JUDGE), dtype=args.dtype, device=args.device)
    judge = Judge(vlm)
    questions = tuple(args.questions.split(","))
    g = torch.Generator().manual_seed(0)
    sources, edits, texts = [], [], []
    for r in range(args.records):
        src = torch.rand(17, 64, 64, 3, generator=g)
        for _ in range(args.group):
            sources.append(src)
            edits.append((0.7 * src + 0.3 * torch.rand(17, 64, 64, 3, generator=g)).clamp(0, 1))
            texts.append(f"Make object {r} red.")
    n = len(edits)

    def one_at_a_time() -> torch.Tensor:
        rows = [judge.score(s, e, t).scores for s, e, t in zip(sources, edits, texts)]
        return torch.tensor([[row[q] for q in questions] for row in rows])

    def batched() -> torch.Tensor:
        return judge.score_batch(sources, edits, texts, questions=questions, chunk=args.chunk)

    results: dict = {"edits": n, "questions": list(questions), "device": args.device, "dtype": args.dtype}
    outs = {}
    for name, fn in (("score_one_at_a_time", one_at_a_time), ("score_batch", batched)):
        fn()  # warm-up (and score_batch's token cache, as a training run's later steps have it)
        times = []
        for _ in range(args.repeats):
            _sync(args.device)
            t0 = time.perf_counter()
            outs[name] = fn()
            _sync(args.device)
            times.append(time.perf_counter() - t0)
        results[f"{name}_s"] = min(times)
        results[f"{name}_ms_per_edit"] = 1000 * min(times) / n
    results["speedup"] = results["score_one_at_a_time_s"] / results["score_batch_s"]
    results["max_abs_diff"] = float((outs["score_one_at_a_time"] - outs["score_batch"]).abs().max())
    print(json.dumps(results, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
