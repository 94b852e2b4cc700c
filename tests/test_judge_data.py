"""`viva pretrain` stage judge_data: an editor's own outputs labelled by the verifiers, and the judge stage drawing
them (`judge.editor_outputs`, `judge.editor_share`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from viva_core import bundled
from viva_core.errors import InputError
from viva_core.train import pretrain as S
from viva_core.train.pretrain.judge_data import output_seed


@pytest.fixture(scope="module")
def clips_dir(tmp_path_factory) -> Path:
    from viva_core.synth import generate

    out = tmp_path_factory.mktemp("synth")
    generate(out, n=8, seed=3, format="npz", splits=(1.0, 0.0, 0.0))
    return out


def _cfg(stage: str, out: Path, manifest: Path, **sets) -> S.ScratchConfig:
    overrides = [
        f"stage={stage}",
        f"output_dir={out}",
        f"data.manifest={manifest}",
        "optim.batch_size=2",
        "optim.workers=0",
        "device=cpu",
        *(f"{k}={v}" for k, v in sets.items()),
    ]
    return S.load_scratch_config(None, overrides)


@pytest.fixture(scope="module")
def outputs_dir(clips_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("jd")
    sets = {"data.limit": 3, "judge.editor": bundled.EDITOR, "judge.seeds": 2, "judge.sample_steps": 2, "seed": 4}
    return S.run_stage(_cfg("judge_data", out, clips_dir / "train.jsonl", **sets))


def test_outputs_are_the_pipelines_edits_and_labels_its_verifier_scores(clips_dir, outputs_dir) -> None:
    """Batched over clips and seeds, each output is what `edit` makes of that clip with its seed (the reference:
    one clip at a time through the user-facing pipeline), and its labels are `score_edit` of the saved frames."""
    from viva_core.editor import EditorOptions, load_editor
    from viva_core.eval import score_edit
    from viva_core.pipeline import EditSettings, edit

    frames = np.load(outputs_dir / "frames.npy")
    lines = [json.loads(x) for x in (outputs_dir / "labels.jsonl").read_text().splitlines()]
    clips = S.load_clip_set(clips_dir / "train.jsonl", 3)
    assert frames.shape == (6, *clips.source.shape[1:]) and frames.dtype == np.uint8 and len(lines) == 6
    editor = load_editor(str(bundled.EDITOR), options=EditorOptions(dtype="fp32", device="cpu"))
    for j in (1, 4):  # clip 0 seed 1, clip 2 seed 0
        c, k = divmod(j, 2)
        rec = clips.records[c]
        assert lines[j]["npz"] == rec["npz"] and lines[j]["seed"] == k
        src = S.frames_float(clips.source[c])
        ref = edit(
            editor,
            src,
            editor.encode_text(rec["instruction"]),
            settings=EditSettings(steps=2, cfg=5.0, seed=output_seed(4, c, k)),
        ).frames
        assert (torch.from_numpy(frames[j]).float() - ref * 255).abs().max() <= 1.0  # uint8 rounding
        s = score_edit(
            src, S.frames_float(torch.from_numpy(frames[j])), S.frames_float(clips.target[c]), clips.mask[c],
            rec.get("verify"), rec.get("operation"),
        )  # fmt: skip
        assert lines[j]["scores"] == pytest.approx({"EA": s.ea, "PC": s.pc, "GN": s.gn, "GR": s.gr})
    assert not np.array_equal(frames[0], frames[1])  # two seeds, two edits
    summary = json.loads((outputs_dir / "judge_data_summary.json").read_text())["result"]
    assert summary["outputs"] == 6 and sum(summary["positives"]["EA"]) == 6


def test_shared_steps_outputs_are_best_of_ns_branches(clips_dir, tmp_path) -> None:
    """With judge.shared_steps, each clip's outputs are the candidates best-of-N's `shared_steps` samples for its seeds
    (reference: `edit_trunk` + `edit_encoded_batch(trunk=...)`, one clip at a time): the first seed's output goes on
    from the trunk, the second branches off it."""
    from viva_core.editor import EditorOptions, load_editor
    from viva_core.pipeline import EditSettings, edit_encoded_batch, edit_trunk, encode_source

    sets = {"data.limit": 2, "judge.editor": bundled.EDITOR, "judge.seeds": 2, "judge.sample_steps": 3, "seed": 4}
    out = S.run_stage(_cfg("judge_data", tmp_path, clips_dir / "train.jsonl", **sets, **{"judge.shared_steps": 1}))
    frames = np.load(out / "frames.npy")
    clips = S.load_clip_set(clips_dir / "train.jsonl", 2)
    editor = load_editor(str(bundled.EDITOR), options=EditorOptions(dtype="fp32", device="cpu"))
    for c in range(2):
        seeds = [output_seed(4, c, k) for k in range(2)]
        settings = EditSettings(steps=3, cfg=5.0, seed=seeds[0])
        cond = editor.encode_text(clips.records[c]["instruction"])
        source = encode_source(editor, S.frames_float(clips.source[c]))
        trunk = edit_trunk(editor, source, cond, 1, settings=settings)
        ref = edit_encoded_batch(editor, source, cond, seeds, settings=settings, trunk=trunk)
        for k in range(2):
            assert (torch.from_numpy(frames[2 * c + k]).float() - ref[k].frames * 255).abs().max() <= 1.0


def test_judge_draws_editor_outputs_with_their_verifier_labels(clips_dir, outputs_dir, tmp_path) -> None:
    clips = S.load_clip_set(clips_dir / "train.jsonl", 5)
    outputs = S.load_editor_outputs(outputs_dir, clips, 0.5)  # outputs of clips 0-2, all inside these 5
    lines = [json.loads(x) for x in (outputs_dir / "labels.jsonl").read_text().splitlines()]
    frames = np.load(outputs_dir / "frames.npy")
    sec = S.JudgeSection(editor_share=0.5, editor_outputs=str(outputs_dir))
    data = S._JudgeData(clips, sec, seed=0, size=200, outputs=outputs)
    kinds = []
    for i in range(200):
        c, src, cand, labels, kind = data.example(i)
        kinds.append(kind)
        if kind == "editor":
            j = next(j for j in range(6) if np.array_equal(frames[j], (cand * 255).round().byte().numpy()))
            assert c == j // 2 and torch.equal(src, S.frames_float(clips.source[c]))
            want = {q: None if v is None else v >= 0.5 for q, v in lines[j]["scores"].items()}
            assert labels == want
    assert 70 < kinds.count("editor") < 130  # judge.editor_share of the draws
    plain = S._JudgeData(clips, S.JudgeSection(), seed=0, size=50)
    assert all(plain.example(i)[4] != "editor" for i in range(50))

    judge = S.run_stage(
        _cfg(
            "judge",
            tmp_path / "j",
            clips_dir / "train.jsonl",
            **{
                "judge.init": bundled.JUDGE,
                "judge.editor_outputs": outputs_dir,
                "judge.editor_share": 1.0,
                "optim.steps": 2,
                "optim.warmup_steps": 1,
                "data.limit": 5,
            },
        )  # fmt: skip
    )
    assert (judge / "viva_judge.json").is_file()


def test_outputs_of_another_manifest_or_a_broken_folder_are_refused(clips_dir, outputs_dir, tmp_path) -> None:
    import shutil

    from viva_core.synth import generate

    other = tmp_path / "other"
    generate(other, n=4, seed=9, format="npz", splits=(1.0, 0.0, 0.0))  # same npz names, other clips
    with pytest.raises(InputError, match="another clip"):
        S.load_editor_outputs(outputs_dir, S.load_clip_set(other / "train.jsonl"), 0.5)
    with pytest.raises(InputError, match="judge_data"):
        S.load_editor_outputs(tmp_path, S.load_clip_set(clips_dir / "train.jsonl"), 0.5)
    broken = tmp_path / "broken"
    shutil.copytree(outputs_dir, broken)
    data = (broken / "frames.npy").read_bytes()
    (broken / "frames.npy").write_bytes(data[: len(data) // 2])  # an interrupted copy
    with pytest.raises(InputError, match="unreadable"):
        S.load_editor_outputs(broken, S.load_clip_set(clips_dir / "train.jsonl"), 0.5)
    (broken / "frames.npy").write_bytes(data)
    (broken / "labels.jsonl").write_text('{"npz": "train/000000.npz"}\n' * 6)
    with pytest.raises(InputError, match="line 1: needs npz, source_crc and scores"):
        S.load_editor_outputs(broken, S.load_clip_set(clips_dir / "train.jsonl"), 0.5)
    with pytest.raises(InputError, match="judge.editor is empty"):
        _cfg("judge_data", tmp_path, clips_dir / "train.jsonl")
    with pytest.raises(InputError, match="judge.editor_outputs"):
        _cfg("judge", tmp_path, clips_dir / "train.jsonl", **{"judge.editor_share": 0.3})


def test_ranking_pairs_two_outputs_of_one_clip_per_question_they_disagree_on(clips_dir, outputs_dir, tmp_path) -> None:
    """judge.rank_weight: an editor item comes with another output of its clip; the collate pairs the Yes and the No
    answer of each question the two disagree on (unlabelled or equal answers make no pair), and the stage trains on
    that ranking loss."""
    import shutil

    from viva_core.train.pretrain.judge import _collate_judge
    from viva_core.vlm import load_vlm

    clips = S.load_clip_set(clips_dir / "train.jsonl", 3)
    loaded = S.load_editor_outputs(outputs_dir, clips, 0.5)
    even = {"EA": True, "PC": True, "GN": None, "GR": False}  # output 2c of clip c; 2c + 1 below
    odd = {"EA": False, "PC": True, "GN": True, "GR": True}
    outputs = S.EditorOutputs(loaded.frames, loaded.clip, [even if j % 2 == 0 else odd for j in range(6)])
    data = S._JudgeData(clips, S.JudgeSection(editor_share=1.0, rank_weight=1.0), seed=0, size=6, outputs=outputs)
    items = [data[i] for i in range(6)]
    assert all(len(chats) == len(labels) == 8 and len(prefs) == 4 for chats, labels, prefs, _ in items)
    _, labels, pairs, _ = _collate_judge(load_vlm(bundled.JUDGE, dtype="fp32", device="cpu").processor)(items)
    assert pairs.shape == (12, 2)  # EA and GR of each of the 6 items
    for yes, no in pairs.tolist():
        assert labels[yes] == 1 and labels[no] == 0 and yes // 8 == no // 8  # one item: two outputs of one clip
        assert yes % 4 == no % 4 in (0, 3) and (yes % 8 < 4) != (no % 8 < 4)  # EA or GR, one answer each
    plain = S._JudgeData(clips, S.JudgeSection(editor_share=1.0), seed=0, size=1, outputs=outputs)
    assert len(plain[0][1]) == 4 and plain[0][2] == []  # without rank_weight: one output an item

    disagreeing = tmp_path / "jd"
    shutil.copytree(outputs_dir, disagreeing)
    lines = [json.loads(x) for x in (disagreeing / "labels.jsonl").read_text().splitlines()]
    for j, line in enumerate(lines):
        line["scores"]["EA"] = 1.0 - j % 2
    (disagreeing / "labels.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    sets = {"judge.init": bundled.JUDGE, "judge.editor_outputs": disagreeing, "judge.editor_share": 1.0,
            "judge.rank_weight": 1.0, "judge.host_positions": True, "optim.steps": 1, "optim.warmup_steps": 0,
            "data.limit": 3}  # fmt: skip
    S.run_stage(_cfg("judge", tmp_path / "j", clips_dir / "train.jsonl", **sets))
    logged = json.loads((tmp_path / "j" / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0 < logged["rank_loss"] < 10


def test_rank_margin_pairs_outputs_whose_verifier_scores_differ_by_more_than_it(clips_dir, outputs_dir) -> None:
    """judge.rank_margin > 0: two outputs of one clip make a pair on a question where their verifier scores differ by
    more than the margin, also when both fall on one side of the threshold; the better one comes first. Checked
    against a direct reading of the scores in labels.jsonl."""
    from viva_core.train.pretrain.judge import _collate_judge
    from viva_core.vlm import load_vlm

    clips = S.load_clip_set(clips_dir / "train.jsonl", 3)
    outputs = S.load_editor_outputs(outputs_dir, clips, 0.5)
    raw = [json.loads(x)["scores"] for x in (outputs_dir / "labels.jsonl").read_text().splitlines()]
    assert outputs.scores == [{q: s.get(q) for q in ("EA", "PC", "GN", "GR")} for s in raw]
    outputs.scores = [{"EA": 0.09 * j, "PC": 0.9, "GN": None, "GR": 0.3 - 0.05 * j} for j in range(6)]
    outputs.labels = [{q: None if v is None else v >= 0.5 for q, v in sc.items()} for sc in outputs.scores]  # EA: No
    for j, k in ((0, 1), (2, 3), (1, 0)):
        assert outputs.preferences(j, k, 0.0) == [0, 0, 0, 0]  # the labels agree on every question
    assert outputs.preferences(1, 0, 0.05) == [1, 0, 0, 0]  # EA 0.09 vs 0.0 > 0.05; GR 0.25 vs 0.3 is not
    assert outputs.preferences(0, 5, 0.15) == [-1, 0, 0, 1]  # EA 0.0 vs 0.45; GR 0.3 vs 0.05
    assert outputs.preferences(0, 1, 0.09) == [0, 0, 0, 0]  # a difference of exactly the margin makes no pair
    sec = S.JudgeSection(editor_share=1.0, rank_weight=1.0, rank_margin=0.05)
    data = S._JudgeData(clips, sec, seed=0, size=6, outputs=outputs)
    items = [data[i] for i in range(6)]
    _, labels, pairs, _ = _collate_judge(load_vlm(bundled.JUDGE, dtype="fp32", device="cpu").processor)(items)
    expected = []
    for i, (_, _, prefs, _) in enumerate(items):
        j = data._draw(i)[4]
        k = outputs.sibling(j, np.random.default_rng([0, i, 1]))
        assert prefs == outputs.preferences(j, k, 0.05)
        for q, name in enumerate(("EA", "PC", "GN", "GR")):
            a, b = outputs.scores[j][name], outputs.scores[k][name]
            if a is not None and b is not None and abs(a - b) > 0.05:
                first, second = 8 * i + q, 8 * i + 4 + q  # output j's answer, the sibling's
                expected.append((first, second) if a > b else (second, first))
    assert sorted(map(tuple, pairs.tolist())) == sorted(expected)
    assert all(labels[a] == labels[b] == 0 for a, b in expected if a % 4 == 0)  # pairs of two "No" answers
    with pytest.raises(InputError, match="rank_margin"):
        _cfg("judge", Path("/tmp/unused"), clips_dir / "train.jsonl", **{"judge.rank_margin": 1.5})


def test_ground_loss_points_the_ea_answer_at_the_source_tokens_of_the_edit_mask(clips_dir, outputs_dir, tmp_path):
    """judge.ground_weight: each edit shown comes with its clip's edit mask at the judge's frames; the targets are the
    mask's share of each 16x16 token region (a direct reshape-mean here), and the logits are the head's q.k between
    the EA chat's answer position and its first 64 image tokens (the 4 source frames), checked against a loop over the
    token positions. The stage trains on it, saves the head, and a continued run starts from the saved head."""
    from safetensors.torch import load_file

    from viva_core.judge import yes_no_token_ids
    from viva_core.train.pretrain.judge import (
        GROUND_HEAD_FILE,
        GroundHead,
        _collate_judge,
        ground_logits,
        ground_targets,
        judge_margins,
    )
    from viva_core.video import uniform_frame_indices
    from viva_core.vlm import load_vlm

    clips = S.load_clip_set(clips_dir / "train.jsonl", 3)
    outputs = S.load_editor_outputs(outputs_dir, clips, 0.5)
    data = S._JudgeData(clips, S.JudgeSection(editor_share=0.5, rank_weight=1.0), seed=0, size=6, outputs=outputs)
    items = [data[i] for i in range(6)]
    vlm = load_vlm(bundled.JUDGE, dtype="fp32", device="cpu")
    inputs, _, _, masks = _collate_judge(vlm.processor)(items)
    edits = sum(len(chats) for chats, *_ in items) // 4
    assert masks.shape == (edits, 4, 64, 64) and edits > len(items)  # some items show two outputs of one clip
    first = data._example(data._draw(0))[0]
    assert torch.equal(masks[0], clips.mask[first][uniform_frame_indices(clips.mask.shape[1], 4)])

    target = ground_targets(masks, inputs["image_grid_thw"][0], 2)
    unit = (masks > 0).float()
    assert torch.allclose(target, unit.view(edits, 4, 4, 16, 4, 16).mean((3, 5)).flatten(1))

    yes, no = yes_no_token_ids(vlm.tokenizer)
    head = GroundHead(128)
    with torch.no_grad():
        torch.nn.init.normal_(head.bias)
        _, hidden = judge_margins(vlm, inputs, yes, no, hidden=True)
        logits = ground_logits(head, hidden, inputs["input_ids"], vlm.model.config.image_token_id, 64)
        for e in range(edits):
            row = 4 * e
            where = (inputs["input_ids"][row] == vlm.model.config.image_token_id).nonzero().flatten()
            assert len(where) == 12 * 16  # source, edit and difference frames, 16 tokens each
            q = hidden[row, -1] @ head.query.weight.T + head.query.bias
            k = hidden[row, where[:64]] @ head.key.weight.T + head.key.bias
            assert torch.allclose(logits[e], k @ q / 8 + head.bias, atol=1e-5)

    sets = {"judge.init": bundled.JUDGE, "judge.editor_outputs": outputs_dir, "judge.editor_share": 0.5,
            "judge.rank_weight": 1.0, "judge.ground_weight": 1.0, "optim.steps": 2, "optim.warmup_steps": 0,
            "data.limit": 3}  # fmt: skip
    folder = S.run_stage(_cfg("judge", tmp_path / "j", clips_dir / "train.jsonl", **sets))
    logged = json.loads((tmp_path / "j" / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0 < logged["ground_loss"] < 5
    saved = load_file(folder / GROUND_HEAD_FILE)
    assert saved["query.weight"].shape == (64, 128)
    again = S.run_stage(
        _cfg("judge", tmp_path / "k", clips_dir / "train.jsonl", **{**sets, "judge.init": folder, "optim.lr": 0.0})
    )
    assert all(torch.equal(v, load_file(again / GROUND_HEAD_FILE)[k]) for k, v in saved.items())  # lr 0: kept
    with pytest.raises(InputError, match="ground_weight"):
        _cfg("judge", tmp_path / "u", clips_dir / "train.jsonl", **{"judge.ground_weight": -1})


def test_ground_loss_is_the_cross_entropy_of_the_pointer_against_the_normalised_mask() -> None:
    """`ground_loss`: per edit -sum_k p_k log softmax(logits)_k with p the mask shares normalised to sum 1 (computed
    here term by term), averaged over the edits whose mask shows; an edit without mask in the shown frames adds
    nothing, and a batch of such edits gives a zero loss that still back-propagates."""
    import math

    from viva_core.train.pretrain.judge import ground_loss

    logits = torch.tensor([[2.0, 0.0, -1.0, 0.5], [0.0, 0.0, 0.0, 0.0], [1.0, 3.0, 0.0, 0.0]], requires_grad=True)
    target = torch.tensor([[1.0, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
    expected = []
    for row, cover in zip(logits.tolist(), target.tolist()):
        if sum(cover) == 0:
            continue
        log_z = math.log(sum(math.exp(x) for x in row))
        expected.append(-sum(c / sum(cover) * (x - log_z) for x, c in zip(row, cover)))
    assert math.isclose(float(ground_loss(logits, target)), sum(expected) / len(expected), rel_tol=1e-6)
    empty = ground_loss(logits, torch.zeros_like(target))
    empty.backward()
    assert float(empty) == 0.0 and logits.grad is not None
