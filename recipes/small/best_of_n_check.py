"""Best-of-N with a judge, measured on a benchmark: what the judge's pick of K candidates scores against seed 0, a
random pick, and the oracle (the candidate with the best verifier EA), with paired bootstrap intervals over clips.

The K candidates per clip come from `viva pretrain` stage judge_data run on the benchmark manifest (outputs, their
seeds and the verifiers' scores); each judge scores every candidate as `best_of_n` does (`Judge.score`, 4 frames) and
picks the highest mean P(Yes), ties to the lowest seed.

    viva pretrain recipes/small/judge_data.toml --set data.manifest=data/eval_heldout/heldout.jsonl --set data.limit=0 \
        --set output_dir=runs/bon [--set judge.sample_steps=12]
    PYTHONPATH=. python recipes/small/best_of_n_check.py data/eval_heldout/heldout.jsonl runs/bon/judge_data \
        v4=viva_core/small_models/vlm/viva-small-judge [v2=OTHER_JUDGE ...] [--json runs/bon/best_of_n.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from table import bootstrap_ci

from viva_core.judge import Judge
from viva_core.train.pretrain import frames_float, load_clip_set
from viva_core.train.pretrain.judge_data import FRAMES_FILE, LABELS_FILE
from viva_core.vlm import load_vlm


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def candidates(clips, folder: Path) -> tuple[list[int], list[list[int]], list[dict]]:
    """(clip index of each output, the outputs of each clip in seed order, each output's verifier scores)."""
    import numpy as np

    where = {rec["npz"]: i for i, rec in enumerate(clips.records)}
    lines = [json.loads(x) for x in (folder / LABELS_FILE).read_text().splitlines() if x.strip()]
    clip = [where[line["npz"]] for line in lines]
    groups: dict[int, list[int]] = {}
    for j in sorted(range(len(lines)), key=lambda j: (clip[j], lines[j]["seed"])):
        groups.setdefault(clip[j], []).append(j)
    scores = [dict(line["scores"], overall=_mean(line["scores"].values())) for line in lines]
    assert np.load(folder / FRAMES_FILE, mmap_mode="r").shape[0] == len(lines)
    return clip, [groups[c] for c in sorted(groups)], scores


def judge_overall(judge: Judge, clips, folder: Path, clip: list[int]) -> list[float]:
    """The judge's mean P(Yes) over its questions for every output (what best_of_n ranks by)."""
    import numpy as np

    frames = np.load(folder / FRAMES_FILE, mmap_mode="r")
    out = []
    with torch.no_grad():
        for j, c in enumerate(clip):
            edit = frames_float(torch.from_numpy(np.array(frames[j])))
            verdict = judge.score(frames_float(clips.source[c]), edit, clips.records[c]["instruction"], num_frames=4)
            out.append(verdict.overall)
    return out


def main(argv: list[str]) -> None:
    json_out = None
    if "--json" in argv:
        k = argv.index("--json")
        json_out, argv = argv[k + 1], argv[:k] + argv[k + 2 :]
    manifest, folder, judges = argv[0], Path(argv[1]), [a.partition("=")[::2] for a in argv[2:]]
    clips = load_clip_set(manifest)
    clip, groups, scores = candidates(clips, folder)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    picks: dict[str, list[int]] = {
        "seed 0": [g[0] for g in groups],
        "oracle (best verifier EA)": [max(g, key=lambda j: (scores[j]["EA"], -g.index(j))) for g in groups],
    }
    for label, path in judges:
        overall = judge_overall(Judge(load_vlm(path, dtype="fp32", device=device)), clips, folder, clip)
        picks[f"judge {label}"] = [max(g, key=lambda j: (overall[j], -g.index(j))) for g in groups]
    k = len(groups[0])
    print(f"{len(groups)} clips x {k} candidates ({folder})")
    print("| pick | EA | PC | GN | GR | overall | dEA vs seed 0 (95% CI) | dEA vs random pick (95% CI) |")
    print("|---|---|---|---|---|---|---|---|")
    seed0_ea = [scores[g[0]]["EA"] for g in groups]
    random_ea = [_mean(scores[j]["EA"] for j in g) for g in groups]  # a random pick's expected EA per clip
    rows = {"random pick (mean over seeds)": None, **picks}
    result = {}
    for name, pick in rows.items():
        if pick is None:
            per = {q: [_mean(scores[j][q] for j in g) for g in groups] for q in ("EA", "PC", "GN", "GR", "overall")}
        else:
            per = {q: [scores[j][q] for j in pick] for q in ("EA", "PC", "GN", "GR", "overall")}
        cells = [f"{_mean(per[q]):.3f}" for q in ("EA", "PC", "GN", "GR", "overall")]
        for base in (seed0_ea, random_ea):
            diffs = [a - b for a, b in zip(per["EA"], base)]
            lo, hi = bootstrap_ci(diffs, draws=4000)
            cells.append(f"{_mean(diffs):+.3f} ({lo:+.3f}..{hi:+.3f})")
        print(f"| {name} | " + " | ".join(cells) + " |")
        result[name] = {q: _mean(per[q]) for q in per}
    if json_out:
        Path(json_out).write_text(json.dumps({"clips": len(groups), "candidates": k, "picks": result}, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
