"""recipes/small/ground_check.py: the token-level change, objectness and mask targets it reads, and its contrast,
against direct computations on 16x16-pixel token cells of a 64x64 clip."""

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "recipes" / "small"))

from ground_check import contrast, pointed, pointing  # noqa: E402


def _cells(x: np.ndarray) -> np.ndarray:
    """[F, 64, 64] -> the mean of each 16x16 cell, frames then rows then columns [F * 16]."""
    return x.reshape(x.shape[0], 4, 16, 4, 16).mean((2, 4)).reshape(-1)


def test_pointing_reads_each_token_cell_of_the_frames_the_judge_sees():
    from viva_core import bundled
    from viva_core.judge import Judge
    from viva_core.train.pretrain.judge import GroundHead
    from viva_core.video import uniform_frame_indices
    from viva_core.vlm import load_vlm

    rng = np.random.default_rng(0)
    source = np.zeros((9, 64, 64, 3), dtype=np.float32)
    source[:] = [0.2, 0.6, 0.9]  # a plain background, one object
    source[:, 8:24, 36:52] = [1.0, 0.1, 0.1]
    edit = source.copy()
    edit[:, 8:24, 36:52] = [0.1, 0.1, 1.0]  # recoloured
    edit += rng.uniform(0, 0.02, edit.shape).astype(np.float32)
    mask = np.zeros((9, 64, 64), dtype=np.uint8)
    mask[:, 8:24, 36:52] = 1
    judge = Judge(load_vlm(bundled.JUDGE, dtype="fp32", device="cpu"))
    logits, target, change, p_yes, objectness = pointing(
        judge, GroundHead(128), torch.from_numpy(source), torch.from_numpy(edit), "Make the red square blue.",
        torch.from_numpy(mask),
    )  # fmt: skip
    picks = uniform_frame_indices(9, 4)
    assert logits.shape == target.shape == change.shape == objectness.shape == (64,) and 0 < p_yes < 1
    assert np.allclose(target.numpy(), _cells(mask[picks].astype(np.float64)))
    assert np.allclose(change.numpy(), _cells(np.abs(edit - source)[picks].mean(-1)), atol=1e-6)
    assert np.allclose(objectness.numpy(), _cells(np.abs(source - [0.2, 0.6, 0.9])[picks].mean(-1)), atol=1e-6)


def test_contrast_and_pointed_weights():
    change = torch.tensor([0.9, 0.1, 0.1, 0.3])
    weights = torch.tensor([1.0, 0.0, 0.5, 0.0])
    inside = (0.9 + 0.05) / 1.5
    outside = (0.1 + 0.05 + 0.3) / 2.5
    assert abs(contrast(weights, change) - (inside - outside)) < 1e-6
    w = pointed(torch.tensor([2.0, 0.0, 1.0]))
    assert float(w.max()) == 1.0 and torch.allclose(w, torch.exp(torch.tensor([0.0, -2.0, -1.0])))
