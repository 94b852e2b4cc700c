"""recipes/small/best_of_n_check.py's within-clip pair agreement against a direct count over all ordered pairs."""

import itertools
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "recipes" / "small"))

from best_of_n_check import consensus_scores, pair_agreement, reference_signals  # noqa: E402


def _reference(group: list[int], truth: list[float], judged: list[float]) -> float | None:
    """Over ordered pairs (a, b) with truth[a] > truth[b]: 1 if judged[a] > judged[b], 1/2 on a tie, else 0."""
    scores = [
        (judged[a] > judged[b]) + 0.5 * (judged[a] == judged[b])
        for a, b in itertools.permutations(group, 2)
        if truth[a] > truth[b]
    ]
    return sum(scores) / len(scores) if scores else None


def test_pair_agreement_matches_direct_count():
    rng = random.Random(0)
    truth = [rng.choice([0.0, 0.25, 1.0]) for _ in range(40)]
    judged = [rng.choice([0.1, 0.5, 0.9]) for _ in range(40)]
    groups = [list(range(k, k + 4)) for k in range(0, 40, 4)]
    per_clip, pairs = pair_agreement(groups, truth, judged)
    expected = [r for r in (_reference(g, truth, judged) for g in groups) if r is not None]
    assert per_clip == expected
    assert pairs == sum(1 for g in groups for a, b in itertools.combinations(g, 2) if truth[a] != truth[b])


def test_pair_agreement_extremes():
    groups = [[0, 1, 2]]
    truth = [0.0, 0.5, 1.0]
    assert pair_agreement(groups, truth, [0.1, 0.2, 0.3]) == ([1.0], 3)
    assert pair_agreement(groups, truth, [0.3, 0.2, 0.1]) == ([0.0], 3)
    assert pair_agreement(groups, truth, [0.5, 0.5, 0.5]) == ([0.5], 3)
    assert pair_agreement([[0, 1]], [1.0, 1.0], [0.0, 1.0]) == ([], 0)  # no pair the verifier separates


def test_pair_agreement_with_a_margin_keeps_only_pairs_the_verifier_separates_by_more():
    groups = [[0, 1, 2, 3]]
    truth = [0.0, 0.05, 0.5, 0.52]
    judged = [0.9, 0.1, 0.2, 0.8]  # one of the two near-ties and two of the four clear pairs ordered right
    per_clip, pairs = pair_agreement(groups, truth, judged, margin=0.1)
    clear = [(a, b) for a, b in itertools.combinations(groups[0], 2) if abs(truth[a] - truth[b]) > 0.1]
    assert pairs == len(clear) == 4
    assert per_clip == [sum((truth[a] - truth[b]) * (judged[a] - judged[b]) > 0 for a, b in clear) / 4]
    assert pair_agreement(groups, truth, judged, margin=0.6) == ([], 0)


def test_reference_signals_against_a_direct_computation(tmp_path):
    """Closeness to the truth inside the edit mask (a ceiling only the verifier's ground truth allows) and the amount
    of change, per candidate, equal a direct numpy computation; the truth itself is the closest candidate and the
    unedited source changes nothing."""
    from types import SimpleNamespace

    import numpy as np
    import torch

    rng = np.random.default_rng(0)
    source = rng.integers(0, 256, (2, 3, 8, 8, 3), dtype=np.uint8)
    target = rng.integers(0, 256, (2, 3, 8, 8, 3), dtype=np.uint8)
    mask = np.zeros((2, 3, 8, 8), dtype=np.uint8)
    mask[:, :, 2:6, 1:4] = 1
    tensors = {"source": source, "target": target, "mask": mask}
    clips = SimpleNamespace(**{k: torch.from_numpy(v) for k, v in tensors.items()})
    half = ((source.astype(np.uint16) + target) // 2).astype(np.uint8)
    frames = np.stack([target[0], source[0], half[0], half[1], target[1]])
    clip = [0, 0, 0, 1, 1]
    np.save(tmp_path / "frames.npy", frames)
    got = reference_signals(clips, tmp_path, clip)
    closeness, placed, change = got.values()
    for j, c in enumerate(clip):
        e, t, s = frames[j] / 255.0, target[c] / 255.0, source[c] / 255.0
        m = np.broadcast_to(mask[c][..., None], e.shape)
        assert abs(closeness[j] - -(np.abs(e - t) * m).sum() / m.sum()) < 1e-6
        d = np.abs(e - s)
        assert abs(placed[j] - (d[m == 1].mean() - d[m == 0].mean())) < 1e-6
        assert abs(change[j] - np.abs(e - s).mean()) < 1e-6
    assert closeness[0] == 0.0 > closeness[2] > closeness[1] and change[1] == 0.0
    assert pair_agreement([[0, 1, 2]], [1.0, 0.0, 0.5], closeness) == ([1.0], 3)


def test_consensus_scores_against_a_direct_computation():
    """Change agreement (Pearson r of a candidate's change map with the others' mean map), closeness to the others
    (minus the mean L1 distance to each other candidate) and closeness to the others' median where they change
    equal a numpy computation written out per candidate; of four candidates, the one that changed another place
    scores lowest on each."""
    import numpy as np
    import torch

    rng = np.random.default_rng(1)
    source = rng.uniform(0, 0.2, (3, 8, 8, 3))
    edits = np.repeat(source[None], 4, axis=0)
    edits[0, :, 2:5, 2:5] = [0.9, 0.1, 0.1]  # three seeds recolour the same square red
    edits[1, :, 2:5, 2:5] = [0.85, 0.1, 0.15]
    edits[2, :, 2:5, 2:6] = [0.9, 0.15, 0.1]
    edits[3, :, 5:8, 0:3] = [0.9, 0.1, 0.1]  # one recolours another place
    edits += rng.uniform(0, 0.01, edits.shape)
    got = consensus_scores(torch.from_numpy(edits), torch.from_numpy(source))
    for j in range(4):
        others = [k for k in range(4) if k != j]
        change = np.abs(edits - source).mean(-1).reshape(4, -1)
        r = np.corrcoef(change[j], change[others].mean(0))[0, 1]
        assert abs(got["change agreement"][j] - r) < 1e-9
        close = -np.mean([np.abs(edits[j] - edits[k]).mean() for k in others])
        assert abs(got["closeness to the others"][j] - close) < 1e-9
        rest = edits[others].reshape(3, -1, 3)
        median = np.sort(rest, axis=0)[1]  # the middle of 3
        region = change[others].mean(0) >= np.quantile(change[others].mean(0), 0.9)
        err = np.abs(edits[j].reshape(-1, 3) - median).mean(-1)
        assert abs(got["closeness to the others' median where they change"][j] - -err[region].mean()) < 1e-9
    for name in got:
        assert int(np.argmin(got[name])) == 3, name
    one = consensus_scores(torch.from_numpy(edits[:1]), torch.from_numpy(source))
    assert set(one) == set(got) and all(v == [0.0] for v in one.values())  # nothing to agree with
