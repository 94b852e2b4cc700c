"""The judge as an Edit-GRPO reward. Variants: `Judge.score` one edit at a time (all four questions, what
`JudgeReward` did until the twenty-eighth session); `Judge.score_batch` on all the edits (the reward's questions, many
edits a forward, token cache warm); `per_record_and_term` (each judge term of a recipe on each record, one call each,
what the trainer did until the twenty-ninth session); `trainer_layout` (`score_records` per decode chunk of records, as
the trainer calls it now: one call for all the chunk's records and terms). The last two empty the token cache first,
as a step's new instructions do. On an H100 the one-at-a-time judge took 45-58 s of each 52 s `grpo_v15_judge` step
for its 512 rollouts (docs/small_models.md, section 69); `score_batch` on all 512 took 3.1 s, yet per record and term
the reward still took 8-12 s of a step (section 71). `--breakdown` times the parts of one trainer call with
synchronized timers. Random 64x64x17 clips stand in for rollouts: R records x G samples sharing source and instruction.

    PYTHONPATH=. python bench/bench_judge_reward.py [--records 8 --group 8 --breakdown --json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from viva_core import bundled
from viva_core.judge import Judge
from viva_core.train.rewards import JudgeReward, RewardInput, score_records
from viva_core.vlm import load_vlm


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, label: str, spent: dict[str, float], device: str):
    """`fn` adding its synchronized wall time to spent[label]."""

    def timed(*a, **k):
        _sync(device)
        t0 = time.perf_counter()
        out = fn(*a, **k)
        _sync(device)
        spent[label] = spent.get(label, 0.0) + time.perf_counter() - t0
        return out

    return timed


def breakdown(call, judge: Judge, device: str) -> dict[str, float]:
    """Seconds of one `call` spent in each part of the judge's forward, each part wrapped in synchronized timers: the
    host's frame and token work, the vision tower (and inside it transformers' per-image index loops and its
    attention, which runs one image or window at a time outside flash attention), the M-RoPE ids, the language
    model. Parts are looked up by name and skipped where this transformers lacks them; nested parts overlap."""
    import importlib

    from viva_core import vision_attention
    from viva_core import vlm as vlm_module

    qwen = importlib.import_module("transformers.models.qwen2_5_vl.modeling_qwen2_5_vl")
    spots = [(Judge, "_shown"), (Judge, "_tokens"), (Judge, "_pixels"), (vlm_module, "qwen2_vl_position_ids")]
    spots += [(vision_attention, "vision_indices")]
    spots += [(qwen, f) for f in ("get_vision_position_ids", "get_vision_window_index", "get_vision_attention_seqlens")]
    spots += [
        (getattr(qwen, c, None), "forward")
        for c in ("Qwen2_5_VisionTransformerPretrainedModel", "Qwen2_5_VLVisionAttention", "Qwen2_5_VLTextModel")
    ]
    spent: dict[str, float] = {}
    saved = []
    for owner, name in spots:
        fn = getattr(owner, name, None) if owner is not None else None
        if fn is None:
            continue
        label = f"{owner.__name__.rsplit('.', 1)[-1]}.{name}"
        saved.append((owner, name, fn))
        setattr(owner, name, _timed(fn, label, spent, device))
    try:
        _sync(device)
        t0 = time.perf_counter()
        call()
        _sync(device)
        spent["total"] = time.perf_counter() - t0
    finally:
        for owner, name, fn in saved:
            setattr(owner, name, fn)
    return {k: round(v, 4) for k, v in sorted(spent.items(), key=lambda kv: -kv[1])}


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
    ap.add_argument("--records-per-call", type=int, default=3, help="records a score_records call gets (decode chunk)")
    ap.add_argument("--variants", default="score_one_at_a_time,score_batch,per_record_and_term,trainer_layout")
    ap.add_argument("--breakdown", action="store_true", help="time one call of each trainer variant by parts")
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

    terms = [JudgeReward(judge, dimensions=(q,), name=f"judge:{q}") for q in questions]  # a recipe's terms

    def step_inputs() -> list[RewardInput]:
        """A step's RewardInputs, one per record as the trainer builds them (the source an `expand`ed view), with the
        judge's token cache emptied: a training step's records bring new instructions, so every chat misses."""
        judge._chat_tokens.clear()
        return [
            RewardInput(
                source=sources[r * args.group][None].expand(args.group, -1, -1, -1, -1),
                edited=torch.stack(edits[r * args.group : (r + 1) * args.group]),
                instructions=[texts[r * args.group]] * args.group,
            )
            for r in range(args.records)
        ]

    def trainer_layout() -> torch.Tensor:
        """A training step's reward calls: `score_records` per decode chunk of `--records-per-call` records."""
        inputs, per = step_inputs(), args.records_per_call
        return torch.cat([torch.cat(score_records(terms, inputs[c : c + per])) for c in range(0, len(inputs), per)])

    def per_record_and_term() -> torch.Tensor:
        """What the trainer did until section 71: each judge term on each record, one `score_batch` call each."""
        return torch.cat([torch.stack([t(b) for t in terms], dim=1) for b in step_inputs()])

    results: dict = {"edits": n, "questions": list(questions), "device": args.device, "dtype": args.dtype}
    outs = {}
    variants = (
        ("score_one_at_a_time", one_at_a_time),
        ("score_batch", batched),
        ("per_record_and_term", per_record_and_term),
        ("trainer_layout", trainer_layout),
    )
    for name, fn in variants:
        if name not in args.variants.split(","):
            continue
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
    if "per_record_and_term" in outs and "trainer_layout" in outs:
        results["trainer_speedup"] = results["per_record_and_term_s"] / results["trainer_layout_s"]
        results["trainer_max_abs_diff"] = float((outs["per_record_and_term"] - outs["trainer_layout"]).abs().max())
    if "score_one_at_a_time" in outs and "score_batch" in outs:
        results["speedup"] = results["score_one_at_a_time_s"] / results["score_batch_s"]
        results["max_abs_diff"] = float((outs["score_one_at_a_time"] - outs["score_batch"]).abs().max())
    print(json.dumps(results, indent=1), flush=True)
    if args.breakdown:
        for name, fn in variants[2:]:
            if name in args.variants.split(","):
                results[f"breakdown_{name}_s"] = breakdown(fn, judge, args.device)
                print(name, json.dumps(results[f"breakdown_{name}_s"], indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
