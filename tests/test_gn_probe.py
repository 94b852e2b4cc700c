"""recipes/small/gn_probe.py: its statistics against numpy loops on hand-made videos."""

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "recipes" / "small"))

from gn_probe import CHANGED, statistics  # noqa: E402


def _reference(edit: np.ndarray, source: np.ndarray, shown: list[int]) -> dict[str, float]:
    """The probe's two temporal terms by explicit loops over transitions and pixels."""
    t = len(edit)
    edited = np.abs(edit - source).max(-1) > CHANGED

    def temporal(transitions):
        num = den = 0.0
        for i in transitions:
            region = edited[i] | edited[i + 1]
            gap = np.abs((edit[i + 1] - edit[i]) - (source[i + 1] - source[i])).mean(-1)
            num, den = num + (gap * region).sum(), den + region.sum()
        return -num / den

    pairs = [min(i, t - 2) for i in shown]
    change = np.mean([np.abs(edit[i + 1] - edit[i]).mean() for i in range(t - 1)])
    source_change = np.mean([np.abs(source[i + 1] - source[i]).mean() for i in range(t - 1)])
    return {
        "temporal_all": temporal(range(t - 1)),
        "temporal_pairs": temporal(pairs),
        "flicker_gap_all": -abs(change - source_change),
    }


def test_statistics_match_a_loop_reference_and_rank_a_flickering_edit_lower():
    rng = np.random.default_rng(0)
    source = rng.uniform(0, 1, (1, 8, 8, 3)).repeat(9, 0) + rng.normal(0, 0.01, (9, 8, 8, 3))  # a still scene
    steady = source.copy()
    steady[:, 2:5, 2:5] = [1.0, 0.0, 0.0]  # a recoloured square that moves with nothing: steady
    flicker = steady.copy()
    flicker[::2, 2:5, 2:5] = [0.0, 0.0, 1.0]  # the same square alternating colour every frame
    shown = [0, 3, 5, 8]  # uniform_frame_indices(9, 4)
    got = {}
    for name, edit in (("steady", steady), ("flicker", flicker)):
        got[name] = statistics(torch.from_numpy(edit), torch.from_numpy(source), 4)
        want = _reference(edit, source, shown)
        for key, value in want.items():
            assert np.isclose(got[name][key], value, atol=1e-6), (name, key, got[name][key], value)
    for key in ("temporal_all", "temporal_pairs", "flicker_gap_all"):
        assert got["flicker"][key] < got["steady"][key]
    same = statistics(torch.from_numpy(source), torch.from_numpy(source), 4)
    assert all(v == 0.0 for v in same.values())  # the unedited source: nothing changed, no gap
