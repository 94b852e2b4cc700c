"""recipes/small/judge_output_aucs.py: per-question AUCs against a direct pair count, clip-level resampling."""

import json
import random
import sys
from pathlib import Path

import torch

from viva_core.video import write_video

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "recipes" / "small"))

from judge_output_aucs import aucs, clip_bootstrap, load_outputs  # noqa: E402


def _pair_count_auc(scores: list[float], labels: list[bool]) -> float:
    """P(a Yes output scores above a No one), ties a half: the ROC-AUC by its definition."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    return sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))


def test_aucs_are_the_pair_counts_and_the_differences_are_paired():
    rng = random.Random(3)
    n = 48
    groups = [list(range(k, k + 4)) for k in range(0, n, 4)]
    truth = [
        {"EA": rng.random(), "PC": rng.random(), "GN": rng.random(), "GR": None if j % 5 == 0 else rng.random()}
        for j in range(n)
    ]
    first = [{q: rng.choice([0.2, 0.4, 0.6]) for q in ("EA", "PC", "GN", "GR")} for _ in range(n)]
    second = [{q: (t[q] or 0.0) + rng.gauss(0, 0.2) for q in ("EA", "PC", "GN", "GR")} for t in truth]
    table = aucs(groups, truth, {"a": first, "b": second}, draws=200)
    for q in ("EA", "PC", "GN", "GR"):
        keep = [j for j in range(n) if truth[j][q] is not None]
        labels = [truth[j][q] >= 0.5 for j in keep]
        want = {name: _pair_count_auc([s[j][q] for j in keep], labels) for name, s in (("a", first), ("b", second))}
        assert abs(table["a"][q]["roc_auc"] - want["a"]) < 1e-12 and abs(table["b"][q]["roc_auc"] - want["b"]) < 1e-12
        assert (
            abs(table["b"][q]["minus_first"] - (want["b"] - want["a"])) < 1e-12 and "minus_first" not in table["a"][q]
        )
        assert table["a"][q]["positives"] + table["a"][q]["negatives"] == len(keep)
        low, high = table["b"][q]["ci"]
        assert low <= table["b"][q]["roc_auc"] <= high
    assert table["b"]["GN"]["minus_first_ci"][0] > 0  # scores that follow the truth beat coarse noise on every draw


def test_the_bootstrap_draws_whole_clips():
    groups = [[0, 1, 2], [3, 4], [5]]
    sizes = clip_bootstrap(groups, lambda outputs: sorted(outputs), draws=50)
    for drawn in sizes:
        for g in groups:  # a clip's outputs come together or not at all, as often as the clip is drawn
            assert len({drawn.count(j) for j in g}) == 1


def test_a_viva_eval_report_gives_its_outputs_at_their_brightness_and_its_verifier_scores(tmp_path):
    (tmp_path / "outputs").mkdir()
    grey = torch.full((5, 32, 32, 3), 0.6)
    write_video(tmp_path / "outputs" / "3.mp4", grey, fps=8)
    score = {"index": 3, "ea": 0.7, "pc": 0.2, "gn": 0.5, "gr": None}
    (tmp_path / "report.json").write_text(json.dumps({"scores": [score]}))
    clip, groups, truth, edit_of = load_outputs(None, tmp_path)
    assert clip == [3] and groups == [[0]] and truth == [{"EA": 0.7, "PC": 0.2, "GN": 0.5, "GR": None}]
    assert edit_of(0).shape == (5, 32, 32, 3) and abs(float(edit_of(0).mean()) - 0.6) < 0.02  # 0..1, not 0..1/255
