"""Throughput of the editor stage of `viva pretrain` (small models from scratch): clips per second, steady state.

Runs each variant as its own `viva pretrain editor` process on the same clips and VAE, for a fixed number of steps,
and reads the wall time logged every 10 steps (metrics.jsonl `elapsed_s`): steady = steps 20..end, so start-up,
data preparation and compilation are excluded (they are reported apart, as the time to step 20). A baseline tree
(`--baseline-src`, e.g. `git archive` of an older commit) runs the same config for a same-run ratio; it logs no
`elapsed_s`, so it runs twice (N and 3N steps) and its steady rate is 2N steps over the difference of loop times.

    python bench/bench_pretrain.py --manifest data/small/train.jsonl --vae viva_core/small_models/.../vae \
        --out runs/bench_pretrain [--baseline-src .bench_base] [--limit 2000 --steps 60]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = {  # name -> --set overrides on top of the common ones
    "text only, batch 64": ["editor.instructor=false", "optim.batch_size=64"],
    "instructor, batch 64": ["optim.batch_size=64"],
    "instructor, batch 256": ["optim.batch_size=256"],
    "instructor, batch 256, compile": ["optim.batch_size=256", "optim.compile=true"],
}
BASELINE = "instructor, batch 64"


def run(name: str, sets: list[str], args: argparse.Namespace, src: Path, steps: int | None = None) -> dict:
    steps = steps or args.steps
    out = Path(args.out).resolve() / f"{name}_{steps}".replace(", ", "_").replace(" ", "_").replace("(", "").replace(
        ")", ""
    )
    common = [
        f"data.manifest={Path(args.manifest).resolve()}",
        f"data.limit={args.limit}",
        f"editor.vae={Path(args.vae).resolve()}",
        f"optim.steps={steps}",
        "optim.warmup_steps=10",
        f"optim.workers={args.workers}",
        f"output_dir={out}",
        "stage=editor",
    ]
    cmd = [sys.executable, "-m", "viva_core.cli", "pretrain", str(Path(args.config).resolve())]
    cmd += [a for s in common + sets for a in ("--set", s)]
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd,
        cwd=src,
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(src.resolve())] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
        },
    )
    wall = time.perf_counter() - t0
    if proc.returncode:
        return {"name": name, "error": proc.stderr[-800:]}
    result = json.loads((out / "editor_summary.json").read_text())["result"]
    batch = next(int(s.split("=")[1]) for s in sets if s.startswith("optim.batch_size="))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    timed = [r for r in rows if "elapsed_s" in r]
    steady = None
    if len(timed) >= 2:
        first = next(r for r in timed if r["step"] >= min(20, timed[-1]["step"] - 10))
        steady = (timed[-1]["step"] - first["step"]) * batch / (timed[-1]["elapsed_s"] - first["elapsed_s"])
    return {
        "name": name,
        "batch": batch,
        "steady_clips_s": steady,
        "loop_s": result["seconds"],
        "overall_clips_s": result["steps_done"] * batch / result["seconds"],
        "process_s": wall,
        "to_step_20_s": next((r["elapsed_s"] for r in timed if r["step"] >= 20), None),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--vae", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--config", default="recipes/small/editor.toml")
    ap.add_argument("--baseline-src", help="source tree of an older viva_core to run the baseline variant with")
    ap.add_argument("--limit", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--workers", type=int, default=14)
    ap.add_argument("--variants", help="';'-separated subset of: " + "; ".join(VARIANTS), default="")
    args = ap.parse_args()
    chosen = {n: VARIANTS[n] for n in VARIANTS if not args.variants or n in args.variants.split(";")}
    here = Path(__file__).resolve().parent.parent
    results = []
    if args.baseline_src:
        name, src = f"{BASELINE} (baseline tree)", Path(args.baseline_src)
        short, long = (run(name, VARIANTS[BASELINE], args, src, n) for n in (args.steps, 3 * args.steps))
        if "error" not in short and "error" not in long:
            long["steady_clips_s"] = 2 * args.steps * long["batch"] / (long["loop_s"] - short["loop_s"])
        results.append(long)
    results += [run(name, sets, args, here) for name, sets in chosen.items()]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "bench.json").write_text(json.dumps(results, indent=2))
    base = results[0].get("steady_clips_s") if args.baseline_src else None
    print("| variant | batch | steady clips/s | overall clips/s | to step 20 (s) | vs baseline |")
    print("|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['name']} | error: {r['error'].splitlines()[-1] if r['error'] else '?'} |||||")
            continue
        rate = r["steady_clips_s"] or r["overall_clips_s"]
        fmt = lambda v: "-" if v is None else f"{v:.0f}"  # noqa: E731
        ratio = f"{rate / base:.1f}x" if base else "-"
        print(
            f"| {r['name']} | {r['batch']} | {fmt(r['steady_clips_s'])} | {fmt(r['overall_clips_s'])} | "
            f"{fmt(r['to_step_20_s'])} | {ratio} |"
        )


if __name__ == "__main__":
    main()
