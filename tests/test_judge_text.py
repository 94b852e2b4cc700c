"""Whether a judge may write a rationale: a judge trained from scratch on Yes/No answers (viva_judge.json in its
folder, the bundled small judge) generates junk ("assistant assistant ..."), so asking it for a rationale is an
error in the library and a note in the ComfyUI node, never junk text."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from tiny_vlm import build_tiny_vlm

from viva_core.errors import InputError, ModelLoadError
from viva_core.judge import JUDGE_INFO_FILE, Judge, judge_generates_text
from viva_core.vlm import load_vlm

SMALL_JUDGE = Path(__file__).resolve().parent.parent / "viva_core" / "small_models" / "vlm" / "viva-small-judge"


def test_which_folders_generate_text(tmp_path):
    assert judge_generates_text(tmp_path)  # a chat VLM: no viva_judge.json
    (tmp_path / JUDGE_INFO_FILE).write_text(json.dumps({"difference_frames": True, "frames": 4}))
    assert not judge_generates_text(tmp_path)  # as `viva pretrain judge` writes it
    (tmp_path / JUDGE_INFO_FILE).write_text(json.dumps({"difference_frames": True, "generates_text": True}))
    assert judge_generates_text(tmp_path)
    (tmp_path / JUDGE_INFO_FILE).write_text("[1, 2")
    with pytest.raises(ModelLoadError, match="judge info is not readable JSON"):
        judge_generates_text(tmp_path)
    (tmp_path / JUDGE_INFO_FILE).write_text("[1, 2]")
    with pytest.raises(ModelLoadError, match="must be a JSON object"):
        judge_generates_text(tmp_path)
    assert not judge_generates_text(SMALL_JUDGE)
    assert json.loads((SMALL_JUDGE / JUDGE_INFO_FILE).read_text())["difference_frames"] is True  # as shipped


def test_yes_no_judge_refuses_a_rationale_and_still_scores(tmp_path):
    folder = build_tiny_vlm(tmp_path / "vlm")
    frames = torch.rand(2, 32, 32, 3), torch.rand(2, 32, 32, 3)
    chat = Judge(load_vlm(folder, dtype="fp32", device="cpu"))
    assert chat.generates_text
    scored = chat.score(*frames, "make it green", num_frames=1)
    shutil.copytree(folder, tmp_path / "yes_no")
    (tmp_path / "yes_no" / JUDGE_INFO_FILE).write_text(json.dumps({"difference_frames": False}))
    yes_no = Judge(load_vlm(tmp_path / "yes_no", dtype="fp32", device="cpu"))
    assert not yes_no.generates_text and not yes_no.difference
    with pytest.raises(InputError, match="answer Yes/No only"):
        yes_no.score(*frames, "make it green", num_frames=1, rationale=True)
    again = yes_no.score(*frames, "make it green", num_frames=1)
    assert again.rationale is None and again.scores == pytest.approx(scored.scores, abs=1e-6)
