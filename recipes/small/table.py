"""Markdown table of `viva eval` reports for the README: one row per (variant, data set), EA per category.

    python recipes/small/table.py "label=REPORT_DIR" ...
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

CATEGORIES = ("basic", "hybrid", "temporal", "causal", "spatial", "commonsense")


def fmt(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def main(args: list[str]) -> None:
    head = ["variant", "n", "EA", "PC", "GN", "GR", "overall", *(f"EA {c}" for c in CATEGORIES)]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    judges = []
    for item in args:
        label, _, folder = item.partition("=")
        r = json.loads((Path(folder) / "report.json").read_text())
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


if __name__ == "__main__":
    main(sys.argv[1:])
