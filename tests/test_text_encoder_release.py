"""Editor.release_text_encoder and load_editor(encode_first=True): the one-shot flow of `viva edit` (encode the prompt
and the negative, drop the text encoder, then place the DiT and VAE) edits bit-identically to the resident flow."""

from __future__ import annotations

import dataclasses
import gc
import types
import weakref

import pytest
import torch
from tiny_editor import build_editor_folder

import viva_core.pipeline as pipeline
from viva_core.best_of_n import best_of_n
from viva_core.cli import main
from viva_core.conditioning import negative_conditioning
from viva_core.editor import EditorOptions, load_editor
from viva_core.errors import InputError
from viva_core.pipeline import edit
from viva_core.settings import EditSettings
from viva_core.video import Video, read_video, write_video

FP32 = EditorOptions(dtype="fp32", device="cpu")
SETTINGS = EditSettings(steps=2, seed=3, sampler="euler")  # cfg: the default (guided, so the negative is used)
PROMPT = "make the square red"


@pytest.fixture(scope="module")
def editor_dir(tmp_path_factory):
    return build_editor_folder(tmp_path_factory.mktemp("release") / "editor")


@pytest.fixture(scope="module")
def frames():
    return torch.rand(5, 32, 32, 3, generator=torch.Generator().manual_seed(1))


def _released(editor_dir):
    """The one-shot flow up to the release: (editor, cond, negative, weakref to the encoder, placement log)."""
    ed = load_editor(str(editor_dir), options=FP32, encode_first=True)
    assert ed.deferred_placement
    cond, neg = ed.encode_text(PROMPT), negative_conditioning(ed, "")
    assert ed.deferred_placement  # encoding does not place the DiT
    te, log = weakref.ref(ed.text_encoder), []
    to = ed.transformer.to
    ed.transformer.to = lambda *a, **k: (log.append(ed.text_encoder is None), to(*a, **k))[1]
    ed.release_text_encoder()
    return ed, cond, neg, te, log


def test_one_shot_flow_is_bit_identical_and_frees_the_encoder(editor_dir, frames):
    ref = load_editor(str(editor_dir), options=FP32)
    expected = edit(ref, frames, ref.encode_text(PROMPT), settings=SETTINGS).frames  # negative encoded inside

    ed, cond, neg, te, log = _released(editor_dir)
    gc.collect()
    assert ed.text_encoder is None and ed.text_encoder_released and te() is None  # no reference left anywhere
    assert log == [True] and not ed.deferred_placement  # the DiT was placed once, after the encoder was gone
    assert torch.equal(edit(ed, frames, cond, negative=neg, settings=SETTINGS).frames, expected)


def test_after_the_release_encoding_fails_clearly(editor_dir, frames):
    ed, cond, _, _, _ = _released(editor_dir)
    with pytest.raises(InputError, match="release_text_encoder.*Encode every prompt"):
        ed.encode_text("make it blue")
    with pytest.raises(InputError, match="released"):
        negative_conditioning(ed, "")  # not None: zeros would silently change the edit
    with pytest.raises(InputError, match=r"negative=negative_conditioning\(editor"):
        edit(ed, frames, cond, settings=SETTINGS)  # CFG without a precomputed negative
    assert edit(ed, frames, cond, settings=dataclasses.replace(SETTINGS, cfg=1.0)).frames.shape == frames.shape


def test_a_deferred_editor_places_itself_when_it_edits_without_a_release(editor_dir, frames):
    ref = load_editor(str(editor_dir), options=FP32)
    ed = load_editor(str(editor_dir), options=FP32, encode_first=True)
    cond = ed.encode_text(PROMPT)
    out = edit(ed, frames, cond, settings=SETTINGS).frames  # the negative is still encodable
    assert not ed.deferred_placement and ed.text_encoder is not None
    assert torch.equal(out, edit(ref, frames, ref.encode_text(PROMPT), settings=SETTINGS).frames)


def test_best_of_n_runs_on_a_released_editor(editor_dir, frames):
    ed, cond, neg, _, _ = _released(editor_dir)
    scores = iter([0.2, 0.9, 0.5])
    judge = types.SimpleNamespace(
        score=lambda *a, **k: types.SimpleNamespace(overall=next(scores), scores={}, caveat_lines=lambda width: [])
    )
    out = best_of_n(ed, judge, Video(frames, 16.0, None), cond, PROMPT, n=3, settings=SETTINGS, negative=neg)
    assert out.seeds == [3, 4, 5] and out.best.seed == 4 and out.best_index == 1
    seed4 = dataclasses.replace(SETTINGS, seed=4)
    assert torch.equal(out.best.frames, edit(ed, frames, cond, negative=neg, settings=seed4).frames)
    assert not torch.equal(out.best.frames, edit(ed, frames, cond, negative=neg, settings=SETTINGS).frames)


def test_best_of_n_encodes_the_negative_and_the_source_once(editor_dir, frames, monkeypatch):
    """N candidates with CFG and no negative given: one encode of the empty prompt and one VAE encode of the source,
    not N of each; the kept edit is the one `edit` makes with the best seed (a tie keeps the lowest)."""
    ed = load_editor(str(editor_dir), options=FP32)
    cond = ed.encode_text(PROMPT)
    prompts, real = [], ed.encode_text
    monkeypatch.setattr(ed, "encode_text", lambda p: prompts.append(p) or real(p))
    encodes, real_encode = [], pipeline.encode_frames
    monkeypatch.setattr(pipeline, "encode_frames", lambda *a: encodes.append(1) or real_encode(*a))
    scores = iter([0.4, 0.7, 0.7])
    judge = types.SimpleNamespace(
        score=lambda *a, **k: types.SimpleNamespace(overall=next(scores), scores={}, caveat_lines=lambda width: [])
    )
    out = best_of_n(ed, judge, Video(frames, 16.0, None), cond, PROMPT, n=3, settings=SETTINGS)
    assert prompts == [""] and SETTINGS.cfg != 1.0 and len(encodes) == 1
    assert out.best.seed == 4 and [j.overall for j in out.judgements] == [0.4, 0.7, 0.7]
    monkeypatch.undo()
    seed4 = dataclasses.replace(SETTINGS, seed=4)
    assert torch.equal(out.best.frames, edit(ed, frames, cond, settings=seed4).frames)


def test_viva_edit_releases_the_encoder_before_sampling(editor_dir, tmp_path, monkeypatch):
    src = write_video(tmp_path / "src.mp4", torch.rand(5, 32, 32, 3, generator=torch.Generator().manual_seed(2)), 8.0)
    seen = []
    real_edit = pipeline.edit

    def spy(editor, *a, **k):
        result = real_edit(editor, *a, **k)
        seen.append((editor.text_encoder, editor.deferred_placement, result.frames))
        return result

    monkeypatch.setattr(pipeline, "edit", spy)
    args = ["edit", str(src), PROMPT, "-o", str(tmp_path / "out.mp4"), "--editor", str(editor_dir)]
    assert main([*args, "--steps", "2", "--seed", "3", "--sampler", "euler", "--dtype", "fp32", "--device", "cpu"]) == 0
    [(te, deferred, got)] = seen
    assert te is None and not deferred
    ref = load_editor(str(editor_dir), options=FP32)
    source = read_video(src, with_audio=False).frames
    assert torch.equal(got, real_edit(ref, source, ref.encode_text(PROMPT), settings=SETTINGS, fps=8.0).frames)


def test_the_release_collects_garbage_only_when_the_encoder_outlives_the_drop(editor_dir, monkeypatch):
    """A full gc.collect() costs 0.1-0.3 s once torch, diffusers and transformers are loaded (a tenth of the gap to
    issue 13's 10 s CPU demo), so the release runs one only when dropping the reference did not free the encoder."""
    import viva_core.editor as editor_module

    calls = []
    monkeypatch.setattr(editor_module, "gc", types.SimpleNamespace(collect=lambda: calls.append(1) or gc.collect()))
    ed = load_editor(str(editor_dir), options=FP32, encode_first=True)
    te = weakref.ref(ed.text_encoder)
    ed.release_text_encoder()
    assert te() is None and calls == []  # freed by the drop itself: no collection

    ed = load_editor(str(editor_dir), options=FP32, encode_first=True)
    ed.text_encoder.cycle = [ed.text_encoder]  # a reference cycle: only the cyclic collector frees it
    te = weakref.ref(ed.text_encoder)
    ed.release_text_encoder()
    assert te() is None and calls == [1]
