"""Markdown tables of `viva eval` reports for the README.

python recipes/small/table.py "label=REPORT_DIR" ...             one row per report: scores, EA per category
python recipes/small/table.py --by-operation "label=REPORT_DIR" ... one row per operation: EA of each report
PYTHONPATH=. python recipes/small/table.py --by-heldout MANIFEST "label=REPORT_DIR" ...  one row per held-out triple
    of a `viva synth` heldout manifest (the triples its synth_config.json lists): EA of each report over the clips
    carrying it
python recipes/small/table.py --paired "base=DIR" "label=DIR" ...  each against the base on the same clips (and, for
    reports of `viva eval --judge`, the judge's P(Yes) on the edits, each against the base's); "label=DIR1,DIR2"
    pools several sets' reports (the same sets, in the same order, for every label)
python recipes/small/table.py --select "base=DIR" "label=DIR" ...  a checkpoint chosen on a selection set: the label of
    the highest mean EA among those whose mean PC is at most 0.01 under the base's on the same clips ("selected: none"
    when none is); never run it on the benchmark's sets (docs/small_models.md, section 80)
PYTHONPATH=. python recipes/small/table.py --judges "base=DIR" "label=DIR" ...  reports of `viva eval --judge` on the
    same outputs: each judge's ROC-AUC against the verifiers per question (95% bootstrap interval over items), and
    each one's difference from the first judge's on the same resampled items
"""

from __future__ import annotations

import json
import random
import signal
import sys
from pathlib import Path

CATEGORIES = ("basic", "hybrid", "temporal", "causal", "spatial", "commonsense")


def fmt(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def load(args: list[str]) -> list[tuple[str, dict]]:
    """(label, report) of each "label=REPORT_DIR"; a missing or mistyped one ends the script with the usage.
    "label=DIR1,DIR2,..." pools the reports of several sets into one (their clips in that order), so --paired can
    pool sets that each alone leave a difference inside the noise (docs/small_models.md, section 65)."""
    out = []
    for item in args:
        label, _, folders = item.partition("=")
        reports = []
        for folder in folders.split(","):
            report = Path(folder) / "report.json"
            if not folder or not report.is_file():
                sys.exit(f"{item!r}: expected label=REPORT_DIR, a folder holding `viva eval`'s report.json\n{__doc__}")
            reports.append(json.loads(report.read_text()))
        if len(reports) > 1:  # pooled: the sets' clips in order
            scores = [clip for r in reports for clip in r["scores"]]
            reports = [{"manifest": [r["manifest"] for r in reports], "scores": scores}]
        out.append((label, reports[0]))
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


def by_heldout(manifest: str, reports: list[tuple[str, dict]]) -> None:
    """EA per held-out (operation, field, value) triple: which unseen combinations an editor fails. A clip counts under
    every triple it carries (`viva_core.synth.record_pairs`; a hybrid's EA is the whole clip's); n counts the first
    report's clips with an EA verifier."""
    from viva_core.synth import record_pairs

    path = Path(manifest)
    config = path.parent / "synth_config.json"
    if not path.is_file() or not config.is_file():
        sys.exit(f"{manifest!r}: expected a `viva synth` manifest with its synth_config.json beside it\n{__doc__}")
    held = [tuple(t) for t in json.loads(config.read_text())["heldout"]]
    carried = [record_pairs(json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
    ea = [{s["index"]: s["ea"] for s in r["scores"] if s["ea"] is not None} for _, r in reports]
    print("| held-out triple | n | " + " | ".join(f"EA {label}" for label, _ in reports) + " |")
    print("|" + "---|" * (len(reports) + 2))
    for triple in held:
        clips = [i for i, pairs in enumerate(carried) if triple in pairs]
        values = [[e[i] for i in clips if i in e] for e in ea]
        cells = [fmt(sum(v) / len(v)) if v else "-" for v in values]
        print(f"| {' '.join(triple)} | {len(values[0])} | " + " | ".join(cells) + " |")


def require_same_clips(label: str, r: dict, base_label: str, base: dict) -> None:
    """Clip-by-clip comparisons need the base's clips: the same manifest and as many scores."""
    if r["manifest"] != base["manifest"] or len(r["scores"]) != len(base["scores"]):
        raise SystemExit(f"{label}: not the same clips as {base_label} (manifest or count differs)")


def paired(reports: list[tuple[str, dict]]) -> None:
    """Each report minus the first, clip by clip (same manifest, same seeds): the mean difference and its 95%
    bootstrap interval. Pairing removes the spread between clips, so it resolves differences the rows cannot."""
    (base_label, base), *others = reports
    keys = ("ea", "pc", "gn", "gr", "overall", "psnr")
    print(f"| vs {base_label} | n | " + " | ".join(f"d{k.upper()} (95% CI)" for k in keys) + " |")
    print("|" + "---|" * (len(keys) + 2))
    for label, r in others:
        require_same_clips(label, r, base_label, base)
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
    pc_drift(reports)
    if all(r.get("judge_agreement") for _, r in reports):
        judged_outputs(reports)


def mean_of(report: dict, key: str) -> float:
    values = [clip[key] for clip in report["scores"] if clip[key] is not None]
    if not values:
        raise SystemExit(f"{report['manifest']}: no clip of this report has a {key.upper()} score to compare")
    return sum(values) / len(values)


def select(reports: list[tuple[str, dict]], max_pc_drop: float = 0.01) -> str | None:
    """The label of the highest mean EA among the reports (after the first, the base) whose mean PC is at most
    `max_pc_drop` under the base's (issue 10 item 4's bar), or None; prints each candidate's means first. Meant for
    choosing one of a run's checkpoints on clips the benchmark does not hold, so the benchmark scores it once."""
    (base_label, base), *others = reports
    base_pc = mean_of(base, "pc")
    print(f"| candidate | EA | PC | dPC vs {base_label} | eligible |")
    print("|---|---|---|---|---|")
    best, best_ea = None, None
    for label, r in others:
        require_same_clips(label, r, base_label, base)
        ea, pc = mean_of(r, "ea"), mean_of(r, "pc")
        eligible = pc >= base_pc - max_pc_drop
        print(f"| {label} | {ea:.3f} | {pc:.3f} | {pc - base_pc:+.3f} | {'yes' if eligible else 'no'} |")
        if eligible and (best_ea is None or ea > best_ea):
            best, best_ea = label, ea
    print(f"selected: {best or 'none'}")
    return best


def pc_drift(reports: list[tuple[str, dict]], still: float = 0.01, rose: float = 0.05) -> None:
    """Where each report's preservation moved against the first's, clip by clip: a PC loss confined to the clips whose
    EA rose is the price of the edits; one spread over the clips whose EA did not move is something else (grpo_v11's
    was a learned hedge, other objects edited too: docs/small_models.md, section 59), which the spill column (mean
    spill ratio of each report, `pc.spill` in its details; '-' for reports made before it) shows directly."""
    (base_label, base), *others = reports
    print(
        f"\n| vs {base_label} | clips | PC down | dPC, EA still (abs dEA < {still}) | dPC, EA up (dEA > {rose}) "
        f"| corr(dEA, dPC) | spill {base_label} -> this |"
    )
    print("|---|---|---|---|---|---|---|")
    for label, r in others:
        pairs = [
            (a["ea"] - b["ea"], a["pc"] - b["pc"])
            for a, b in zip(r["scores"], base["scores"], strict=True)
            if None not in (a["ea"], b["ea"], a["pc"], b["pc"])
        ]

        n = len(pairs)
        down = sum(p < 0 for _, p in pairs) / n if n else 0.0
        print(
            f"| {label} | {n} | {down:.0%} | {mean_pc(pairs, lambda e: abs(e) < still)} "
            f"| {mean_pc(pairs, lambda e: e > rose)} "
            f"| {correlation(pairs)} | {mean_spill(base)} -> {mean_spill(r)} |"
        )


def mean_spill(report: dict) -> str:
    """The mean spill ratio over a report's clips that have one (`eval.metrics.spills`), '-' when none does."""
    values = [
        v for v in (score.get("details", {}).get("pc", {}).get("spill") for score in report["scores"]) if v is not None
    ]
    return f"{sum(values) / len(values):.2f}" if values else "-"


def mean_pc(pairs: list[tuple[float, float]], keep) -> str:
    """The mean dPC of the (dEA, dPC) pairs whose dEA `keep` accepts, and their count."""
    sel = [p for e, p in pairs if keep(e)]
    return f"{sum(sel) / len(sel):+.3f} ({len(sel)})" if sel else "-"


def correlation(pairs: list[tuple[float, float]]) -> str:
    """Pearson's r of the pairs, '-' where either side does not vary."""
    n = len(pairs)
    if n < 2:
        return "-"
    mx, my = sum(x for x, _ in pairs) / n, sum(y for _, y in pairs) / n
    sxy = sum((x - mx) * (y - my) for x, y in pairs)
    sxx, syy = sum((x - mx) ** 2 for x, _ in pairs), sum((y - my) ** 2 for _, y in pairs)
    return "-" if sxx == 0 or syy == 0 else f"{sxy / (sxx * syy) ** 0.5:+.2f}"


def judged_outputs(reports: list[tuple[str, dict]]) -> None:
    """With `viva eval --judge`: the judge's mean P(Yes) on each report's edits per question, and each minus the
    first's, clip by clip. A loss that raises the judge's verdict (a reward it was trained on) without the verifiers'
    scores above it has taught the editor to please the judge, not to edit."""
    questions = ("EA", "PC", "GN", "GR")

    def p_yes(r: dict, q: str) -> dict[int, float]:
        items = r["judge_agreement"]["per_question"][q]["items"]
        return {i["index"]: i["p_yes"] for i in items if i["kind"] == "output"}

    (base_label, base), *others = reports
    print(f"\n| judge P(Yes) on the edits, vs {base_label} | n | " + " | ".join(questions) + " |")
    print("|" + "---|" * (len(questions) + 2))
    for label, r in reports:
        cells = []
        for q in questions:
            mine, ref = p_yes(r, q), p_yes(base, q)
            cell = f"{sum(mine.values()) / len(mine):.3f}"
            if r is not base:
                diffs = [mine[i] - ref[i] for i in mine if i in ref]
                low, high = bootstrap_ci(diffs, draws=4000)
                cell += f", {sum(diffs) / len(diffs):+.3f} ({low:+.3f}..{high:+.3f})"
            cells.append(cell)
        print(f"| {label} | {len(p_yes(r, 'EA'))} | " + " | ".join(cells) + " |")


JUDGE_ROWS = ("EA", "EA, edits", "PC", "GN", "GR")  # EA with the unedited sources, EA over the outputs alone, ...


def judge_items(r: dict, row: str) -> list[dict]:
    items = r["judge_agreement"]["per_question"][row.partition(",")[0]]["items"]
    return [i for i in items if i["kind"] == "output"] if row == "EA, edits" else items


def judges(reports: list[tuple[str, dict]], draws: int = 2000) -> None:
    """Judges on the same outputs (one editor's, one manifest): per question the ROC-AUC of P(Yes) against the
    verifier's label, its 95% percentile-bootstrap interval over items, and the difference from the first judge on
    the same resampled items (paired: both judges scored the same outputs)."""
    from viva_core.eval import roc_auc

    (base_label, base), *_ = reports
    print("| question | items (yes / no) | " + " | ".join(f"ROC-AUC {label} (95% CI)" for label, _ in reports) + " |")
    print("|" + "---|" * (len(reports) + 2))
    for row in JUDGE_ROWS:
        ref = judge_items(base, row)
        cells = []
        for label, r in reports:
            items = judge_items(r, row)
            if [(i["index"], i["kind"], i["label"]) for i in items] != [
                (i["index"], i["kind"], i["label"]) for i in ref
            ]:
                raise SystemExit(f"{label}: judged other outputs than {base_label} ({row}); run both on one editor")
            rng, aucs, deltas = random.Random(0), [], []
            for _ in range(draws):
                pick = [rng.randrange(len(items)) for _ in items]
                labels = [items[k]["label"] for k in pick]
                a = roc_auc([items[k]["p_yes"] for k in pick], labels)
                b = roc_auc([ref[k]["p_yes"] for k in pick], labels)
                if a is not None and b is not None:
                    aucs.append(a)
                    deltas.append(a - b)
            aucs.sort()
            deltas.sort()
            auc = roc_auc([i["p_yes"] for i in items], [i["label"] for i in items])
            base_auc = roc_auc([i["p_yes"] for i in ref], [i["label"] for i in ref])
            lo, hi = aucs[int(0.025 * len(aucs))], aucs[int(0.975 * len(aucs)) - 1]
            cell = f"{fmt(auc)} ({lo:.2f}-{hi:.2f})"
            if r is not base:
                d_lo, d_hi = deltas[int(0.025 * len(deltas))], deltas[int(0.975 * len(deltas)) - 1]
                cell += f", {auc - base_auc:+.2f} ({d_lo:+.2f}..{d_hi:+.2f})"
            cells.append(cell)
        yes = sum(i["label"] for i in ref)
        print(f"| {row} | {len(ref)} ({yes} / {len(ref) - yes}) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    if hasattr(signal, "SIGPIPE"):  # `table.py ... | head` ends quietly, as a shell tool does (not on Windows)
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    argv = sys.argv[1:]
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        sys.exit(0)
    if not argv:
        sys.exit(__doc__)
    if argv[0] == "--by-operation":
        by_operation(load(argv[1:]))
    elif argv[0] == "--by-heldout":
        if len(argv) < 3:
            sys.exit(f"--by-heldout needs a manifest and at least one report\n{__doc__}")
        by_heldout(argv[1], load(argv[2:]))
    elif argv[0] == "--paired":
        paired(load(argv[1:]))
    elif argv[0] == "--select":
        select(load(argv[1:]))
    elif argv[0] == "--judges":
        judges(load(argv[1:]))
    else:
        by_variant(load(argv))
