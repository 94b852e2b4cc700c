"""Markdown tables of `viva eval` reports for the README.

python recipes/small/table.py "label=REPORT_DIR" ...             one row per report: scores, EA per category
python recipes/small/table.py --by-operation "label=REPORT_DIR" ... one row per operation: EA of each report
python recipes/small/table.py --paired "base=DIR" "label=DIR" ...  each against the base on the same clips
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

CATEGORIES = ("basic", "hybrid", "temporal", "causal", "spatial", "commonsense")


def fmt(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def load(args: list[str]) -> list[tuple[str, dict]]:
    out = []
    for item in args:
        label, _, folder = item.partition("=")
        out.append((label, json.loads((Path(folder) / "report.json").read_text())))
    return out


def bootstrap_ci(values: list[float], draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% interval of the mean over clips (percentile bootstrap): how far two rows must differ to count."""
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(values, k=len(values))) / len(values) for _ in range(draws))
    return means[int(0.025 * draws)], means[int(0.975 * draws) - 1]


def by_variant(reports: list[tuple[str, dict]]) -> None:
    head = ["variant", "n", "EA", "EA 95% CI", "PC", "GN", "GR", "overall", *(f"EA {c}" for c in CATEGORIES)]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    judges = []
    for label, r in reports:
        o, cats = r["overall"], r["by_category"]
        low, high = bootstrap_ci([score["ea"] for score in r["scores"]])
        row = [
            label,
            str(o["count"]),
            fmt(o["ea"]),
            f"{low:.2f}-{high:.2f}",
            *(fmt(o[k]) for k in ("pc", "gn", "gr", "overall")),
            *(f"{fmt(cats[c]['ea'])} ({cats[c]['count']})" if c in cats else "-" for c in CATEGORIES),
        ]
        print("| " + " | ".join(row) + " |")
        j = r.get("judge_agreement")
        if j:
            judges.append(
                f"{label}: judge EA P(Yes) vs verifier: accuracy {fmt(j['accuracy'])}, ROC-AUC "
                f"{fmt(j['roc_auc'])} ({j['positives']} positives, {j['negatives']} negatives)"
            )
    for line in judges:
        print(f"\n{line}")


def by_operation(reports: list[tuple[str, dict]]) -> None:
    """EA per single operation; every combination of two or three (`a+b`) is pooled into one 'hybrid' row."""

    def pooled(r: dict) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        for score in r["scores"]:
            out.setdefault("hybrid" if "+" in score["operation"] else score["operation"], []).append(score["ea"])
        return out

    tables = [(label, pooled(r)) for label, r in reports]
    ops = sorted({op for _, t in tables for op in t}, key=lambda op: (op == "hybrid", op))
    print("| operation | n | " + " | ".join(f"EA {label}" for label, _ in tables) + " |")
    print("|" + "---|" * (len(tables) + 2))
    for op in ops:
        n = next(len(t[op]) for _, t in tables if op in t)
        cells = [fmt(sum(t[op]) / len(t[op])) if op in t else "-" for _, t in tables]
        print(f"| {op} | {n} | " + " | ".join(cells) + " |")


def paired(reports: list[tuple[str, dict]]) -> None:
    """Each report minus the first, clip by clip (same manifest, same seeds): the mean difference and its 95%
    bootstrap interval. Pairing removes the spread between clips, so it resolves differences the rows cannot."""
    (base_label, base), *others = reports
    keys = ("ea", "pc", "gn", "gr", "overall", "psnr")
    print(f"| vs {base_label} | n | " + " | ".join(f"d{k.upper()} (95% CI)" for k in keys) + " |")
    print("|" + "---|" * (len(keys) + 2))
    for label, r in others:
        if r["manifest"] != base["manifest"] or len(r["scores"]) != len(base["scores"]):
            raise SystemExit(f"{label}: not the same clips as {base_label} (manifest or count differs)")
        cells = []
        for k in keys:
            diffs = [
                a[k] - b[k]
                for a, b in zip(r["scores"], base["scores"], strict=True)
                if a[k] is not None and b[k] is not None
            ]  # a dimension a clip has no verifier for
            if not diffs:
                cells.append("-")
                continue
            low, high = bootstrap_ci(diffs, draws=4000)
            cells.append(f"{sum(diffs) / len(diffs):+.3f} ({low:+.3f}..{high:+.3f})")
        print(f"| {label} | {len(r['scores'])} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    argv = sys.argv[1:]
    if argv and argv[0] == "--by-operation":
        by_operation(load(argv[1:]))
    elif argv and argv[0] == "--paired":
        paired(load(argv[1:]))
    else:
        by_variant(load(argv))
