"""The Edit-GRPO verifier reward (`verifier:EA+PC`) on a batch of `viva synth` clips, before vs now, in one process
on the same clips: "before" is the reward's old code (one `eval.score_edit` per clip, all four dimensions computed)
with eval's old max-pool `dilate`, `isfinite(t).all()` check and uncached SSIM bands patched back in; "now" is
`VerifierReward` as it is. Checks the scores agree and prints seconds per call (with --profile a cProfile of each).

    python -m viva_core.cli synth --out /tmp/vr_data --n 64 --seed 0 --format npz
    python bench/bench_verifier_reward.py --data /tmp/vr_data/train.jsonl [--n 32] [--shared 8] [--threads 1]

Edits are the source blended toward the ground truth by a random amount per clip, plus noise. --shared G builds
the trainer's layout instead: n/G records, each scored as G rollouts against one `expand`ed source, target and mask
(one RewardInput per record, as `Trainer._rollouts_and_advantages` does).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from viva_core.data import load_manifest, load_sample  # noqa: E402
from viva_core.eval import manifest_extras, score_edit  # noqa: E402
from viva_core.train.rewards import RewardInput, VerifierReward  # noqa: E402


def per_clip(reward: VerifierReward, batch: RewardInput) -> torch.Tensor:
    """The reward before batching: score_edit per clip, the mean of the requested fields."""
    out = []
    for i in range(batch.n):
        label = batch.labels[i]
        verify = label.get("verify") if isinstance(label.get("verify"), dict) else None
        operation = label.get("operation") if isinstance(label.get("operation"), str) else None
        mask = batch.masks[i] if batch.masks is not None else None
        s = score_edit(batch.source[i], batch.edited[i], batch.targets[i], mask, verify, operation)
        values = [v for v in (getattr(s, reward.FIELDS[d]) for d in reward.dimensions) if v is not None]
        out.append(sum(values) / len(values) if values else 0.0)
    return torch.tensor(out, dtype=torch.float32)


@contextlib.contextmanager
def head_eval():
    """eval's dilate, finiteness check and SSIM bands as they were before the speed-up (same results, slower)."""
    import torch.nn.functional as F

    from viva_core.eval import metrics, verifiers

    def dilate(mask, radius):
        if radius <= 0:
            return mask
        return F.max_pool2d(mask.float().unsqueeze(1), 2 * radius + 1, stride=1, padding=radius).squeeze(1) > 0.5

    saved = metrics.dilate, verifiers.dilate, metrics._finite, metrics._bands
    metrics.dilate = verifiers.dilate = dilate
    metrics._finite = lambda t: bool(torch.isfinite(t).all())
    metrics._bands = metrics._bands.__wrapped__  # SSIM's band matrices built on every call
    try:
        yield
    finally:
        metrics.dilate, verifiers.dilate, metrics._finite, metrics._bands = saved


def before(reward, inputs):
    with head_eval():
        return torch.cat([per_clip(reward, b) for b in inputs])


def batches(data: str, n: int, shared: int, seed: int = 0) -> list[RewardInput]:
    extras = manifest_extras(data)
    records = load_manifest(data)
    g = torch.Generator().manual_seed(seed)
    if shared:
        records = records[: n // shared]
    else:
        records = records[:n]
    out = []
    for group in [[r] for r in records] if shared else [records]:
        samples = [load_sample(r) for r in group]
        k = shared or len(group)
        src = torch.stack([s.source for s in samples])
        tgt = torch.stack([s.target for s in samples])
        masks = torch.stack([s.mask for s in samples])
        labels = [{k2: extras[r.line][k2] for k2 in ("operation", "verify")} for r in group]
        if shared:
            src, tgt, masks = src.expand(k, -1, -1, -1, -1), tgt.expand(k, -1, -1, -1, -1), masks.expand(k, -1, -1, -1)
            labels = labels * k
        a = torch.rand(k, 1, 1, 1, 1, generator=g)
        edit = ((1 - a) * src + a * tgt + 0.03 * torch.randn(src.shape, generator=g)).clamp(0, 1)
        out.append(
            RewardInput(source=src, edited=edit, instructions=["x"] * k, masks=masks, targets=tgt, labels=labels)
        )
    return out


def timed(fn, reps: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--shared", type=int, default=0, help="G rollouts per record sharing one source (0: all distinct)")
    ap.add_argument("--dims", default="EA+PC")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    reward = VerifierReward(tuple(args.dims.split("+")))
    inputs = batches(args.data, args.n, args.shared)
    n = sum(b.n for b in inputs)
    old = before(reward, inputs)
    new = torch.cat([reward(b) for b in inputs])
    diff = float((old - new).abs().max())
    print(
        f"{n} clips in {len(inputs)} call(s), {tuple(inputs[0].source.shape[1:])}, dims {args.dims}, "
        f"torch threads {torch.get_num_threads()}; max |before - now| = {diff:.2e}"
    )
    t_old = timed(lambda: before(reward, inputs), args.reps)
    t_new = timed(lambda: [reward(b) for b in inputs], args.reps)
    print(
        f"before {t_old:.3f} s ({1e3 * t_old / n:.1f} ms/clip); now {t_new:.3f} s "
        f"({1e3 * t_new / n:.1f} ms/clip): {t_old / t_new:.2f}x"
    )
    if args.profile:
        for name, fn in (("before", before), ("now", lambda r, bs: [r(b) for b in bs])):
            prof = cProfile.Profile()
            prof.enable()
            fn(reward, inputs)
            prof.disable()
            text = io.StringIO()
            pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(15)
            print(f"--- {name} (tottime)\n" + text.getvalue().split("\n", 6)[-1])


if __name__ == "__main__":
    main()
