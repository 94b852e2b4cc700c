"""One Edit-GRPO step of the real trainer on the bundled small editor, end to end (rollouts, VAE decode, rewards,
PPO pass, AdamW), per-record DiT calls vs all records batched: the step `bench/bench_train.py`'s grpo case leaves
out (it times the 1.3B DiT alone). Each variant runs in this process on the same records and settings; the split
comes from timers around the DiT call, the VAE decode, the reward terms and the PPO pass (an RWO recipe, `--config
recipes/small/rwo_v8.toml`: its step and its flow-matching passes in the PPO pass's columns).

    python -m viva_core.cli synth --out /tmp/grpo_data --n 64 --seed 0 --format npz
    python bench/bench_grpo_step.py --data /tmp/grpo_data/train.jsonl [--steps 2] [--set rollout.group_size=8 ...]
    python bench/bench_grpo_step.py ... --trainer-file /tmp/trainer_old.py   # also time another trainer.py
        (e.g. `git show <commit>:viva_core/train/trainer.py > /tmp/trainer_old.py`: the code before a change)

Variants: per_record (rollout.micro_batch=1, rollout.decode_batch=1: one record's G samples per DiT call, one clip
per decode), batched (both 0 = auto: all records of the step in one call on this editor), cpu_rewards (batched, the
verifier rewards on the CPU in threads instead of the trainer's device), sequential_rewards (batched with
`rollout.overlap_rewards = false`: each chunk's rewards scored before the next chunk decodes; on a GPU the trainer
scores a chunk in a thread beside the next decode: a recipe of several decode chunks, e.g. grpo_v16.toml, shows it),
compiled (batched with `model.compile = "blocks"`: give it --warmup 2 or more, each new shape of a step compiles),
and `file` with --trainer-file (its own defaults). The reward split is the rewards' own time, in whichever thread
they ran. Default settings: recipes/small/grpo_v4.toml (bf16 on CUDA, fp32 on the CPU).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def load_trainer_module(path: str | None):
    if not path:
        from viva_core.train import trainer

        return trainer
    spec = importlib.util.spec_from_file_location("viva_core.train._bench_trainer", path)  # relative imports work
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def timed_step(mod, cfg, steps: int, warmup: int, cpu_rewards: bool = False) -> dict:
    """Mean seconds of `steps` GRPO steps (after `warmup`), and the split of the last timed ones. `cpu_rewards`: the
    verifier rewards computed on the CPU in threads, as before they ran on the trainer's device."""
    import viva_core.train.rewards as R

    t = mod.Trainer(cfg)
    t._setup()
    step_fn = t._rwo_step if cfg.method == "rwo" else t._grpo_step  # an RWO recipe times its step and pass
    pass_name = "_rwo_pass" if cfg.method == "rwo" else "_ppo_pass"
    if cpu_rewards:
        for rw in t.rewards:
            if isinstance(rw, R.VerifierReward):
                rw.device, rw.parallel_safe = torch.device("cpu"), True
    times: dict[str, float] = {}
    calls = {"dit": 0, "decode": 0}
    sync = torch.cuda.synchronize if t.device.type == "cuda" else (lambda: None)

    def wrap(obj, name, key, count=None):
        f = getattr(obj, name)

        def w(*a, **k):
            sync()
            t0 = time.perf_counter()
            out = f(*a, **k)
            sync()
            times[key] = times.get(key, 0.0) + time.perf_counter() - t0
            if count:
                calls[count] += 1
            return out

        setattr(obj, name, w)
        return f

    for s in range(warmup):  # encodes (cached on disk), allocator and kernel warm-up
        t.optimizer.zero_grad(set_to_none=True)
        step_fn(s)
        t._apply_update(s)
    phase = {"ppo": False}
    velocity = t._policy_velocity  # what rollouts and PPO passes call (guided or not)

    def dit(*a, **k):  # the DiT calls of the rollouts and of the PPO pass, apart
        sync()
        t0 = time.perf_counter()
        out = velocity(*a, **k)
        sync()
        key = "dit_ppo" if phase["ppo"] else "dit_rollout"
        times[key] = times.get(key, 0.0) + time.perf_counter() - t0
        calls["dit"] += 1
        return out

    t._policy_velocity = dit
    ppo_pass = getattr(t, pass_name)

    def ppo(*a, **k):
        phase["ppo"] = True
        try:
            return ppo_pass(*a, **k)
        finally:
            phase["ppo"] = False

    setattr(t, pass_name, ppo)
    for name in ("decode_latents", "decode_latents_batch"):
        if hasattr(mod, name):
            wrap(mod, name, "decode", "decode")
    originals = [(cls, cls.__call__) for cls in (R.VerifierReward, R.PreservationReward, R.JudgeReward, R.ClipReward)]
    for cls, _ in originals:
        wrap(cls, "__call__", "reward")
    wrap(t, pass_name, "ppo_pass")
    try:
        t0 = time.perf_counter()
        for s in range(warmup, warmup + steps):
            t.optimizer.zero_grad(set_to_none=True)
            stats = step_fn(s)
            t._apply_update(s)
        sync()
        dt = (time.perf_counter() - t0) / steps
    finally:
        for cls, f in originals:
            cls.__call__ = f
    r = cfg.rollout
    n = cfg.optim.batch_size * r.group_size
    per = {k: v / steps for k, v in times.items()}
    # the rest: encodes (cached), SDE math and transfers of the rollouts, advantages, the optimizer step
    per["other"] = (
        dt - per.get("ppo_pass", 0.0) - per.get("decode", 0.0) - per.get("reward", 0.0) - per.get("dit_rollout", 0.0)
    )
    return {
        "step_s": dt,
        "steps_per_s": 1 / dt,
        "rollouts_per_s": n / dt,
        "split_s": {k: round(v, 3) for k, v in per.items()},
        "dit_calls_per_step": calls["dit"] / steps,
        "decode_calls_per_step": calls["decode"] / steps,
        "reward": stats["reward"],
        "loss": stats["loss"],
        # the last PPO pass's ratio of the last step: with `--set rollout.inner_updates=1` that pass is on-policy, so
        # ratio_std and approx_kl measure how far the PPO pass's log-probs sit from the rollouts' (kernel noise)
        **{k: stats[k] for k in ("ratio_mean", "ratio_std", "clip_frac", "approx_kl") if k in stats},
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, help="a `viva synth --format npz` train manifest")
    ap.add_argument("--config", default=str(ROOT / "recipes/small/grpo_v4.toml"))
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], dest="sets")
    ap.add_argument("--variants", default="per_record,batched")
    ap.add_argument("--trainer-file", default=None)
    ap.add_argument("--out", default="/tmp/bench_grpo_step")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from viva_core.train.config import load_config

    dtype = "bf16" if torch.cuda.is_available() else "fp32"
    base = [
        f"data.manifest={args.data}",
        f"output_dir={args.out}",
        f"data.cache_dir={args.out}/cache",
        f"model.dtype={dtype}",
        "log.checkpoint_every=0",
        *args.sets,
    ]
    variants = {
        "per_record": ["rollout.micro_batch=1", "rollout.decode_batch=1"],
        "batched": ["rollout.micro_batch=0", "rollout.decode_batch=0"],
        "cpu_rewards": ["rollout.micro_batch=0", "rollout.decode_batch=0"],
        "sequential_rewards": ["rollout.micro_batch=0", "rollout.decode_batch=0", "rollout.overlap_rewards=false"],
        "compiled": ["rollout.micro_batch=0", "rollout.decode_batch=0", "model.compile=blocks"],
        "file": [],
    }
    names = [v for v in args.variants.split(",") if v] + (["file"] if args.trainer_file else [])
    results = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "threads": torch.get_num_threads(),
        "settings": base[3:],
    }
    for name in names:
        mod = load_trainer_module(args.trainer_file if name == "file" else None)
        sets = base + ([] if name == "file" else variants[name])
        cfg = load_config(args.config, sets)
        results[name] = timed_step(mod, cfg, args.steps, args.warmup, cpu_rewards=name == "cpu_rewards")
        print(name, json.dumps(results[name]), flush=True)
    if "per_record" in results and "batched" in results:
        results["speedup_batched_vs_per_record"] = results["per_record"]["step_s"] / results["batched"]["step_s"]
    if "cpu_rewards" in results and "batched" in results:
        results["speedup_batched_vs_cpu_rewards"] = results["cpu_rewards"]["step_s"] / results["batched"]["step_s"]
    if "sequential_rewards" in results and "batched" in results:
        results["speedup_overlap_vs_sequential_rewards"] = (
            results["sequential_rewards"]["step_s"] / results["batched"]["step_s"]
        )
    if "compiled" in results and "batched" in results:
        results["speedup_compiled_vs_batched"] = results["batched"]["step_s"] / results["compiled"]["step_s"]
    if "file" in results and "batched" in results:
        results["speedup_batched_vs_file"] = results["file"]["step_s"] / results["batched"]["step_s"]
    print(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
