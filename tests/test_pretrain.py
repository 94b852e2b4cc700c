"""`viva pretrain` (small models from scratch) and the bundled small models.

The stage runs are tiny (a few steps on a few clips): they check that every stage writes folders the normal
loaders read and that training sees exactly what inference feeds the models; the learning itself was measured
on a GPU (README, "Small models")."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from viva_core import bundled
from viva_core.errors import InputError, ModelLoadError
from viva_core.train import pretrain as S


@pytest.fixture(scope="module")
def synth_npz(tmp_path_factory) -> Path:
    from viva_core.synth import generate

    out = tmp_path_factory.mktemp("synth")
    generate(out, n=24, seed=5, format="npz", splits=(0.75, 0.25, 0.0))
    return out


# ----------------------------------------------------------------------------------------------- tokenizers


def test_word_tokenizers_have_single_yes_no_and_eos() -> None:
    from viva_core.judge import yes_no_token_ids

    words = S.vocabulary(["Make the red circle blue.", "Answer Yes or No."])
    qwen = S.word_tokenizer(words, kind="qwen")
    yes, no = yes_no_token_ids(qwen)
    assert len(yes) == 1 and len(no) == 1 and yes != no
    umt5 = S.word_tokenizer(words, kind="umt5")
    ids = umt5("make the red circle purple").input_ids
    assert ids[-1] == umt5.eos_token_id and ids[-2] == umt5.unk_token_id  # 'purple' unseen -> <unk>, then </s>
    assert umt5("").input_ids == [umt5.eos_token_id]  # the empty prompt CFG uses is one token


# ------------------------------------------------------------------------------------ train == inference


def test_conditioning_tokens_match_inference_concat_and_padding() -> None:
    from viva_core.editor import Conditioning
    from viva_core.pipeline import pad_tokens

    g = torch.Generator().manual_seed(0)
    text, extra = torch.randn(3, 10, 8, generator=g), torch.randn(3, 7, 8, generator=g)
    tl, el = torch.tensor([4, 10, 1]), torch.tensor([7, 3, 0])
    got = S.conditioning_tokens(text, tl, extra, el, length=24)
    for b in range(3):
        cond = Conditioning(text[b : b + 1, : tl[b]])
        if el[b]:
            cond = cond.concat(Conditioning(extra[b : b + 1, : el[b]]))
        torch.testing.assert_close(got[b : b + 1], pad_tokens(cond.embeds, 24), rtol=0, atol=0)


def test_batched_instructor_hidden_states_equal_single_sample_inference(tmp_path) -> None:
    """Training runs the instructor on left-padded batches; inference on one chat. Same hidden states."""
    from viva_core.instructor import Instructor
    from viva_core.vlm import load_vlm, processor_inputs, to_pil_image

    words = S.vocabulary(S.prompt_texts([{"instruction": "make the red circle blue"}]))
    folder = S.write_vlm_folder(
        tmp_path / "vlm", S.word_tokenizer(words, kind="qwen"), S.VLMSection(hidden=32, heads=4), seed=0
    )
    vlm = load_vlm(folder, dtype="fp32", device="cpu")
    frames = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(1))
    texts = ["make the red circle blue", "blue"]
    chats = [Instructor.messages(t, to_pil_image(frames[i]), None) for i, t in enumerate(texts)]
    with torch.no_grad():
        hidden, lengths = S.instructor_hidden(vlm, processor_inputs(vlm.processor, chats))
    for i, t in enumerate(texts):
        single = Instructor(vlm).hidden_states(t, frames[i])
        assert int(lengths[i]) == single.shape[1]
        torch.testing.assert_close(hidden[i : i + 1, : single.shape[1]], single, rtol=1e-4, atol=1e-4)


def test_grounding_targets_follow_the_processors_token_order(tmp_path) -> None:
    """Token k of the instructor's image covers the k-th merged patch of the processor (row by row); the target is
    the edited share of that region. Checked against the processor itself: a white 16x16 block at the top right
    lands in the pixel rows of exactly the token whose target is 1."""
    from viva_core.instructor import Instructor
    from viva_core.vlm import load_vlm, processor_inputs, to_pil_image

    words = S.vocabulary(S.prompt_texts([{"instruction": "make it blue"}]))
    folder = S.write_vlm_folder(
        tmp_path / "vlm", S.word_tokenizer(words, kind="qwen"), S.VLMSection(hidden=32, heads=4), seed=0
    )
    vlm = load_vlm(folder, dtype="fp32", device="cpu")
    merge = int(vlm.model.config.vision_config.spatial_merge_size)
    mask = torch.zeros(1, 64, 64, dtype=torch.uint8)
    mask[0, :16, 48:] = 1
    mask_half = torch.zeros(1, 64, 64, dtype=torch.uint8)
    mask_half[0, 40:48, :16] = 1  # half of token (2, 0)'s 16x16 region
    image = torch.zeros(64, 64, 3)
    image[:16, 48:] = 1.0
    inputs = processor_inputs(vlm.processor, [Instructor.messages("make it blue", to_pil_image(image), None)])
    grid = inputs["image_grid_thw"][0]
    targets = S.grounding_targets(torch.cat([mask, mask_half]), grid, merge)
    cols = int(grid[2]) // merge
    assert targets.shape == (2, (int(grid[1]) // merge) * cols)
    hot = int(targets[0].argmax())
    assert targets[0, hot] == 1 and targets[0].sum() == 1 and hot == cols - 1  # top-right token
    assert torch.isclose(targets[1, 2 * cols], torch.tensor(0.5)) and torch.isclose(targets[1].sum(), torch.tensor(0.5))
    per_token = inputs["pixel_values"].view(-1, merge * merge, inputs["pixel_values"].shape[-1]).mean((1, 2))
    assert int(per_token.argmax()) == hot  # the processor put the white block's patches in that token


@pytest.mark.parametrize(
    "patch, tokens_per_frame, first, pairs",
    [(8, 16, False, False), (4, 64, False, False), (8, 16, True, False), (8, 16, False, True)],
)
def test_judge_training_forward_equals_the_judge_class(
    synth_npz, tmp_path, patch, tokens_per_frame, first, pairs
) -> None:
    """P(Yes) of the trainer's path (item -> collate -> judge_margins) equals `Judge.score` on the same source,
    candidate and instruction, through a folder with the trainer's viva_judge.json: same frames, difference frames,
    prompts (the instruction also before the frames with `judge.instruction_first`), image order and answer position.
    Without the difference frames, or with the other instruction layout, the scores differ (the check can fail). A
    judge built with `vlm.patch` 4 sees each 64x64 frame as 64 tokens, not 16, both ways; `judge.frame_pairs` shows
    the same tokens with each moment's next frame in the temporal patch, and the Judge reads it from the folder."""
    from viva_core.judge import DIMENSIONS, Judge, yes_no_token_ids
    from viva_core.train.pretrain.judge import _collate_judge, judge_margins
    from viva_core.vlm import load_vlm

    clips = S.load_clip_set(synth_npz / "train.jsonl")
    sec = S.JudgeSection(vlm=S.VLMSection(hidden=32, layers=1, patch=patch), instruction_first=first, frame_pairs=pairs)
    tok = S.word_tokenizer(S.vocabulary(S.prompt_texts(clips.records)), kind="qwen")
    folder = S.write_vlm_folder(tmp_path / "judge", tok, sec.vlm, 0)
    info = {"difference_frames": True, "frames": sec.frames, "instruction_first": first, "frame_pairs": pairs}
    (folder / "viva_judge.json").write_text(json.dumps(info))
    vlm = load_vlm(folder, dtype="fp32", device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # away from the near-constant answers of a fresh model
        for p in vlm.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    data = S._JudgeData(clips, sec, seed=0, size=6)
    yes, no = yes_no_token_ids(vlm.tokenizer)
    with torch.no_grad():
        inputs, _, _, _ = _collate_judge(vlm.processor)([data[i] for i in range(len(data))])
        merged = inputs["image_grid_thw"].prod(-1) // 4  # spatial merge 2 x 2
        assert (merged == tokens_per_frame).all()
        trained = torch.sigmoid(judge_margins(vlm, inputs, yes, no)).view(len(data), len(DIMENSIONS))
    judge, blind = Judge(vlm), Judge(vlm, difference=False)
    assert judge.difference and judge.frame_pairs == pairs
    for i in range(len(data)):
        c, src, cand, _, _ = data.example(i)
        instruction = clips.records[c]["instruction"]
        got = judge.score(src, cand, instruction, num_frames=sec.frames).scores
        torch.testing.assert_close(trained[i], torch.tensor([got[d] for d in DIMENSIONS]), rtol=0, atol=1e-5)
    without = blind.score(src, cand, instruction, num_frames=sec.frames).scores
    assert max(abs(without[d] - got[d]) for d in DIMENSIONS) > 1e-3
    unpaired = Judge(vlm, frame_pairs=not pairs).score(src, cand, instruction, num_frames=sec.frames).scores
    assert max(abs(unpaired[d] - got[d]) for d in DIMENSIONS) > 5e-5  # the clips move: the second frames count
    assert judge.instruction_first == first
    judge.instruction_first = not first
    other = judge.score(src, cand, instruction, num_frames=sec.frames).scores
    assert max(abs(other[d] - got[d]) for d in DIMENSIONS) > 5e-5  # 5x the tolerance of the equality above


# ------------------------------------------------------------------------------------------- judge labels


def test_judge_candidates_get_verifier_labels(synth_npz) -> None:
    from viva_core.eval import score_edit

    clips = S.load_clip_set(synth_npz / "train.jsonl")
    rec = clips.records[0]
    src, tgt = S.frames_float(clips.source[0]), S.frames_float(clips.target[0])
    rng = __import__("numpy").random.default_rng(0)

    def ea(kind: str) -> float:
        cand = S.corrupt(kind, src, tgt, S.frames_float(clips.target[1]), rng)
        return score_edit(src, cand, tgt, clips.mask[0].bool(), rec["verify"], rec["operation"]).ea

    assert ea("target") >= 0.9 and ea("source") <= 0.1
    with pytest.raises(InputError, match="unknown candidate"):
        S.corrupt("nope", src, tgt, tgt, rng)


def test_judge_gt_source_share_draws_that_share_of_truth_and_source(synth_npz) -> None:
    """judge.gt_source_share = s: a share s of items replaced by the truth or the source, half each, on top of the
    uniform 2/7; judge.gt_source_steps n: only those two in the first n steps; bad values refused."""
    clips = S.load_clip_set(synth_npz / "train.jsonl")

    def kinds(share: float) -> list[str]:
        data = S._JudgeData(clips, S.JudgeSection(gt_source_share=share), seed=0, size=700)
        return [data.example(i)[4] for i in range(len(data))]

    plain, half = kinds(0.0), kinds(0.5)
    assert abs(sum(k in ("target", "source") for k in plain) / len(plain) - 2 / 7) < 0.05
    share = sum(k in ("target", "source") for k in half) / len(half)
    assert abs(share - (0.5 + 0.5 * 2 / 7)) < 0.05 and abs(half.count("target") - half.count("source")) < 60
    first = S._JudgeData(clips, S.JudgeSection(gt_source_steps=5), seed=0, size=700, per_step=8)
    assert {first.example(i)[4] for i in range(40)} == {"target", "source"}  # the curriculum's first 5 steps of 8
    assert {first.example(i)[4] for i in range(40, 700)} == set(S.JudgeSection().candidates.split(","))
    with pytest.raises(InputError, match="gt_source_share"):
        S.load_scratch_config(None, ["stage=judge", "data.manifest=x.jsonl", "judge.gt_source_share=1.5"])
    masked = S._JudgeData(clips, S.JudgeSection(ea_unlabelled="other,blend"), seed=0, size=30)
    for i in range(len(masked)):  # EA left out of the loss (-1) for those kinds only, the other answers kept
        kind, (_, labels, _, _) = masked.example(i)[4], masked[i]
        assert (labels[0] == -1.0) == (kind in ("other", "blend"))
        assert labels[1:] == [float(S.CANDIDATE_LABELS[kind][d]) for d in ("PC", "GN", "GR")]
    with pytest.raises(InputError, match="ea_unlabelled"):
        S.load_scratch_config(None, ["stage=judge", "data.manifest=x.jsonl", "judge.ea_unlabelled=other,nope"])
    with pytest.raises(InputError, match="gt_source_steps"):
        S.load_scratch_config(None, ["stage=judge", "data.manifest=x.jsonl", "judge.gt_source_steps=-1"])


def test_judge_labels_fail_exactly_the_targeted_questions(synth_npz) -> None:
    """Each corruption is a "No" on the questions it breaks and a "Yes" elsewhere; every question has negatives
    that keep the other questions at "Yes" (so the judge must read that question); the one verifier-decided cell
    (a shifted edit's EA) agrees with the EA verifier, and the chats carry the item's labels in question order."""
    from viva_core.eval import edit_accuracy
    from viva_core.judge import DIMENSIONS

    table = S.CANDIDATE_LABELS
    assert set(table) == set(S.CANDIDATES) and all(set(row) == set(DIMENSIONS) for row in table.values())
    assert all(table["target"].values())
    assert all(False in row.values() for kind, row in table.items() if kind != "target")
    for d in DIMENSIONS:  # a corruption that fails d (alone or with PC) and passes the other questions
        assert any(
            row[d] is False and all(row[e] is not False for e in DIMENSIONS if e not in (d, "PC"))
            for row in table.values()
        ), d
    clips = S.load_clip_set(synth_npz / "train.jsonl")
    data = S._JudgeData(clips, S.JudgeSection(candidates=",".join(S.CANDIDATES)), seed=0, size=400)
    seen = set()
    for i in range(len(data)):
        c, src, cand, labels, kind = data.example(i)
        expected = dict(table[kind])
        if expected["PC"] is None:  # a wrong edit: PC "Yes" iff nothing changed outside the truth's edit mask
            expected["PC"] = not bool(((cand != src).any(-1) & ~clips.mask[c].bool()).any())
        if expected["EA"] is None:
            rec = clips.records[c]
            ea, _ = edit_accuracy(
                src,
                cand,
                S.frames_float(clips.target[c]),
                clips.mask[c].bool(),
                rec.get("verify"),
                rec.get("operation"),
            )
            expected["EA"] = ea >= 0.5
        assert labels == expected, (kind, labels)
        if kind not in seen:
            chats, answers, prefs, _ = data[i]
            assert prefs == [] and len(chats) == len(DIMENSIONS) and answers == [float(labels[d]) for d in DIMENSIONS]
        seen.add(kind)
        if seen == set(S.CANDIDATES):
            break
    assert seen == set(S.CANDIDATES)


def test_judge_wrong_edit_is_the_same_source_edited_by_another_instruction(synth_npz) -> None:
    """The "wrong" candidate re-renders the clip's own source world (exactly), edits it by another single
    operation, value or object than the truth's, reproducibly from the item's seed; it is not the truth, changes
    as much as a real edit, and the EA verifier of the truth's instruction mostly fails it (it has blind spots:
    an inverted clip "removes" an object's colour). Training draws it only when judge.candidates names it."""
    import numpy as np

    from viva_core.eval import edit_accuracy
    from viva_core.synth import World
    from viva_core.synth.clips import changed_objects
    from viva_core.train.pretrain.judge import wrong_edit

    clips = S.load_clip_set(synth_npz / "train.jsonl")
    eas, same_op = [], 0
    for c in range(len(clips)):
        rec = clips.records[c]
        clip, pc = wrong_edit(clips, c, np.random.default_rng([3, c]))
        again, pc2 = wrong_edit(clips, c, np.random.default_rng([3, c]))
        assert np.array_equal(clip.target, again.target) and pc == pc2 and clip.instruction == again.instruction
        assert np.array_equal(clip.source, clips.source[c].numpy())  # the same source, re-rendered from its world
        assert not np.array_equal(clip.target, clips.target[c].numpy()) and (clip.target != clip.source).any()
        assert clip.instruction != rec["instruction"] and "+" not in clip.operation
        if clip.operation in rec["operation"].split("+"):  # the truth's operation: another value or object
            same_op += 1
            w, tw = (World.from_json(x) for x in clips.worlds[c])
            oid = clip.refs[0]["object"] if clip.refs else None
            assert clip.attribute not in rec["attribute"].split("+") or (
                oid is not None and oid not in changed_objects(w, tw)
            ), (rec["instruction"], clip.instruction)
        src = S.frames_float(clips.source[c])
        ea, _ = edit_accuracy(
            src,
            S.frames_float(torch.from_numpy(clip.target)),
            S.frames_float(clips.target[c]),
            clips.mask[c].bool(),
            rec["verify"],
            rec["operation"],
        )
        eas.append(ea)
    assert same_op >= 3 and np.mean(np.array(eas) < 0.5) >= 0.75, (same_op, eas)
    plain = S._JudgeData(clips, S.JudgeSection(), seed=0, size=300)
    assert "wrong" not in {plain.example(i)[4] for i in range(300)}
    with pytest.raises(InputError, match="judge.candidates"):
        S.load_scratch_config(None, ["stage=judge", "data.manifest=x.jsonl", "judge.candidates=target,nope"])


def test_candidate_aucs_count_the_wrong_edit_among_eas_negatives(synth_npz, tmp_path) -> None:
    """judge_check.py's held-out set shows every clip's wrong edit with the clip's instruction as an EA "No", and
    reports EA ground truth vs wrong edit apart."""
    from viva_core.vlm import load_vlm

    clips = S.load_clip_set(synth_npz / "train.jsonl", 2)
    sec = S.JudgeSection(vlm=S.VLMSection(hidden=32, layers=1))
    held = S.CandidateSet(clips, sec)
    kinds = [held.example(i)[4] for i in range(len(held))]
    assert kinds == list(S.CANDIDATES) * 2 and all(held.example(i)[3]["EA"] is False for i in (7, 15))
    tok = S.word_tokenizer(S.vocabulary(S.prompt_texts(clips.records)), kind="qwen")
    vlm = load_vlm(S.write_vlm_folder(tmp_path / "judge", tok, sec.vlm, 0), dtype="fp32", device="cpu")
    vlm.model.eval()
    aucs, p_ea = S.candidate_aucs(vlm, held)
    assert set(aucs) == {"EA", "PC", "GN", "GR", "EA_gt_src", "EA_gt_wrong"} and list(p_ea) == list(S.CANDIDATES)


# --------------------------------------------------------------------------------------------- the stages


def _cfg(stage: str, out: Path, manifest: Path, **sets) -> S.ScratchConfig:
    overrides = [
        f"stage={stage}",
        f"output_dir={out}",
        f"data.manifest={manifest}",
        "optim.steps=2",
        "optim.batch_size=2",
        "optim.workers=0",
        "optim.warmup_steps=1",
        "device=cpu",
        "data.limit=4",  # 4 of the 18 clips: the VAE statistics, PSNR and latent caches encode every clip
        *(f"{k}={v}" for k, v in sets.items()),
    ]
    return S.load_scratch_config(None, overrides)


def test_stages_write_models_the_normal_loaders_use(synth_npz, tmp_path) -> None:
    from viva_core.conditioning import build_conditioning
    from viva_core.editor import EditorOptions, load_editor
    from viva_core.judge import Judge
    from viva_core.pipeline import EditSettings, edit
    from viva_core.vlm import load_vlm

    manifest = synth_npz / "train.jsonl"
    vae = S.run_stage(_cfg("vae", tmp_path / "vae", manifest, **{"vae.base_dim": 8, "vae.frames": 5}))
    mean = json.loads((vae / "config.json").read_text())["latents_mean"]
    assert len(mean) == 16 and any(m != 0 for m in mean)  # measured latent statistics were written
    editor_dir = S.run_stage(
        _cfg(
            "editor",
            tmp_path / "ed",
            manifest,
            **{
                "editor.vae": vae,
                "editor.layers": 1,
                "editor.heads": 2,
                "editor.head_dim": 16,
                "editor.ffn_dim": 32,
                "editor.text_dim": 32,
                "editor.text_ff": 32,
                "editor.vlm.hidden": 32,
                "editor.refiner_hidden": 32,
                "editor.max_text_tokens": 160,
                "editor.grounding_weight": 1.0,
            },
        )
    )
    assert (tmp_path / "ed" / "metrics.jsonl").is_file() and (tmp_path / "ed" / "curves.png").is_file()
    logged = json.loads((tmp_path / "ed" / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0 < logged["loss_grounding"] < 5  # the instructor's grounding loss ran (BCE of a fresh probe ~0.7)
    editor = load_editor(str(editor_dir), options=EditorOptions(dtype="fp32", device="cpu"))
    assert editor.max_text_tokens == 160 and editor.native_size == (64, 64)
    vlm = load_vlm(tmp_path / "ed" / "instructor", dtype="fp32", device="cpu")
    frames = torch.rand(9, 48, 80, 3)  # 80x48: fit into the editor's 64x64 (aspect kept), edited, scaled back
    cond, _ = build_conditioning(
        editor,
        "make the red circle blue",
        frames[0],
        mode="instructor",
        vlm=vlm,
        refiner_path=str(tmp_path / "ed" / "refiner.safetensors"),
    )
    out = edit(editor, frames, cond, settings=EditSettings(steps=2, cfg=2.0)).frames
    assert out.shape == (9, 48, 80, 3) and torch.isfinite(out).all()

    judge_dir = S.run_stage(_cfg("judge", tmp_path / "judge", manifest, **{"judge.vlm.hidden": 32}))
    judge = Judge(load_vlm(judge_dir, dtype="fp32", device="cpu"))
    assert judge.difference and not judge.generates_text  # its folder says: difference frames, Yes/No only
    verdict = judge.score(frames, out, "make it blue")
    assert all(0 <= v <= 1 for v in verdict.scores.values())


def _safetensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


def test_editor_and_judge_continue_from_the_bundled_folders(synth_npz, tmp_path) -> None:
    """editor.init / judge.init start from a folder's weights (lr 0 writes them back unchanged, bf16 exact) and
    train from there; the continued judge does not inherit the old held-out scores."""
    manifest = synth_npz / "train.jsonl"
    still = {"optim.steps": 1, "optim.lr": 0.0, "editor.instructor": "false"}
    ed = S.run_stage(_cfg("editor", tmp_path / "ed0", manifest, **{"editor.init": bundled.EDITOR, **still}))
    for part in ("transformer", "text_encoder"):
        before, after = _safetensors(bundled.EDITOR / part), _safetensors(ed / part)
        assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    for same in ("tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json", "transformer/config.json"):
        assert (ed / same).read_bytes() == (bundled.EDITOR / same).read_bytes(), same  # no loaded-copy leftovers
    balanced = {"editor.init": bundled.EDITOR, "editor.instructor": "false", "data.balance": 1.0}
    moved = S.run_stage(_cfg("editor", tmp_path / "ed1", manifest, **balanced))  # data.balance draws by weight
    before, after = _safetensors(bundled.EDITOR / "transformer"), _safetensors(moved / "transformer")
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it trained

    paired = {"judge.init": bundled.JUDGE, "optim.lr": 0.0, "judge.frame_pairs": True}  # a single-frame judge goes on
    judge = S.run_stage(_cfg("judge", tmp_path / "j0", manifest, **paired))  # with frame pairs
    before, after = _safetensors(bundled.JUDGE), _safetensors(judge)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    info = json.loads((judge / "viva_judge.json").read_text())
    assert info["difference_frames"] and info["frame_pairs"] and "held_out_roc_auc" not in info
    finer = S.run_stage(  # judge.vlm.patch 4 continues it with the patch embedding resampled, 64 tokens a frame
        _cfg("judge", tmp_path / "j1", manifest, **{"judge.init": bundled.JUDGE, "optim.lr": 0.0, "judge.vlm.patch": 4})
    )
    key = "visual.patch_embed.proj.weight"
    w = before[key].float()
    assert _safetensors(finer)[key].equal(w.view(*w.shape[:3], 4, 2, 4, 2).sum((4, 6)).bfloat16())
    assert json.loads((finer / "preprocessor_config.json").read_text())["patch_size"] == 4


def test_a_text_only_editor_gains_the_judge_as_a_frozen_instructor(synth_npz, tmp_path) -> None:
    """editor.init (text-only) with editor.instructor_init = a judge and instructor_frozen: the judge's VLM (its own
    files left behind) conditions the editor through a refiner whose output layer starts at zero, so before any
    update the editor in instructor mode edits exactly as the text-only one does (its tokens are the padding); after
    updates the refiner and the DiT have moved and the instructor is still the judge, weight for weight."""
    from viva_core.conditioning import build_conditioning
    from viva_core.editor import EditorOptions, load_editor
    from viva_core.instructor import load_refiner
    from viva_core.pipeline import EditSettings, edit
    from viva_core.vlm import load_vlm

    manifest = synth_npz / "train.jsonl"
    sets = {
        "editor.init": bundled.EDITOR,
        "editor.instructor_init": bundled.JUDGE,
        "editor.instructor_frozen": True,
        "optim.steps": 1,
        "optim.lr": 0.0,
    }
    ed = S.run_stage(_cfg("editor", tmp_path / "ed0", manifest, **sets))
    instructor = tmp_path / "ed0" / "instructor"
    assert not (instructor / "viva_judge.json").exists()
    judge_weights, kept = _safetensors(bundled.JUDGE), _safetensors(instructor)
    assert judge_weights.keys() == kept.keys() and all(torch.equal(judge_weights[k], kept[k]) for k in kept)
    refiner = load_refiner(str(tmp_path / "ed0" / "refiner.safetensors"))
    assert not refiner.proj_out.weight.any() and not refiner.proj_out.bias.any()
    assert json.loads((ed / "viva_editor.json").read_text())["instructor"] is True

    options = EditorOptions(dtype="fp32", device="cpu")
    frames = torch.rand(5, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    text_only = load_editor(str(bundled.EDITOR), options=options)
    plain, _ = build_conditioning(text_only, "make the red circle blue", frames[0])
    continued = load_editor(str(ed), options=options)
    vlm = load_vlm(instructor, dtype="fp32", device="cpu")
    refiner_path = str(tmp_path / "ed0" / "refiner.safetensors")
    cond, _ = build_conditioning(
        continued, "make the red circle blue", frames[0], mode="instructor", vlm=vlm, refiner_path=refiner_path
    )
    settings = EditSettings(steps=2, cfg=1.0, seed=0)
    a, b = edit(text_only, frames, plain, settings=settings).frames, edit(continued, frames, cond, settings=settings)
    assert torch.equal(a, b.frames)

    trained = S.run_stage(_cfg("editor", tmp_path / "ed1", manifest, **{**sets, "optim.lr": 1e-3, "optim.steps": 2}))
    kept = _safetensors(tmp_path / "ed1" / "instructor")
    assert all(torch.equal(judge_weights[k], kept[k]) for k in kept)  # frozen
    assert load_refiner(str(tmp_path / "ed1" / "refiner.safetensors")).proj_out.weight.any()
    before, after = _safetensors(bundled.EDITOR / "transformer"), _safetensors(trained / "transformer")
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_a_grown_editor_starts_at_the_old_edits_and_trains_its_new_blocks(synth_npz, tmp_path) -> None:
    """editor.grow_layers appends blocks whose residual outputs start at zero: at lr 0 the grown editor edits exactly
    as the editor it grew from, and the bundled LoRA (trained on the old DiT) still applies to every module it names;
    trained, the new blocks move."""
    from viva_core.conditioning import build_conditioning
    from viva_core.editor import EditorOptions, load_editor
    from viva_core.pipeline import EditSettings, edit

    manifest = synth_npz / "train.jsonl"
    sets = {"editor.init": bundled.EDITOR, "editor.instructor": "false", "editor.grow_layers": 2, "optim.steps": 1}
    ed = S.run_stage(_cfg("editor", tmp_path / "g0", manifest, **{**sets, "optim.lr": 0.0}))
    layers = json.loads((bundled.EDITOR / "transformer" / "config.json").read_text())["num_layers"]
    assert json.loads((ed / "transformer" / "config.json").read_text())["num_layers"] == layers + 2
    new = _safetensors(ed / "transformer")
    assert (
        not new[f"blocks.{layers}.ffn.net.2.weight"].any() and not new[f"blocks.{layers + 1}.attn1.to_out.0.bias"].any()
    )
    assert new[f"blocks.{layers}.attn1.to_q.weight"].equal(new[f"blocks.{layers - 1}.attn1.to_q.weight"])

    options = EditorOptions(dtype="fp32", device="cpu")
    frames = torch.rand(5, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    settings = EditSettings(steps=2, cfg=3.0, seed=0)
    edits = []
    for folder in (bundled.EDITOR, ed):
        editor = load_editor(str(folder), options=options)
        cond, _ = build_conditioning(editor, "make the red circle blue", frames[0])
        edits.append(edit(editor, frames, cond, settings=settings).frames)
        with editor.with_lora(str(bundled.EDITOR_LORA), 1.0).dit_with_loras() as (_, reports):
            assert not reports[0].unmatched and not reports[0].shape_mismatch and reports[0].matched
    assert torch.equal(edits[0], edits[1])

    trained = S.run_stage(_cfg("editor", tmp_path / "g1", manifest, **{**sets, "optim.lr": 1e-3, "optim.steps": 2}))
    moved = _safetensors(trained / "transformer")
    assert (
        moved[f"blocks.{layers}.ffn.net.2.weight"].any() and moved[f"blocks.{layers + 1}.attn2.to_out.0.weight"].any()
    )


def test_growing_an_editor_needs_one_to_grow(tmp_path) -> None:
    with pytest.raises(InputError, match="editor.grow_layers grows a trained DiT"):
        _cfg("editor", tmp_path / "g", tmp_path / "train.jsonl", **{"editor.grow_layers": 2})
    with pytest.raises(InputError, match="editor.grow_layers must be >= 0"):
        _cfg(
            "editor",
            tmp_path / "g",
            tmp_path / "train.jsonl",
            **{"editor.init": bundled.EDITOR, "editor.grow_layers": -1},
        )


def test_a_frozen_instructors_tokens_computed_once_are_each_clips_own(synth_npz) -> None:
    """`frozen_instructor_tokens` (chunks of clips) gives each clip what `instructor_hidden` gives its chat alone."""
    from viva_core.train.pretrain.editor import frozen_instructor_tokens, instructor_rows, prepare_instructor_inputs
    from viva_core.vlm import load_vlm

    clips = S.load_clip_set(synth_npz / "train.jsonl", 5)
    vlm = load_vlm(bundled.JUDGE, dtype="fp32", device="cpu")
    chats = prepare_instructor_inputs(clips, vlm.processor)
    hidden, lengths = frozen_instructor_tokens(vlm, chats, chunk=2)
    assert hidden.shape[0] == lengths.shape[0] == 5
    for i in range(5):
        alone, n = S.instructor_hidden(vlm, instructor_rows(chats, torch.tensor([i])))
        assert int(n[0]) == int(lengths[i])
        torch.testing.assert_close(hidden[i, : int(n[0])], alone[0, : int(n[0])], rtol=1e-4, atol=1e-5)
        assert not hidden[i, int(n[0]) :].any()  # zeros after the real tokens


def test_a_finer_vision_patch_continues_the_same_model(tmp_path) -> None:
    """`resample_vision_patch` 8 -> 4: the rewritten vision tower on a 64x64 frame equals the old one on that frame
    upsampled 2x (nearest), against the old model run directly; a patch that does not divide the old one is refused."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from viva_core.compat import qwen2_vl_pil_image_processor

    old = S.write_vlm_folder(tmp_path / "old", S.word_tokenizer(["a"], kind="qwen"), S.VLMSection(hidden=32), 0)
    new = tmp_path / "new"
    shutil.copytree(old, new)
    S.resample_vision_patch(new, 4)
    processor = qwen2_vl_pil_image_processor()
    frame = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    big = processor(min_pixels=128 * 128, max_pixels=128 * 128, patch_size=8, merge_size=2, temporal_patch_size=2)
    seen = {
        old: big(images=[frame.repeat(2, 0).repeat(2, 1)], return_tensors="pt"),
        new: processor.from_pretrained(new)(images=[frame], return_tensors="pt"),
    }
    tokens = {}
    for folder, px in seen.items():
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(folder).eval()
        with torch.no_grad():
            out = model.model.visual(px["pixel_values"], grid_thw=px["image_grid_thw"])
        tokens[folder] = getattr(out, "pooler_output", out)
    assert tokens[new].shape[0] == 64  # 64 merged tokens per 64x64 frame, not 16
    torch.testing.assert_close(tokens[new], tokens[old], rtol=0, atol=1e-5)
    with pytest.raises(InputError, match="judge.vlm.patch = 1, 2, 4"):
        S.resample_vision_patch(new, 3)
    from safetensors.torch import save_file

    (new / "model.safetensors").unlink()
    save_file({"other": torch.zeros(1)}, str(new / "model.safetensors"))
    with pytest.raises(InputError, match="no safetensors file holds visual.patch_embed.proj.weight"):
        S.resample_vision_patch(new, 2)


def test_operation_weights_even_out_the_operations() -> None:
    """Against a hand computation: 6 clips of A, 2 of B, 2 of A+B -> A in 8 clips, B in 4; a clip weighs the mean of
    1/count over its operations. With power 1 each operation's share of draws comes out equal-ish; 0 is uniform."""
    records = [{"operation": "A"}] * 6 + [{"operation": "B"}] * 2 + [{"operation": "A+B"}] * 2
    w = S.operation_weights(records, 1.0)
    raw = [1 / 8] * 6 + [1 / 4] * 2 + [(1 / 8 + 1 / 4) / 2] * 2
    assert torch.allclose(w, torch.tensor(raw, dtype=torch.float64) / sum(raw))
    share = {o: float(sum(w[i] for i, r in enumerate(records) if o in r["operation"].split("+"))) for o in "AB"}
    assert abs(share["A"] - share["B"]) < 0.2 and share["B"] > 4 / 10  # B: 4 clips of 10, drawn more than that
    assert torch.allclose(S.operation_weights(records, 0.0), torch.full((10,), 0.1, dtype=torch.float64))
    half = S.operation_weights(records, 0.5)
    assert torch.allclose(half, torch.tensor(raw, dtype=torch.float64).sqrt() / sum(x**0.5 for x in raw))
    draws = torch.multinomial(w.float(), 20000, replacement=True, generator=torch.Generator().manual_seed(0))
    assert abs(float((draws >= 6).float().mean()) - float(w[6:].sum())) < 0.02  # the trainer's draw follows w
    with pytest.raises(InputError, match="data.balance"):
        S.load_scratch_config(None, ["stage=editor", "data.manifest=x.jsonl", "editor.vae=v", "data.balance=2"])


def test_continuing_refuses_folders_that_do_not_fit(synth_npz, tmp_path) -> None:
    manifest = synth_npz / "train.jsonl"
    with pytest.raises(InputError, match="set editor.instructor=true"):
        _cfg(
            "editor", tmp_path / "a", manifest, **{"editor.instructor": False, "editor.instructor_init": bundled.JUDGE}
        )
    with pytest.raises(InputError, match="set editor.instructor_init to one"):
        _cfg("editor", tmp_path / "a", manifest, **{"editor.vae": "v", "editor.instructor_frozen": True})
    with pytest.raises(InputError, match="not a VLM folder"):
        S.run_stage(
            _cfg(
                "editor",
                tmp_path / "a",
                manifest,
                **{"editor.init": bundled.EDITOR, "editor.instructor_init": tmp_path},
            )
        )
    with pytest.raises(InputError, match="use another output_dir"):
        _cfg("judge", tmp_path, manifest, **{"judge.init": tmp_path / "judge"})
    other_vae = tmp_path / "vae"
    S.new_vae(S.VaeSection(base_dim=8, spatial=4)).save_pretrained(other_vae)
    text_only = {"editor.init": bundled.EDITOR, "editor.instructor": "false"}
    with pytest.raises(InputError, match="another VAE than editor.vae"):
        S.run_stage(_cfg("editor", tmp_path / "b", manifest, **text_only, **{"editor.vae": other_vae}))
    with pytest.raises(InputError, match="not a VAE folder"):
        S.run_stage(_cfg("editor", tmp_path / "v", manifest, **text_only, **{"editor.vae": tmp_path / "nowhere"}))
    with pytest.raises(InputError, match="max_text_tokens"):
        S.run_stage(_cfg("editor", tmp_path / "c", manifest, **text_only, **{"editor.max_text_tokens": 64}))
    with pytest.raises(InputError, match="judge.frames"):
        S.run_stage(_cfg("judge", tmp_path / "d", manifest, **{"judge.init": bundled.JUDGE, "judge.frames": 2}))
    new_words = tmp_path / "m.jsonl"
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    rows[0]["instruction"] = "Make the zyzzyva purple."
    for r in rows:  # npz paths are relative to the manifest: keep pointing at the fixture's
        r["npz"] = str(synth_npz / r["npz"])
    new_words.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(InputError, match="zyzzyva"):
        S.run_stage(_cfg("judge", tmp_path / "e", new_words, **{"judge.init": bundled.JUDGE}))


def test_vae_edge_weights_follow_the_outlines() -> None:
    """Against a hand computation on one 1x4 frame (black, black, white, white): the step between pixels 1 and 2 is
    2 (x in -1..1), halved to g = 1 at pixel 1 only; weight 1 + 3 g there, 1 elsewhere; 0 turns weighting off."""
    from viva_core.train.pretrain.vae import edge_weights

    x = torch.tensor([-1.0, -1.0, 1.0, 1.0]).view(1, 1, 1, 1, 4).expand(1, 3, 1, 1, 4)
    assert edge_weights(x, 3.0).flatten().tolist() == [1.0, 4.0, 1.0, 1.0]
    assert edge_weights(x.transpose(-1, -2), 3.0).flatten().tolist() == [1.0, 4.0, 1.0, 1.0]  # vertical steps alike
    assert edge_weights(x, 0.0) == 1.0


def test_vae_decoder_only_keeps_the_encoder_and_its_latent_statistics(synth_npz, tmp_path) -> None:
    """vae.decoder_only: the encoder (so every latent an editor was trained on) and latents_mean/std come back
    bit-identical; the decoder trains."""
    manifest = synth_npz / "train.jsonl"
    tiny = {"vae.base_dim": 8, "vae.frames": 5, "vae.spatial": 4}
    base = S.run_stage(_cfg("vae", tmp_path / "v0", manifest, **tiny))
    tuned = S.run_stage(
        _cfg(
            "vae",
            tmp_path / "v1",
            manifest,
            **tiny,
            **{"vae.init": base, "vae.decoder_only": "true", "vae.edge_weight": 4.0, "optim.lr": 1e-2},
        )
    )
    before, after = _safetensors(base), _safetensors(tuned)
    frozen = [k for k in before if k.startswith(("encoder.", "quant_conv."))]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
    config = [json.loads((f / "config.json").read_text()) for f in (base, tuned)]
    assert [c["latents_mean"] for c in config] == [config[0]["latents_mean"]] * 2
    assert [c["latents_std"] for c in config] == [config[0]["latents_std"]] * 2
    with pytest.raises(InputError, match="vae.init"):
        _cfg("vae", tmp_path / "v2", manifest, **{"vae.decoder_only": "true"})

    # a wider decoder on the same frozen encoder: fresh decoder weights of the new width, encoder bit-identical, and
    # the folder loads and decodes the encoder's latents to frames of the same size
    from diffusers import AutoencoderKLWan

    wide = S.run_stage(
        _cfg(
            "vae",
            tmp_path / "v3",
            manifest,
            **tiny,
            **{"vae.init": base, "vae.decoder_only": "true", "vae.decoder_base_dim": 12},
        )
    )
    after = _safetensors(wide)
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert json.loads((wide / "config.json").read_text())["decoder_base_dim"] == 12
    assert after["decoder.conv_in.weight"].shape[1] == before["decoder.conv_in.weight"].shape[1]  # z in, as before
    assert after["decoder.conv_in.weight"].shape[0] > before["decoder.conv_in.weight"].shape[0]  # wider inside
    vae = AutoencoderKLWan.from_pretrained(wide)
    x = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    assert vae.decode(vae.encode(x).latent_dist.mode()).sample.shape == x.shape
    with pytest.raises(InputError, match="decoder_only"):
        _cfg("vae", tmp_path / "v4", manifest, **{"vae.init": base, "vae.decoder_base_dim": 12})


def test_pretrain_refuses_mp4_manifests_and_bad_configs(tmp_path) -> None:
    (tmp_path / "m.jsonl").write_text(json.dumps({"source_video": "a.mp4", "instruction": "x"}) + "\n")
    with pytest.raises(InputError, match="--format npz"):
        S.load_clip_set(tmp_path / "m.jsonl")
    with pytest.raises(InputError, match="editor.vae"):
        S.load_scratch_config(None, ["stage=editor", "data.manifest=x.jsonl"])
    with pytest.raises(InputError, match="1 \\+ 4k"):
        S.train_vae(_cfg("vae", tmp_path / "v", _write_npz_manifest(tmp_path), **{"vae.frames": 4}))


def _write_npz_manifest(tmp_path: Path) -> Path:
    from viva_core.synth import generate

    return generate(tmp_path / "d", n=2, seed=0, format="npz", splits=(1.0, 0.0, 0.0))["train"]


def test_editor_info_file_errors_name_the_file(tmp_path) -> None:
    from tiny_editor import build_editor_folder

    from viva_core.editor import EDITOR_INFO_FILE, load_editor

    folder = build_editor_folder(tmp_path / "ed")
    (Path(folder) / EDITOR_INFO_FILE).write_text("{not json")
    with pytest.raises(ModelLoadError, match=EDITOR_INFO_FILE):
        load_editor(str(folder))


# ----------------------------------------------------------------------------------------- bundled models

EA_BAR = 0.5  # measured 0.94 for the bundled example (README); an untrained editor scores ~0


@pytest.mark.slow  # ~40 s of CPU alone, minutes on a shared one: 20 steps of the 20 M DiT on the full example clip
def test_bundled_models_edit_the_bundled_example_above_the_bar() -> None:
    from viva_core.conditioning import build_conditioning, negative_conditioning
    from viva_core.editor import EditorOptions, load_editor
    from viva_core.eval import score_edit
    from viva_core.pipeline import EditSettings, edit
    from viva_core.video import read_video

    rec = json.loads((bundled.EXAMPLE.parent / "shapes.jsonl").read_text())
    read = lambda name: read_video(bundled.EXAMPLE.parent / rec[name]).frames  # noqa: E731
    source, target, mask = read("source_video"), read("target_video"), read("mask_video").mean(-1) > 0.5
    editor = load_editor(bundled.path(bundled.EDITOR), options=EditorOptions(dtype="fp32", device="cpu"))
    cond, _ = build_conditioning(editor, rec["instruction"], source[0], mode="text")
    out = edit(editor, source, cond, negative=negative_conditioning(editor, ""), settings=EditSettings(steps=20)).frames
    score = score_edit(source, out, target, mask, rec["verify"], rec["operation"])
    unedited = score_edit(source, source, target, mask, rec["verify"], rec["operation"])
    assert score.ea >= EA_BAR > unedited.ea
    # Every frame is edited, the first ones too (issue 14: editor v1's frame 0 was 8.7 dB against 15 for frames 3+;
    # editor v4: 24.4 against 21.5-23.8).
    psnr = 10 * torch.log10(1 / ((out - target) ** 2).mean((1, 2, 3)))
    assert psnr[:3].min() >= psnr[3:].mean() - 2.0, psnr


def test_bundled_models_fit_the_size_budget() -> None:
    # 48.2 MB today: the 20 M-parameter DiT in bf16 is 40.7 MB of it, its Edit-GRPO LoRA 1.6 MB. The wheel and the
    # repository carry these files, so a bigger bundled model has to earn its size in the README's ablation table.
    total = sum(p.stat().st_size for p in bundled.ROOT.rglob("*.safetensors"))
    assert total <= 49e6
    assert not [p for p in bundled.ROOT.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]


def test_cli_edit_without_editor_uses_bundled_models(tmp_path, capsys) -> None:
    from viva_core.cli import main

    out = tmp_path / "edited.mp4"
    assert (
        main(
            [
                "edit",
                "example",
                "Invert the colours.",
                "-o",
                str(out),
                "--steps",
                "4",
                "--device",
                "cpu",
                "--max-frames",
                "5",
            ]
        )
        == 0
    )  # 5 of the example's 17 frames: the VAE is most of the time
    printed = capsys.readouterr()
    assert out.is_file() and "bundled small models and its Edit-GRPO LoRA" in printed.err
    assert "cfg 1: the guidance the LoRA's Edit-GRPO rollouts ran at" in printed.out  # its rollout_cfg


def test_the_bundled_lora_is_an_unguided_edit_grpo_lora_of_the_bundled_editor() -> None:
    """What `viva edit` adds to the bundled editor: every key a module of its DiT, trained on CFG-1 rollouts."""
    from viva_core.editor import EditorOptions, load_editor
    from viva_core.lora import check_lora_fits, trained_cfg

    editor = load_editor(bundled.path(bundled.EDITOR), options=EditorOptions(dtype="fp32", device="cpu"))
    report = check_lora_fits(bundled.EDITOR_LORA, editor.transformer)
    assert report.matched and not report.unmatched, report.summary()
    assert trained_cfg(bundled.EDITOR_LORA) == 1.0


def test_editor_loss_weights_are_the_clip_masks_at_latent_size(tmp_path) -> None:
    """npz clips store the mask as 0/1: the loss weights must reach 1 where an object was edited and 0 elsewhere
    (they were once divided by 255, which silently turned VIVA's mask loss into plain flow matching)."""
    from viva_core.synth import generate

    manifest = generate(tmp_path, n=3, seed=2, format="npz", splits=(1, 0, 0), categories=("basic",))["train"]
    clips = S.load_clip_set(manifest)
    weights = S.latent_masks(clips.mask, (5, 8, 8), 4)
    assert weights.shape == (3, 1, 5, 8, 8)
    for w, m in zip(weights, clips.mask):
        assert float(w.max()) == 1.0 and set(w.unique().tolist()) <= {0.0, 1.0}
        # latent cell (t', i, j) is edited iff a pixel of its 8x8 block in its frames is: frame 0 -> latent 0
        assert bool(w[0, 0].bool().any()) == bool(m[0].bool().any())
        block = m[0].reshape(8, 8, 8, 8).amax(dim=(1, 3)).bool()
        assert torch.equal(w[0, 0].bool(), block)


def test_eval_ceiling_scores_the_vae_round_trip_of_the_ground_truth(tmp_path) -> None:
    """`viva eval --ceiling`: outputs are VAE(ground truth), so they are near the target and far from the source."""
    from viva_core.cli import main
    from viva_core.data import load_manifest, read_frames
    from viva_core.editor import EditorOptions, load_editor
    from viva_core.eval import psnr
    from viva_core.pipeline import reconstruct
    from viva_core.synth import generate

    manifest = generate(tmp_path / "d", n=2, seed=3, frames=5, format="npz", splits=(1, 0, 0), categories=("basic",))[
        "train"
    ]  # 5 frames, not 17: the VAE round trips are the time
    editor = load_editor(bundled.path(bundled.EDITOR), options=EditorOptions(dtype="fp32", device="cpu"))
    for record in load_manifest(manifest):
        source = read_frames(record.source_video, None, "source_video")[0]
        target = read_frames(record.target_video, None, "target_video")[0]
        out = reconstruct(editor, target)
        assert out.shape == target.shape
        assert psnr(out, target) > 20 and psnr(out, target) > psnr(out, source) + 3
    report = tmp_path / "r"
    assert (
        main(
            [
                "eval",
                str(manifest),
                "--editor",
                bundled.path(bundled.EDITOR),
                "--ceiling",
                "--report",
                str(report),
                "--no-outputs",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert len(json.loads((report / "report.json").read_text())["scores"]) == 2
    assert main(["eval", str(manifest), "--ceiling", "--report", str(tmp_path / "x")]) == 2  # needs --editor


def test_vae_levels_give_the_stated_latent_grid() -> None:
    """vae.spatial=4 keeps a 16x16 latent grid at 64x64 (8x: 8x8), 4x in time either way, and says so in its config
    (the editor reads scale_factor_spatial to snap sizes)."""
    x = torch.rand(1, 3, 9, 64, 64) * 2 - 1
    for spatial, side in ((8, 8), (4, 16)):
        vae = S.new_vae(S.VaeSection(base_dim=8, spatial=spatial))
        assert vae.config.scale_factor_spatial == spatial
        with torch.no_grad():
            assert vae.encode(x).latent_dist.mode().shape == (1, 16, 3, side, side)
    with pytest.raises(InputError, match="vae.spatial"):
        S.load_scratch_config(None, ["data.manifest=x.jsonl", "vae.spatial=2"])


def test_unknown_words_of_the_bundled_text_encoder_are_named(caplog) -> None:
    """The README's headline instruction is outside the bundled vocabulary: say which words become <unk>."""
    from viva_core.editor import EditorOptions, load_editor, unknown_words

    editor = load_editor(bundled.path(bundled.EDITOR), options=EditorOptions(dtype="fp32", device="cpu"))
    assert unknown_words(editor.tokenizer, "Replace the dog with a fox.") == ["dog", "fox"]
    assert unknown_words(editor.tokenizer, "Invert the colours.") == []
    with caplog.at_level("WARNING"):
        editor.encode_text("replace the dog with a fox")
    assert "'dog', 'fox'" in caplog.text and "<unk>" in caplog.text
