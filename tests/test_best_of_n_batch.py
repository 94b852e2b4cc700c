"""Best-of-N with candidates sampled together (`pipeline.edit_encoded_batch`, `best_of_n(batch=K)`): each candidate
is the edit its seed gives alone, with one DiT call per step for the whole batch."""

from __future__ import annotations

import dataclasses
import types

import pytest
import torch
from tiny_editor import build_editor_folder

from viva_core.best_of_n import best_of_n
from viva_core.cli import _candidates_label
from viva_core.editor import EditorOptions, load_editor
from viva_core.errors import InputError
from viva_core.pipeline import edit, edit_encoded_batch, encode_source
from viva_core.sampling import start_step
from viva_core.settings import EditSettings
from viva_core.video import Video

PROMPT = "make the square red"
GUIDED = EditSettings(steps=3, seed=0, sampler="euler")  # the default cfg: CFG rows in the batch
UNGUIDED = dataclasses.replace(GUIDED, cfg=1.0)
UNIPC = dataclasses.replace(GUIDED, sampler="unipc", strength=0.7)  # multistep history and a noised-source start


@pytest.fixture(scope="module")
def editor(tmp_path_factory):
    return load_editor(
        str(build_editor_folder(tmp_path_factory.mktemp("batch") / "editor")),
        options=EditorOptions(dtype="fp32", device="cpu"),
    )


@pytest.fixture(scope="module")
def frames():
    return torch.rand(5, 32, 32, 3, generator=torch.Generator().manual_seed(4))


def dit_batches(editor, monkeypatch) -> list[int]:
    """The batch size of every DiT call from now on."""
    sizes, forward = [], editor.transformer.forward
    monkeypatch.setattr(
        editor.transformer, "forward", lambda *a, **k: sizes.append(k["hidden_states"].shape[0]) or forward(*a, **k)
    )
    return sizes


@pytest.mark.parametrize("settings", [GUIDED, UNGUIDED, UNIPC], ids=["cfg", "no-cfg", "unipc-strength"])
def test_each_batched_candidate_is_its_seeds_edit(editor, frames, settings, monkeypatch):
    cond = editor.encode_text(PROMPT)
    alone = {s: edit(editor, frames, cond, settings=dataclasses.replace(settings, seed=s)).frames for s in (3, 7, 8)}
    sizes = dit_batches(editor, monkeypatch)
    results = edit_encoded_batch(editor, encode_source(editor, frames), cond, [3, 7, 8], settings=settings)
    rows = 2 if settings.cfg != 1.0 else 1
    steps_run = settings.steps - start_step(settings.steps, settings.strength)
    assert sizes == [3 * rows] * steps_run  # one call per step run, all three candidates (and their CFG rows) in it
    assert [r.seed for r in results] == [3, 7, 8]
    for r in results:
        assert r.frames.shape == frames.shape
        torch.testing.assert_close(r.frames, alone[r.seed], atol=2e-5, rtol=0)
    assert (results[0].frames - results[1].frames).abs().max() > 1e-3  # the seeds differ


def test_best_of_n_in_batches_judges_and_keeps_as_one_at_a_time(editor, frames, monkeypatch):
    cond = editor.encode_text(PROMPT)

    def judge(scores):
        seen = []
        it = iter(scores)

        def score(source, edited, instruction, num_frames):
            seen.append(edited)
            return types.SimpleNamespace(overall=next(it), scores={}, caveat_lines=lambda width: [])

        return types.SimpleNamespace(score=score), seen

    one, seen_one = judge([0.1, 0.6, 0.6, 0.2, 0.9])
    sequential = best_of_n(editor, one, Video(frames, 16.0, None), cond, PROMPT, n=5, settings=GUIDED)
    sizes = dit_batches(editor, monkeypatch)
    two, seen_two = judge([0.1, 0.6, 0.6, 0.2, 0.9])
    batched = best_of_n(editor, two, Video(frames, 16.0, None), cond, PROMPT, n=5, settings=GUIDED, batch=2)
    assert sizes == [4] * GUIDED.steps + [4] * GUIDED.steps + [2] * GUIDED.steps  # candidates 1-2, 3-4, 5 (x CFG)
    assert batched.seeds == sequential.seeds == [0, 1, 2, 3, 4]
    assert batched.best.seed == sequential.best.seed == 4
    for a, b in zip(seen_one, seen_two):  # the judge saw the same candidates in the same order
        torch.testing.assert_close(a, b, atol=2e-5, rtol=0)
    torch.testing.assert_close(batched.best.frames, sequential.best.frames, atol=2e-5, rtol=0)


@pytest.mark.parametrize("batch", [1, 3])
def test_best_of_n_with_shared_steps_runs_them_once_and_branches(editor, frames, monkeypatch, batch):
    """shared_steps 2 of 4: the first seed's first 2 steps and the branch point run once (batch 1), then every
    candidate runs the last 2; the first seed's candidate is its plain edit (Euler resumes exactly), the others are
    branches: not their seeds' plain edits, and not one another."""
    cond = editor.encode_text(PROMPT)
    settings = dataclasses.replace(GUIDED, steps=4, seed=5)
    plain = {s: edit(editor, frames, cond, settings=dataclasses.replace(settings, seed=s)).frames for s in (5, 6)}
    seen = []

    def score(source, edited, instruction, num_frames):
        seen.append(edited)
        return types.SimpleNamespace(overall=float(len(seen)), scores={}, caveat_lines=lambda width: [])

    sizes = dit_batches(editor, monkeypatch)
    judge = types.SimpleNamespace(score=score)
    out = best_of_n(
        editor, judge, Video(frames, 16.0, None), cond, PROMPT, n=3, settings=settings, batch=batch, shared_steps=2
    )
    per_batch = [2 * 3] * 2 if batch == 3 else [2] * 2 * 3  # the last 2 steps of every candidate, x CFG
    assert sizes == [2] * 3 + per_batch  # 2 trunk steps + the branch point, one row and its CFG row
    assert out.seeds == [5, 6, 7] and out.best.seed == 7
    torch.testing.assert_close(seen[0], plain[5], atol=2e-5, rtol=0)
    assert (seen[1] - plain[6]).abs().max() > 1e-3
    assert (seen[1] - seen[2]).abs().max() > 1e-3
    with pytest.raises(InputError, match="shared_steps must be 1..3"):
        best_of_n(editor, judge, Video(frames, 16.0, None), cond, PROMPT, n=2, settings=settings, shared_steps=4)
    with pytest.raises(InputError, match="shared_steps must be >= 0"):
        best_of_n(editor, judge, Video(frames, 16.0, None), cond, PROMPT, n=2, settings=settings, shared_steps=-1)


def test_bad_batches_are_refused(editor, frames):
    cond = editor.encode_text(PROMPT)
    stub = types.SimpleNamespace(score=None)
    with pytest.raises(InputError, match="batches of >= 1, got 0"):
        best_of_n(editor, stub, Video(frames, 16.0, None), cond, PROMPT, n=2, settings=GUIDED, batch=0)
    with pytest.raises(InputError, match="at least one seed"):
        edit_encoded_batch(editor, encode_source(editor, frames), cond, [], settings=GUIDED)


def test_progress_labels_name_the_candidates_of_each_batch():
    assert _candidates_label(0, 1, 4) == "candidate 1/4"
    assert _candidates_label(2, 2, 4) == "candidates 3-4/4"
    assert _candidates_label(4, 2, 5) == "candidate 5/5"
