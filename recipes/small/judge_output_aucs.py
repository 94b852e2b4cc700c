"""How well judges tell an editor's good outputs from its bad ones, per question: each judge's ROC-AUC over an
editor's outputs against the verifiers' exact scores (an output labelled Yes at score >= 0.5), with a 95% bootstrap
interval over clips (a clip's outputs drawn together), and each judge's AUC minus the first one's on the same draws.
Issue 10 item 2 asks >= 0.9 per dimension; judges are scored as `best_of_n` scores candidates (`Judge.score`, 4
frames, what their viva_judge.json says: difference frames, frame pairs). The outputs: a stage judge_data folder
(several seeds a clip, the frames as made), or a `viva eval` report folder with its outputs/ (one a clip, the frames
as the saved videos hold them, what `viva eval --judge` reports on).

    viva eval data/eval_heldout/heldout.jsonl --editor bundled --report runs/ev_heldout
    PYTHONPATH=. python recipes/small/judge_output_aucs.py data/eval_heldout/heldout.jsonl runs/ev_heldout \
        shipped=viva_core/small_models/vlm/viva-small-judge pairs=runs/judge_pairs/judge/judge [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from best_of_n_check import candidates, score_outputs

from viva_core.eval import roc_auc
from viva_core.judge import DIMENSIONS, Judge
from viva_core.train.pretrain import frames_float, load_clip_set
from viva_core.train.pretrain.judge_data import FRAMES_FILE
from viva_core.video import read_video
from viva_core.vlm import load_vlm

THRESHOLD = 0.5  # a verifier score at or above it labels an output Yes (the judge's training threshold)


def clip_bootstrap(groups: list[list[int]], statistic, draws: int = 1000, seed: int = 0) -> list:
    """`statistic(outputs)` on `draws` resamples of the clips (each drawn clip brings all its outputs)."""
    rng = random.Random(seed)
    return [statistic([j for g in rng.choices(groups, k=len(groups)) for j in g]) for _ in range(draws)]


def interval(values: list[float | None]) -> tuple[float, float] | None:
    """The 2.5th and 97.5th percentiles of the defined values (a resample with one class has no AUC)."""
    v = sorted(x for x in values if x is not None)
    return (v[int(0.025 * len(v))], v[int(0.975 * len(v)) - 1]) if len(v) >= 20 else None


def question_rows(groups: list[list[int]], labels: dict[int, bool], judged: dict[str, list[float]], draws: int) -> dict:
    """One question's rows (`aucs`): `labels` of the outputs it labels, `judged` each judge's P(Yes) per output."""
    names = list(judged)
    kept = [[j for j in g if j in labels] for g in groups]

    def auc(name: str, outputs: list[int]) -> float | None:
        return roc_auc([judged[name][j] for j in outputs], [labels[j] for j in outputs])

    def minus_first(name: str, outputs: list[int]) -> float | None:
        a, b = auc(name, outputs), auc(names[0], outputs)
        return None if a is None or b is None else a - b

    rows = {}
    for name in names:
        row = {
            "roc_auc": auc(name, list(labels)),
            "ci": interval(clip_bootstrap(kept, lambda o, n=name: auc(n, o), draws)),
            "positives": sum(labels.values()),
            "negatives": len(labels) - sum(labels.values()),
        }
        if name != names[0]:
            row["minus_first"] = minus_first(name, list(labels))
            row["minus_first_ci"] = interval(clip_bootstrap(kept, lambda o, n=name: minus_first(n, o), draws))
        rows[name] = row
    return rows


def aucs(
    groups: list[list[int]], truth: list[dict], judged: dict[str, list[dict]], draws: int = 1000
) -> dict[str, dict[str, dict]]:
    """Per judge and question: the AUC, its interval, Yes/No counts, and (judges after the first) the paired
    difference to the first judge with its interval."""
    out: dict[str, dict[str, dict]] = {name: {} for name in judged}
    for q in DIMENSIONS:
        labels = {j: t[q] >= THRESHOLD for j, t in enumerate(truth) if t.get(q) is not None}
        rows = question_rows(groups, labels, {name: [s[q] for s in scores] for name, scores in judged.items()}, draws)
        for name, row in rows.items():
            out[name][q] = row
    return out


def load_outputs(clips, folder: Path) -> tuple[list[int], list[list[int]], list[dict], Callable[[int], torch.Tensor]]:
    """(clip of each output, the outputs of each clip, each output's verifier scores by question, output j's frames
    0..1): a report's few saved videos decoded once, a judge_data folder's outputs read from its memory map as asked."""
    report = folder / "report.json"
    if report.is_file():
        scores = json.loads(report.read_text())["scores"]
        clip = [int(s["index"]) for s in scores]
        truth = [{q: s.get(q.lower()) for q in DIMENSIONS} for s in scores]
        frames = [read_video(folder / "outputs" / f"{c}.mp4").frames for c in clip]  # float 0..1
        return clip, [[j] for j in range(len(clip))], truth, frames.__getitem__
    clip, groups, truth = candidates(clips, folder)
    stored = np.load(folder / FRAMES_FILE, mmap_mode="r")
    return clip, groups, truth, lambda j: frames_float(torch.from_numpy(np.array(stored[j])))


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("manifest")
    ap.add_argument("outputs", help="a stage judge_data folder, or a `viva eval` report folder with outputs/")
    ap.add_argument("judges", nargs="+", help="label=JUDGE_FOLDER; differences are against the first")
    ap.add_argument("--json", help="write the table here as JSON")
    ap.add_argument("--draws", type=int, default=1000)
    args = ap.parse_args()
    clips = load_clip_set(args.manifest)
    clip, groups, truth, edit_of = load_outputs(clips, Path(args.outputs))
    judged = {}
    for item in args.judges:
        name, _, folder = item.partition("=")
        if not folder:
            sys.exit(f"{item!r}: expected label=JUDGE_FOLDER")
        judged[name] = score_outputs(Judge(load_vlm(folder, dtype="fp32", device="cpu")), clips, clip, edit_of)
    table = aucs(groups, truth, judged, args.draws)
    print(f"{len(clip)} outputs of {len(groups)} clips; ROC-AUC per question (95% interval over clips)")
    for name, rows in table.items():
        cells = []
        for q in DIMENSIONS:
            r, ci = rows[q], rows[q]["ci"]
            cell = f"{q} {fmt(r['roc_auc'])}" + (f" ({ci[0]:.2f}..{ci[1]:.2f})" if ci else "")
            if "minus_first" in r:
                d = r["minus_first_ci"]
                cell += f" d {r['minus_first']:+.3f}" + (f" ({d[0]:+.2f}..{d[1]:+.2f})" if d else "")
            cells.append(cell)
        print(f"{name:10s} " + " | ".join(cells))
    first = table[next(iter(table))]
    print("Yes/No outputs: " + ", ".join(f"{q} {first[q]['positives']}/{first[q]['negatives']}" for q in DIMENSIONS))
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=1) + "\n")


if __name__ == "__main__":
    main()
