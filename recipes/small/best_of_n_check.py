"""Best-of-N with a judge, measured on a benchmark: what the judge's pick of K candidates scores against seed 0, a
random pick, and the oracle (the candidate with the best verifier EA), with paired bootstrap intervals over clips.
Each judge also picks by its EA P(Yes) alone, and so do three consensus scores that need no judge (`consensus_scores`);
its within-clip pair agreement is printed: over the pairs of one
clip's candidates whose verifier EA differs, the share its EA P(Yes) orders the same way (ties count a half; chance
0.5), with a bootstrap interval over clips; and the same over the clear pairs alone, whose EA differs by more than
CLEAR_MARGIN (half of one clip's seed pairs differ by < 0.02, which no judge without the ground truth can order;
docs/small_models.md, section 44). That is what a best-of-N pick and a group-relative reward need, and what the
between-clip ROC-AUC of `viva eval --judge` does not measure. --record writes both into each judge folder's
viva_judge.json (`candidate_pair_agreement`, `candidate_clear_pair_agreement`), so the judge's results and best-of-N's
table warn where it is near chance (viva_core.judge.judge_caveat). --compare FOLDER: another candidate set of the
same clips (independent seeds against `judge.shared_steps` branches, say): per clip, this set's oracle EA and mean
EA minus that set's, with intervals.

The K candidates per clip come from `viva pretrain` stage judge_data run on the benchmark manifest (outputs, their
seeds and the verifiers' scores); each judge scores every candidate as `best_of_n` does (`Judge.score`, 4 frames) and
picks the highest mean P(Yes), ties to the lowest seed.

    viva pretrain recipes/small/judge_data.toml --set data.manifest=data/eval_heldout/heldout.jsonl --set data.limit=0 \
        --set output_dir=runs/bon [--set judge.sample_steps=12]
    PYTHONPATH=. python recipes/small/best_of_n_check.py data/eval_heldout/heldout.jsonl runs/bon/judge_data \
        v4=viva_core/small_models/vlm/viva-small-judge [v2=OTHER_JUDGE ...] [--json runs/bon/best_of_n.json] \
        [--record] [--compare runs/bon_independent/judge_data] [--first 4]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from table import bootstrap_ci

from viva_core.judge import JUDGE_INFO_FILE, Judge, judge_info
from viva_core.safe_io import write_text_atomic
from viva_core.train.pretrain import frames_float, load_clip_set
from viva_core.train.pretrain.judge_data import FRAMES_FILE, LABELS_FILE
from viva_core.vlm import load_vlm

CLEAR_MARGIN = 0.1  # verifier EA difference above which a pair of one clip's candidates counts as clear


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


def judge_scores(judge: Judge, clips, folder: Path, clip: list[int]) -> list[dict[str, float]]:
    """`score_outputs` of every output of a stage judge_data folder."""
    import numpy as np

    frames = np.load(folder / FRAMES_FILE, mmap_mode="r")
    return score_outputs(judge, clips, clip, lambda j: frames_float(torch.from_numpy(np.array(frames[j]))))


def score_outputs(judge: Judge, clips, clip: list[int], edit_of) -> list[dict[str, float]]:
    """The judge's P(Yes) per question and their mean ("overall", what best_of_n ranks by) for every output j: an edit
    of clip `clip[j]`, its frames `edit_of(j)` (0..1), read one at a time."""
    out = []
    with torch.no_grad():
        for j, c in enumerate(clip):
            verdict = judge.score(
                frames_float(clips.source[c]), edit_of(j), clips.records[c]["instruction"], num_frames=4
            )
            out.append(dict(verdict.scores, overall=verdict.overall))
    return out


def reference_signals(clips, folder: Path, clip: list[int]) -> dict[str, list[float]]:
    """Three orderings of each clip's candidates to read a judge's agreement against: closeness to the ground truth
    inside the edit mask (minus the mean |edit - truth| there; it needs the truth, which only the verifier has, so it
    is a ceiling for what is visible), the change where the edit belongs (mean |edit - source| inside the edit mask
    minus outside it: it needs only where, not what, which a judge that grounds the instruction could know), and the
    amount of change (mean |edit - source|; a judge that only sees "how much was edited" gets this)."""
    import numpy as np

    frames = np.load(folder / FRAMES_FILE, mmap_mode="r")
    closeness, placed, change = [], [], []
    for j, c in enumerate(clip):
        edit = frames_float(torch.from_numpy(np.array(frames[j])))
        mask = clips.mask[c].float().unsqueeze(-1).expand_as(edit)
        closeness.append(-float(((edit - frames_float(clips.target[c])).abs() * mask).sum() / mask.sum().clamp(min=1)))
        diff = (edit - frames_float(clips.source[c])).abs()
        inside = (diff * mask).sum() / mask.sum().clamp(min=1)
        placed.append(float(inside - (diff * (1 - mask)).sum() / (1 - mask).sum().clamp(min=1)))
        change.append(float(diff.mean()))
    return {
        "reference: closeness to the truth in the mask": closeness,
        "reference: change inside the mask minus outside": placed,
        "reference: amount of change": change,
    }


CONSENSUS = ("change agreement", "closeness to the others", "closeness to the others' median where they change")
CONSENSUS_REGION = 0.9  # the third score compares within the top 10% of pixels by the others' mean change


def consensus_scores(edits: torch.Tensor, source: torch.Tensor) -> dict[str, list[float]]:
    """Three scores of one clip's K candidates that need neither a judge nor the ground truth, only the other
    candidates (self-consistency: where and what most seeds change is taken as the edit):
    - change agreement: Pearson correlation, over pixels, between a candidate's change map (mean |edit - source| over
      channels) and the mean change map of the other K - 1 candidates;
    - closeness to the others: minus the mean |edit - other| over the other K - 1 candidates (minimum Bayes risk
      under an L1 utility: the medoid wins);
    - closeness to the others' median where they change: minus the mean |edit - median of the others| (per pixel and
      channel; the lower median for an even count) over the pixels where the others' mean change map is in its top
      10% (the background, alike in every seed, left out).
    `edits` (K, T, H, W, C) and `source` (T, H, W, C), floats on one scale. K = 1: zeros (nothing to agree with)."""
    k = edits.shape[0]
    if k < 2:
        return {name: [0.0] * k for name in CONSENSUS}
    change = (edits - source[None]).abs().mean(-1).flatten(1)  # (K, pixels)
    others = (change.sum(0, keepdim=True) - change) / (k - 1)
    a, b = change - change.mean(1, keepdim=True), others - others.mean(1, keepdim=True)
    corr = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp(min=1e-12)
    flat = edits.flatten(1)
    dist = torch.cdist(flat, flat, p=1) / flat.shape[1]  # mean |edit_i - edit_j|; the diagonal is 0
    pixels = edits.flatten(1, -2)  # (K, pixels, C)
    median_close = []
    for i in range(k):
        rest = torch.cat([pixels[:i], pixels[i + 1 :]])
        region = others[i] >= torch.quantile(others[i], CONSENSUS_REGION)
        err = (pixels[i] - rest.median(0).values).abs().mean(-1)
        median_close.append(-float(err[region].mean()))
    return dict(zip(CONSENSUS, (corr.tolist(), (-dist.sum(1) / (k - 1)).tolist(), median_close)))


def consensus_signals(clips, folder: Path, clip: list[int], groups: list[list[int]]) -> dict[str, list[float]]:
    """`consensus_scores` of every output, clip by clip (each output scored against its own clip's candidates)."""
    import numpy as np

    frames = np.load(folder / FRAMES_FILE, mmap_mode="r")
    out = {name: [0.0] * len(clip) for name in CONSENSUS}
    for g in groups:
        edits = torch.stack([frames_float(torch.from_numpy(np.array(frames[j]))) for j in g])
        for name, values in consensus_scores(edits, frames_float(clips.source[clip[g[0]]])).items():
            for j, v in zip(g, values):
                out[name][j] = v
    return {f"consensus: {name}": values for name, values in out.items()}


def pair_agreement(
    groups: list[list[int]], truth: list[float], judged: list[float], margin: float = 0.0
) -> tuple[list[float], int]:
    """Per clip, the share of its candidate pairs whose verifier scores (`truth`) differ by more than `margin` that
    `judged` orders the same way (a tie in `judged` counts a half); clips without such a pair are left out. Also the
    number of pairs."""
    per_clip, pairs = [], 0
    for g in groups:
        agree = [
            1.0 if (truth[a] - truth[b]) * (judged[a] - judged[b]) > 0 else 0.5 if judged[a] == judged[b] else 0.0
            for i, a in enumerate(g)
            for b in g[i + 1 :]
            if abs(truth[a] - truth[b]) > margin
        ]
        if agree:
            per_clip.append(sum(agree) / len(agree))
            pairs += len(agree)
    return per_clip, pairs


def agreements(groups: list[list[int]], truth: list[float], judged: list[float]) -> dict:
    """`pair_agreement` over all pairs, and over the clear pairs alone (verifier EA apart by more than CLEAR_MARGIN)."""
    return {"all": pair_agreement(groups, truth, judged), "clear": pair_agreement(groups, truth, judged, CLEAR_MARGIN)}


def record(folder: str, agreement: dict, manifest: str, candidates: int) -> None:
    """The judge's within-clip pair agreements into its viva_judge.json, next to judge_check.py's records."""
    info = judge_info(folder) or {}
    everything, clear = agreement["all"], agreement["clear"]
    info.update(
        candidate_pair_agreement=round(everything["pair_agreement"], 3),
        candidate_pair_agreement_ci=[round(x, 3) for x in everything["ci"]],
        candidate_pairs=everything["pairs"],
        candidate_clear_pair_agreement=round(clear["pair_agreement"], 3),
        candidate_clear_pair_agreement_ci=[round(x, 3) for x in clear["ci"]],
        candidate_clear_pairs=clear["pairs"],
        candidate_clear_margin=CLEAR_MARGIN,
        candidate_manifest=f"{Path(manifest).name}, {candidates} candidates a clip",
    )
    path = Path(folder) / JUDGE_INFO_FILE
    write_text_atomic(path, json.dumps(info) + "\n")
    print(f"recorded in {path}")


def compare(clips, mine: tuple[list[int], list[list[int]], list[dict]], folder: Path, other: Path) -> dict:
    """Per clip, this set's oracle EA (best of its candidates by the verifier) and mean EA (a random pick) minus the
    other set's, averaged over clips, with 95% bootstrap intervals. `mine`: `candidates` of `folder`, loaded."""
    (clip, groups, scores), (other_clip, other_groups, other_scores) = mine, candidates(clips, other)
    if [clip[g[0]] for g in groups] != [other_clip[g[0]] for g in other_groups]:
        raise SystemExit(f"{folder} and {other} do not hold the same clips' candidates")
    rows = {}
    for name, pick in (("oracle EA", max), ("mean EA (random pick)", _mean)):
        diffs = [
            pick([scores[j]["EA"] for j in g]) - pick([other_scores[j]["EA"] for j in h])
            for g, h in zip(groups, other_groups)
        ]
        lo, hi = bootstrap_ci(diffs, draws=4000)
        rows[name] = {"difference": _mean(diffs), "ci": [lo, hi]}
        print(f"{name}: this set - {other} = {_mean(diffs):+.3f} ({lo:+.3f}..{hi:+.3f}) over {len(diffs)} clips")
    return rows


def pop_option(argv: list[str], flag: str) -> tuple[str | None, list[str]]:
    """(the value after `flag`, argv without the two) or (None, argv): these scripts' `--name VALUE` options."""
    if flag not in argv:
        return None, argv
    k = argv.index(flag)
    return argv[k + 1], argv[:k] + argv[k + 2 :]


def main(argv: list[str]) -> None:
    to_record = "--record" in argv
    argv = [a for a in argv if a != "--record"]
    other, argv = pop_option(argv, "--compare")
    other = Path(other) if other else None
    json_out, argv = pop_option(argv, "--json")
    # --first K: each clip's K lowest seeds only (one set of 8 seeds read as best-of-4 and best-of-8)
    first, argv = pop_option(argv, "--first")
    first = None if first is None else int(first)
    manifest, folder, judges = argv[0], Path(argv[1]), [a.partition("=")[::2] for a in argv[2:]]
    clips = load_clip_set(manifest)
    clip, groups, scores = candidates(clips, folder)
    if first is not None:
        groups = [g[:first] for g in groups]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    picks: dict[str, list[int]] = {
        "seed 0": [g[0] for g in groups],
        "oracle (best verifier EA)": [max(g, key=lambda j: (scores[j]["EA"], -g.index(j))) for g in groups],
    }
    truth = [s["EA"] for s in scores]
    agreement = {name: agreements(groups, truth, v) for name, v in reference_signals(clips, folder, clip).items()}
    for name, values in consensus_signals(clips, folder, clip, groups).items():  # no judge, no truth: a picker too
        picks[name] = [max(g, key=lambda j: (values[j], -g.index(j))) for g in groups]
        agreement[name] = agreements(groups, truth, values)
    for label, path in judges:
        judged = judge_scores(Judge(load_vlm(path, dtype="fp32", device=device)), clips, folder, clip)
        for key, name in (("overall", f"judge {label}"), ("EA", f"judge {label}, EA question")):
            picks[name] = [max(g, key=lambda j: (judged[j][key], -g.index(j))) for g in groups]
        agreement[label] = agreements(groups, truth, [x["EA"] for x in judged])
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
    print("\n| judge's EA P(Yes), or signal | pairs | agreement with the verifier's EA (95% CI) | clips | pairs |")
    print("|---|---|---|---|---|")
    for label, kinds in agreement.items():
        for kind, (per_clip, pairs) in kinds.items():
            which = "all" if kind == "all" else f"|dEA| > {CLEAR_MARGIN}"
            if not per_clip:  # no pair the verifier separates (tiny sets)
                print(f"| {label} | {which} | - | 0 | 0 |")
                kinds[kind] = {"pair_agreement": None, "ci": None, "clips": 0, "pairs": 0}
                continue
            lo, hi = bootstrap_ci(per_clip, draws=4000)
            print(f"| {label} | {which} | {_mean(per_clip):.3f} ({lo:.3f}..{hi:.3f}) | {len(per_clip)} | {pairs} |")
            kinds[kind] = {"pair_agreement": _mean(per_clip), "ci": [lo, hi], "clips": len(per_clip), "pairs": pairs}
    if to_record:
        for label, path in judges:
            record(path, agreement[label], manifest, k)
    compared = compare(clips, (clip, groups, scores), folder, other) if other else None
    if json_out:
        summary = {"clips": len(groups), "candidates": k, "picks": result, "within_clip_ea_agreement": agreement}
        if compared:
            summary["compared_with"] = {"folder": str(other), **compared}
        Path(json_out).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
