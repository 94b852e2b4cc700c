"""Markdown tables of `viva eval` reports for the README.

    python recipes/small/table.py "label=REPORT_DIR" ...             one row per report: scores, EA per category
    python recipes/small/table.py --by-operation "label=REPORT_DIR" ... one row per operation: EA of each report
"""
from __future__ import annotations

import json
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


def by_variant(reports: list[tuple[str, dict]]) -> None:
    head = ["variant", "n", "EA", "PC", "GN", "GR", "overall", *(f"EA {c}" for c in CATEGORIES)]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    judges = []
    for label, r in reports:
        o, cats = r["overall"], r["by_category"]
        row = [label, str(o["count"]), *(fmt(o[k]) for k in ("ea", "pc", "gn", "gr", "overall")),
               *(f"{fmt(cats[c]['ea'])} ({cats[c]['count']})" if c in cats else "-" for c in CATEGORIES)]
        print("| " + " | ".join(row) + " |")
        j = r.get("judge_agreement")
        if j:
            judges.append(f"{label}: judge EA P(Yes) vs verifier: accuracy {fmt(j['accuracy'])}, ROC-AUC "
                          f"{fmt(j['roc_auc'])} ({j['positives']} positives, {j['negatives']} negatives)")
    for line in judges:
        print(f"\n{line}")


def by_operation(reports: list[tuple[str, dict]]) -> None:
    ops = sorted({op for _, r in reports for op in r["by_operation"]})
    print("| operation | n | " + " | ".join(f"EA {label}" for label, _ in reports) + " |")
    print("|" + "---|" * (len(reports) + 2))
    for op in ops:
        n = next(r["by_operation"][op]["count"] for _, r in reports if op in r["by_operation"])
        cells = [fmt(r["by_operation"][op]["ea"]) if op in r["by_operation"] else "-" for _, r in reports]
        print(f"| {op} | {n} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    argv = sys.argv[1:]
    if argv and argv[0] == "--by-operation":
        by_operation(load(argv[1:]))
    else:
        by_variant(load(argv))
