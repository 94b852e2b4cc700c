"""recipes/small/self_score_check.py's losses against a direct computation: each candidate alone through the DiT
(one row, instruction and negative prompt as separate calls), the same noise draws shared by a clip's candidates."""

import sys
import types
from pathlib import Path

import numpy as np
import torch
from tiny_editor import build_editor_folder

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "recipes" / "small"))

from self_score_check import flow_losses  # noqa: E402

from viva_core.editor import EditorOptions, load_editor  # noqa: E402
from viva_core.pipeline import dit_velocity, encode_frames, pad_tokens, unconditional  # noqa: E402


def test_flow_losses_match_one_candidate_at_a_time(tmp_path):
    editor = load_editor(str(build_editor_folder(tmp_path / "ed")), options=EditorOptions(dtype="fp32", device="cpu"))
    rng = np.random.default_rng(0)
    source = torch.from_numpy(rng.integers(0, 256, (2, 5, 32, 32, 3), dtype=np.uint8))
    clips = types.SimpleNamespace(source=source, records=[{"instruction": "make the square red"}] * 2)
    outputs = rng.integers(0, 256, (3, 5, 32, 32, 3), dtype=np.uint8)
    clip, groups, sigmas, draws = [0, 0, 1], [[0, 1], [2]], [0.3, 0.8], 2
    got = flow_losses(editor, clips, clip, groups, outputs, sigmas, draws)

    def texts(prompt):
        return pad_tokens(editor.encode_text(prompt).embeds, editor.max_text_tokens)

    want = torch.zeros(3, len(sigmas), 2)
    with torch.no_grad():
        for g in groups:
            c = clip[g[0]]
            src = encode_frames(editor, source[c].float() / 255)
            ys = [encode_frames(editor, torch.from_numpy(outputs[j]).float() / 255) for j in g]
            gen = torch.Generator().manual_seed(1000 + c)
            for si, s in enumerate(sigmas):
                for _ in range(draws):
                    eps = torch.randn(ys[0].shape[1:], generator=gen)[None]
                    for k, y in zip(g, ys):
                        for col, text in enumerate(
                            (
                                texts("make the square red"),
                                pad_tokens(unconditional(editor).embeds, editor.max_text_tokens),
                            )
                        ):
                            v = dit_velocity(editor.transformer, (1 - s) * y + s * eps, src, s, text)
                            want[k, si, col] += ((v - (eps - y)) ** 2).mean() / draws
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert not torch.equal(got[:, :, 0], got[:, :, 1])  # the instruction matters to the tiny DiT
