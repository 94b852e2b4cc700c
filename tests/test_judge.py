"""Self-reflection judge: P(Yes) pinned to an independent forward, sampling, result format, gradients."""

from __future__ import annotations

import copy
import json
import math
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from tiny_vlm import build_tiny_vlm

import viva_core.judge as judge_mod
import viva_core.vlm as vlm_mod
from viva_core.errors import InputError, ModelLoadError
from viva_core.judge import DIMENSIONS, QUESTIONS, Judge, JudgeResult, yes_no_token_ids, yes_probability
from viva_core.vlm import VLM, build_inputs, load_vlm, processor_inputs, to_pil_image


@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    return load_vlm(build_tiny_vlm(tmp_path_factory.mktemp("judge") / "vlm"), dtype="fp32", device="cpu")


@pytest.fixture(scope="module")
def judge(vlm):
    return Judge(vlm)


@pytest.fixture(scope="module")
def videos():
    g = torch.Generator().manual_seed(1)
    return torch.rand(5, 48, 64, 3, generator=g), torch.rand(5, 48, 64, 3, generator=g)


def test_questions_quote_the_instruction_where_they_judge_it():
    """EA and PC judge the edit against the instruction, so their questions quote it; GN and GR judge the edited video
    alone. Every question is filled in (no template field left) and asks for the Yes/No that yes_probability reads."""
    questions = {d: Judge.question_text(d, "turn the car blue") for d in DIMENSIONS}
    assert len(set(questions.values())) == len(DIMENSIONS) == 4
    for d, q in questions.items():
        assert q.endswith(" Answer Yes or No.") and "{" not in q
        assert ("'turn the car blue'" in q) == (d in ("EA", "PC")), d


def test_yes_no_ids_are_the_single_token_variants(vlm):
    tok = vlm.tokenizer
    yes, no = yes_no_token_ids(tok)
    # The tiny tokenizer is byte-level BPE: " Yes" is the token "ĠYes".
    assert yes == tok.convert_tokens_to_ids(["Yes", "ĠYes", "yes"])
    assert no == tok.convert_tokens_to_ids(["No", "ĠNo", "no"])


def test_p_yes_equals_independent_softmax(vlm, judge, videos):
    source, edited = videos
    instruction = "make the sky red"
    result = judge.score(source, edited, instruction, num_frames=2)

    # Independent computation: the same prompt, a plain full forward, softmax over the Yes/No ids.
    tok = vlm.tokenizer
    yes_ids = [tok.convert_tokens_to_ids(t) for t in ("Yes", "ĠYes", "yes")]
    no_ids = [tok.convert_tokens_to_ids(t) for t in ("No", "ĠNo", "no")]
    src_imgs = [to_pil_image(source[i], max_side=448) for i in (0, 4)]
    edit_imgs = [to_pil_image(edited[i], max_side=448) for i in (0, 4)]
    for code in DIMENSIONS:
        question = QUESTIONS[DIMENSIONS.index(code)].question.format(instruction=instruction) + " Answer Yes or No."
        inputs = build_inputs(vlm, Judge.messages(src_imgs, edit_imgs, question))
        text = tok.decode(inputs["input_ids"][0])
        assert text.endswith(f"{question}<|im_end|>\n<|im_start|>assistant\n")
        assert text.count("<|vision_start|>") == 4
        with torch.no_grad():
            logits = vlm.model(**inputs).logits[0, -1]
        probs = torch.softmax(logits[yes_ids + no_ids].double(), dim=0)
        expected = float(probs[: len(yes_ids)].sum())
        assert result.scores[code] == pytest.approx(expected, abs=1e-5)


def test_batched_and_sequential_questions_agree(vlm, judge, videos):
    a = judge.score(*videos, "turn the car blue", num_frames=2)
    b = Judge(vlm, batch_questions=False).score(*videos, "turn the car blue", num_frames=2)
    for d in DIMENSIONS:
        assert a.scores[d] == pytest.approx(b.scores[d], abs=1e-5)


@pytest.mark.parametrize("host_positions", [True, False])
def test_shared_images_forward_equals_plain_and_encodes_each_edit_once(vlm, host_positions):
    """Two edits x four questions: the logits of the plain forward, with the vision tower seeing one edit's
    images once (a wrong mapping of edits to their images would change the second edit's logits), with the M-RoPE
    position ids from host copies and from the forward itself."""
    from viva_core.vlm import forward, forward_shared_images

    g = torch.Generator().manual_seed(3)
    chats = []
    for _ in range(2):
        src = [to_pil_image(torch.rand(48, 64, 3, generator=g)) for _ in range(2)]
        edit = [to_pil_image(torch.rand(32, 64, 3, generator=g)) for _ in range(2)]
        chats += [Judge.messages(src, edit, Judge.question_text(d, "make the sky red")) for d in DIMENSIONS]
    inputs = build_inputs(vlm, chats)
    patches = []
    hook = vlm.model.model.visual.register_forward_hook(lambda m, args, out: patches.append(args[0].shape[0]))
    try:
        with torch.no_grad():
            plain = forward(vlm, inputs).logits[:, -1]
            shared = forward_shared_images(vlm, inputs, len(DIMENSIONS), host_positions=host_positions).logits[:, -1]
    finally:
        hook.remove()
    torch.testing.assert_close(shared, plain, rtol=0, atol=1e-5)
    assert patches == [inputs["pixel_values"].shape[0], inputs["pixel_values"].shape[0] // len(DIMENSIONS)]
    assert not torch.allclose(plain[0], plain[4], atol=1e-3)  # the two edits' answers differ
    # only each run's first chat's patches (what Judge.score_batch passes): the same logits; any other count refused
    per_chat = inputs["pixel_values"].shape[0] // len(chats)
    first = torch.cat([inputs["pixel_values"][r * 4 * per_chat : (r * 4 + 1) * per_chat] for r in range(2)])
    with torch.no_grad():
        given = forward_shared_images(vlm, {**inputs, "pixel_values": first}, len(DIMENSIONS)).logits[:, -1]
        torch.testing.assert_close(given, plain, rtol=0, atol=1e-5)
        with pytest.raises(InputError, match="pixel patches fit neither"):
            forward_shared_images(vlm, {**inputs, "pixel_values": first[:-1]}, len(DIMENSIONS))


def test_one_question_forward_equals_plain_without_the_per_image_index_loops(vlm, monkeypatch):
    """copies = 1 (one question a chat, as a reward with a single judge term asks): the plain forward's logits, chats
    with different image counts and sizes in one batch, and transformers' per-image vision index loops never run
    (they took 3.1 of 7.0 s of such calls on 512 edits on an H100, docs/small_models.md section 75)."""
    from viva_core.vlm import forward, forward_shared_images

    pytest.importorskip("transformers.vision_utils")  # older transformers: no precomputed indices to pass

    g = torch.Generator().manual_seed(5)
    chats = []
    for frames, (h, w) in ((2, (48, 64)), (1, (32, 64)), (3, (64, 64))):
        src = [to_pil_image(torch.rand(h, w, 3, generator=g)) for _ in range(frames)]
        edit = [to_pil_image(torch.rand(h, w, 3, generator=g)) for _ in range(frames)]
        chats.append(Judge.messages(src, edit, Judge.question_text("EA", "make the sky red")))
    inputs = build_inputs(vlm, chats)
    tower = sys.modules[type(vlm.model.model.visual).__module__]  # it reads the precomputed indices via these
    computed = []  # the image counts transformers' own index code ran on (kwargs without the precomputed value)

    def watched(fn, key):
        def run(grid, *a, **k):
            if (k.get("kwargs") or {}).get(key) is None:
                computed.append(len(grid))
            return fn(grid, *a, **k)

        return run

    with torch.no_grad():
        plain = forward(vlm, inputs).logits[:, -1]
        for name, key in (("get_vision_position_ids", "position_ids"), ("get_vision_window_index", "window_index")):
            monkeypatch.setattr(tower, name, watched(getattr(tower, name), key))
        one = forward_shared_images(vlm, inputs, 1).logits[:, -1]
    torch.testing.assert_close(one, plain, rtol=0, atol=1e-5)
    assert computed == []  # every index came from vision_indices (once per image size), none from the 12-image loop
    assert not torch.allclose(plain[0], plain[1], atol=1e-3)


def test_chat_tokens_without_the_image_processor_equal_the_processors(vlm, monkeypatch):
    """`Judge._tokens` past the first chat of each image sizes skips the image processor: every key and value
    (ids, per-token rows, grids, M-RoPE ids) equals what the processor gives for the same chat, over questions,
    instructions, image sizes and frame groups; a shortcut that differs from the processor is never used."""
    from PIL import Image

    j = Judge(vlm)
    layouts = [(((64, 48),) * 6, (2, 2, 2)), (((56, 56),) * 4, (2, 2, 0)), (((32, 64),) * 3, (1, 1, 1))]
    texts = ["make the sky red", "remove the car on the left", "turn it blue"]

    def by_processor(question, instruction, sizes, groups):
        blank = [Image.new("RGB", wh) for wh in sizes]
        a, b = groups[0], groups[0] + groups[1]
        chat = j.messages(blank[:a], blank[a:b], j.question_text(question, instruction), blank[b:], j.lead(instruction))
        return processor_inputs(j.vlm.processor, [chat])

    for sizes, groups in layouts:
        for question in DIMENSIONS:
            for text in texts:
                got, want = j._tokens(question, text, sizes, groups), by_processor(question, text, sizes, groups)
                assert set(got) - {"positions"} == set(want) - {"attention_mask", "pixel_values"}
                for k in set(got) - {"positions"}:
                    assert torch.equal(got[k], want[k]), k
                positions = vlm_mod.qwen2_vl_position_ids(j.vlm.model, want)
                if positions is not None:
                    assert torch.equal(got["positions"], positions.to(torch.int32))
    assert len(j._layouts) == len(layouts) and all(layout["checked"] for layout in j._layouts.values())
    # a shortcut whose ids differ (as another transformers' processor might make them) is refused at the check
    fresh = Judge(vlm)
    real = Judge._expanded
    monkeypatch.setattr(Judge, "_expanded", lambda self, *a: {**real(self, *a), "input_ids": torch.zeros(1, 3)})
    sizes, groups = layouts[0]
    fresh._tokens("EA", texts[0], sizes, groups)
    assert not fresh._layouts[sizes]["checked"]
    got = fresh._tokens("EA", texts[1], sizes, groups)
    assert torch.equal(got["input_ids"], by_processor("EA", texts[1], sizes, groups)["input_ids"])


def test_result_format(judge, videos):
    r = judge.score(*videos, "  remove the dog ", num_frames=4)
    assert set(r.scores) == set(DIMENSIONS)
    assert all(math.isfinite(s) and 0.0 <= s <= 1.0 for s in r.scores.values())
    assert r.overall == pytest.approx(sum(r.scores.values()) / 4)
    assert r.rationale is None and r.num_frames == 4 and r.instruction == "remove the dog"
    parsed = json.loads(r.to_json())
    assert parsed["scores"] == r.scores and parsed["overall"] == r.overall
    assert JudgeResult.from_json(r.to_json()) == r
    row = r.table_row()
    assert list(row) == ["instruction", "EA", "PC", "GN", "GR", "overall", "num_frames"]
    assert row["EA"] == round(r.scores["EA"], 4)


def test_rationale_is_capped_greedy_text_and_leaves_the_scores_alone(judge, videos):
    """rationale=True adds the VLM's greedy answer, at most max_rationale_tokens long (a shorter cap gives a prefix of
    the longer answer), and the scores are those of the same call without it."""
    plain = judge.score(*videos, "add a cat", num_frames=1)
    short = judge.score(*videos, "add a cat", num_frames=1, rationale=True, max_rationale_tokens=2)
    long = judge.score(*videos, "add a cat", num_frames=1, rationale=True, max_rationale_tokens=8)
    assert plain.rationale is None and short.scores == plain.scores == long.scores
    assert long.rationale.startswith(short.rationale) and len(long.rationale) > len(short.rationale) > 0


def test_single_images_accepted(judge):
    r = judge.score(torch.rand(32, 32, 3), torch.rand(1, 32, 32, 3), "make it green")
    assert r.num_frames == 1 and all(0 <= s <= 1 for s in r.scores.values())


def test_frames_sampled_uniformly(judge, monkeypatch):
    # Frame i is filled with the value i/255, so the pixel value tells which frame was shown.
    frames = torch.arange(9, dtype=torch.float32).div(255).view(9, 1, 1, 1).expand(9, 28, 28, 3).contiguous()
    shown = []
    real = judge_mod.to_pil_image

    def spy(frame, **kw):
        shown.append(round(float(frame[0, 0, 0]) * 255))
        return real(frame, **kw)

    monkeypatch.setattr(judge_mod, "to_pil_image", spy)
    judge.score(frames, frames[:5], "make the sky blue", num_frames=4)
    assert shown == [0, 3, 5, 8] + [0, 1, 3, 4]  # first to last of 9 frames, then of 5
    shown.clear()
    judge.score(frames[:3], frames[:3], "make the sky blue", num_frames=4)  # fewer frames than asked: all
    assert shown == [0, 1, 2, 0, 1, 2]


def test_bad_inputs(judge, videos):
    with pytest.raises(InputError):
        judge.score(*videos, "   ")
    with pytest.raises(InputError):
        judge.score(videos[0][..., 0], videos[1], "x")
    with pytest.raises(InputError):
        judge.score(*videos, "x", num_frames=0)


def test_yes_probability_formula_and_gradient():
    logits = torch.randn(2, 10, generator=torch.Generator().manual_seed(0), dtype=torch.bfloat16).requires_grad_(True)
    p = yes_probability(logits, [1, 2], [3])
    assert p.dtype == torch.float32 and p.shape == (2,)
    lf = logits.detach().float()
    e = lf[:, [1, 2, 3]].exp()
    torch.testing.assert_close(p.detach(), (e[:, 0] + e[:, 1]) / e.sum(-1))
    p.sum().backward()
    g = logits.grad.float()
    assert g[:, [1, 2]].gt(0).all() and g[:, 3].lt(0).all()
    assert g[:, [0, 4, 5, 6, 7, 8, 9]].eq(0).all()


def test_tokenizer_without_single_token_yes_refused():
    class SplitEverything:
        unk_token_id = None

        def encode(self, text, add_special_tokens=False):
            return [ord(c) for c in text]

        def decode(self, ids):
            return "".join(map(chr, ids))

    fake = VLM(
        model=None, processor=SplitEverything(), path="/models/fake", device=torch.device("cpu"), dtype=torch.float32
    )
    with pytest.raises(ModelLoadError, match="single-token"):
        Judge(fake)


def test_difference_frames_formula_and_resize():
    from viva_core.judge import difference_frames

    g = torch.Generator().manual_seed(3)
    src, edit = torch.rand(3, 8, 8, 3, generator=g), torch.rand(3, 8, 8, 3, generator=g)
    want = torch.clamp(4.0 * (edit - src).abs(), 0, 1)
    torch.testing.assert_close(difference_frames(src, edit), want, rtol=0, atol=0)
    assert float(difference_frames(src, src).abs().max()) == 0.0  # unchanged -> black
    big = edit.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)  # the same frames at 16x16
    assert difference_frames(src, big).shape == (3, 8, 8, 3)
    assert difference_frames(src[:2], edit).shape[0] == 2  # the shorter video sets T


def test_judge_shows_difference_frames_when_its_folder_says_so(vlm, videos, tmp_path):
    """viva_judge.json (what `viva pretrain judge` writes) switches the difference frames on; they are extra images
    in every question, so the prompt is longer and the scores differ from the plain judge."""
    import shutil

    from viva_core.judge import JUDGE_INFO_FILE

    folder = tmp_path / "judge"
    shutil.copytree(vlm.path, folder)
    (folder / JUDGE_INFO_FILE).write_text(json.dumps({"difference_frames": True}))
    with_diff = Judge(load_vlm(folder, dtype="fp32", device="cpu"))
    assert with_diff.difference and not Judge(vlm).difference
    src, edit = videos
    plain = Judge(vlm).score(src, edit, "make it blue", num_frames=2).scores
    shown = with_diff.score(src, edit, "make it blue", num_frames=2).scores
    assert plain.keys() == shown.keys() and any(abs(plain[d] - shown[d]) > 1e-6 for d in plain)
    chat = Judge.messages([None], [None], "q?", [None, None])
    assert sum(part["type"] == "image" for part in chat[0]["content"]) == 4
    (folder / JUDGE_INFO_FILE).write_text("[1, 2]")
    with pytest.raises(ModelLoadError, match=JUDGE_INFO_FILE):
        Judge(load_vlm(folder, dtype="fp32", device="cpu"))


@pytest.mark.parametrize(
    "per_question, named",
    [
        ({"EA": 0.76, "PC": 0.96, "GN": 0.77, "GR": 0.83}, ["EA 0.76", "GN 0.77", "GR 0.83"]),
        ({"EA": 0.95, "PC": 0.9, "GN": 0.99, "GR": 0.91}, []),
        ({"EA": "0.1", "XX": 0.1, "PC": True}, []),  # not numbers, not questions: ignored
        ("0.1", []),
    ],
)
def test_a_judge_that_ranks_corruptions_poorly_names_those_questions(vlm, tmp_path, per_question, named):
    """Above chance on edited vs unedited, a judge whose recorded per-question AUCs over corrupted edits are below
    0.9 says which questions those are, with their values; the bundled judge records EA 0.76 there."""
    import shutil

    from viva_core.judge import JUDGE_INFO_FILE, judge_caveat

    folder = tmp_path / "judge"
    shutil.copytree(vlm.path, folder)
    info = {"held_out_roc_auc": 1.0, "held_out_question_aucs": per_question}
    (folder / JUDGE_INFO_FILE).write_text(json.dumps(info))
    caveat = judge_caveat(folder)
    if not named:
        assert caveat is None
    else:
        assert "ROC-AUC 1.00" in caveat and all(n in caveat for n in named) and "PC" not in caveat


@pytest.mark.parametrize(
    "recorded, warned",
    [(0.48, True), (0.59, True), (0.6, False), (0.9, False), (None, False), ("0.4", False), (True, False)],
)
def test_a_judge_recorded_at_chance_says_so_with_its_scores(vlm, videos, tmp_path, recorded, warned):
    """`held_out_roc_auc` in viva_judge.json (judge_check.py --record) below 0.6 puts a caution into every result
    and under the best-of-N table, naming the measured value; other values and types do not."""
    import shutil

    from viva_core.best_of_n import BestOfN
    from viva_core.judge import JUDGE_INFO_FILE

    folder = tmp_path / "judge"
    shutil.copytree(vlm.path, folder)
    info = {} if recorded is None else {"held_out_roc_auc": recorded}
    (folder / JUDGE_INFO_FILE).write_text(json.dumps(info))
    result = Judge(load_vlm(folder, dtype="fp32", device="cpu")).score(*videos, "make it blue", num_frames=1)
    assert (result.caveat is not None) == warned
    if warned:
        assert f"ROC-AUC {recorded:.2f}" in result.caveat and "chance" in result.caveat
        assert JudgeResult.from_json(result.to_json()).caveat == result.caveat
        table = BestOfN(seeds=[0], judgements=[result], best=type("R", (), {"seed": 0})()).table()
        rows = 2  # header + one candidate; the caution follows, wrapped to the table's width
        assert " ".join(table.splitlines()[rows:]) == result.caveat
        assert all(len(line) <= len(table.splitlines()[0]) for line in table.splitlines()[rows:])


def test_a_judge_names_the_questions_it_ranks_poorly_on_an_editors_outputs(vlm, tmp_path):
    """`editor_output_aucs` (judge_check.py --outputs-report: its ROC-AUC per question against the verifiers on an
    editor's own held-out outputs) below 0.9 are named after the corrupted-edit ones, each with its value."""
    import shutil

    from viva_core.judge import JUDGE_INFO_FILE, judge_caveat

    folder = tmp_path / "judge"
    shutil.copytree(vlm.path, folder)
    on_outputs = {"EA": 0.61, "PC": 0.96, "GN": 0.69, "GR": "0.5"}  # a malformed value is ignored
    info = {
        "held_out_roc_auc": 0.99,
        "held_out_question_aucs": {"EA": 0.56, "PC": 0.95},
        "editor_output_aucs": on_outputs,
    }
    (folder / JUDGE_INFO_FILE).write_text(json.dumps(info))
    caveat = judge_caveat(folder)
    assert caveat == (
        "note: edited vs unedited held-out ROC-AUC 0.99, but below 0.9 on corrupted edits for EA 0.56; "
        "on an editor's outputs for EA 0.61, GN 0.69: a screen, not a verdict."
    )
    info["held_out_question_aucs"] = {"EA": 0.95}
    (folder / JUDGE_INFO_FILE).write_text(json.dumps(info))
    assert judge_caveat(folder).endswith(
        "below 0.9 on an editor's outputs for EA 0.61, GN 0.69: a screen, not a verdict."
    )


@pytest.mark.parametrize("agreement, warned", [(0.51, True), (0.599, True), (0.6, False), (0.8, False), ("0.5", False)])
def test_a_judge_that_orders_candidates_at_chance_says_best_of_n_picks_at_random(vlm, tmp_path, agreement, warned):
    """`candidate_pair_agreement` (best_of_n_check.py --record: how often its EA P(Yes) orders two outputs of one clip
    as the verifier does) below 0.6 adds that its best-of-N pick is close to a random one, alone or after the named
    questions; malformed values are ignored."""
    import shutil

    from viva_core.judge import JUDGE_INFO_FILE, judge_caveat

    folder = tmp_path / "judge"
    shutil.copytree(vlm.path, folder)
    info = {"held_out_roc_auc": 0.97, "candidate_pair_agreement": agreement}
    (folder / JUDGE_INFO_FILE).write_text(json.dumps(info))
    pick = f"it ordered candidates of one edit as the verifiers did in {agreement} of pairs (0.5 is chance)"
    if not warned:
        assert judge_caveat(folder) is None
        return
    assert judge_caveat(folder) == (
        f"note: edited vs unedited held-out ROC-AUC 0.97; {pick.replace(str(agreement), f'{agreement:.2f}')}, so its "
        "best-of-N pick is close to a random one: a screen, not a verdict."
    )
    info["editor_output_aucs"] = {"GN": 0.63}
    (folder / JUDGE_INFO_FILE).write_text(json.dumps(info))
    assert judge_caveat(folder).startswith(
        "note: edited vs unedited held-out ROC-AUC 0.97, but below 0.9 on an editor's outputs for GN 0.63; it ordered"
    )


@pytest.mark.parametrize("everything, clear, warned", [(0.7, 0.55, True), (0.52, 0.65, False)])
def test_the_clear_pair_agreement_decides_where_it_is_recorded(vlm, tmp_path, everything, clear, warned):
    """best_of_n_check.py --record also writes the agreement over the pairs whose verifier EA differs clearly; where
    present, that one (not the all-pairs figure, diluted by near-ties no judge can order) decides the warning."""
    import shutil

    from viva_core.judge import JUDGE_INFO_FILE, judge_caveat

    folder = tmp_path / "judge"
    shutil.copytree(vlm.path, folder)
    info = {"held_out_roc_auc": 0.97, "candidate_pair_agreement": everything, "candidate_clear_pair_agreement": clear}
    (folder / JUDGE_INFO_FILE).write_text(json.dumps(info))
    if not warned:
        assert judge_caveat(folder) is None
        return
    assert f"in {clear:.2f} of the pairs they tell clearly apart (0.5 is chance)" in judge_caveat(folder)


@pytest.mark.parametrize("difference, pairs", [(False, False), (True, False), (True, True)])
def test_differentiable_p_yes_equals_score_and_its_gradient_the_finite_difference(vlm, tmp_path, difference, pairs):
    """The judge as a differentiable reward: for frames on the processor's grid at exact 8-bit levels (where PIL and
    the processor round nothing) it gives `score`'s P(Yes) for each asked question; its gradient reaches only the
    shown edited frames and matches a central finite difference along a random direction (an independent check of
    the whole path: patches, difference frames, shared vision forward)."""
    import shutil

    from viva_core.judge import JUDGE_INFO_FILE

    folder = tmp_path / "judge"
    shutil.copytree(vlm.path, folder)
    (folder / JUDGE_INFO_FILE).write_text(json.dumps({"difference_frames": difference, "frame_pairs": pairs}))
    j = Judge(load_vlm(folder, dtype="fp32", device="cpu"))
    g = torch.Generator().manual_seed(5)
    src = torch.randint(0, 256, (5, 56, 56, 3), generator=g).float() / 255
    edit = torch.randint(0, 256, (5, 56, 56, 3), generator=g).float() / 255
    want = j.score(src, edit, "make it blue", num_frames=2).scores
    x = edit.clone().requires_grad_(True)
    got = j.differentiable_yes_probabilities(src, x, "make it blue", ("EA", "GR"), num_frames=2)
    assert list(got) == ["EA", "GR"]
    for q in got:
        assert float(got[q].detach()) == pytest.approx(want[q], abs=1e-5)
    got["EA"].backward()
    shown = (x.grad != 0).flatten(1).any(1).tolist()
    # frames 0 and 4 of 5, as score shows them; with frame pairs (0, 1) and (3, 4)
    assert shown == ([True, True, False, True, True] if pairs else [True, False, False, False, True])
    assert all(p.grad is None for p in j.vlm.model.parameters())  # the judge stays frozen
    # the finite difference in float64 (P(Yes) in fp32 rounds away a small step's change), on an edit that differs
    # from the source by 25 levels everywhere: no step crosses a kink of the difference frames (abs at 0, clamp at 1)
    from dataclasses import replace

    j64 = Judge(replace(j.vlm, model=copy.deepcopy(j.vlm.model).double(), dtype=torch.float64))
    mid = src.clamp(0.25, 0.6).double()
    near = mid + 25 / 255
    x64 = near.clone().requires_grad_(True)
    j64.differentiable_yes_probabilities(mid, x64, "make it blue", ("EA",), num_frames=2)["EA"].backward()
    direction, eps = torch.randn(edit.shape, generator=g, dtype=torch.float64), 1e-3
    with torch.no_grad():  # the fourth-order central stencil: frame pairs curve P(Yes) more than eps^2 allows
        f = {
            k: float(
                j64.differentiable_yes_probabilities(
                    mid, near + k * eps * direction, "make it blue", ("EA",), num_frames=2
                )["EA"]
            )
            for k in (2, 1, -1, -2)
        }
    slope = (8 * (f[1] - f[-1]) - (f[2] - f[-2])) / (12 * eps)
    assert float((x64.grad * direction).sum()) == pytest.approx(slope, rel=5e-3)
    with pytest.raises(InputError, match="one of"):
        j.differentiable_yes_probabilities(src, edit, "make it blue", ("XX",))


@pytest.mark.parametrize("difference, pairs", [(False, False), (True, False), (True, True)])
def test_score_batch_equals_score_for_each_edit_and_question(vlm, tmp_path, difference, pairs):
    """Many edits in shared forwards give `score`'s P(Yes) for each asked question, in the asked order: edits of
    different sizes, lengths and instructions in one chunk (left padding), across chunk boundaries, frames at the
    processor's grid (laid out in torch) and frames that `max_side` shrinks (laid out by the processor); the vision
    tower sees each edit's images once, and a repeated (question, instruction, sizes) is tokenized once."""
    import shutil

    from viva_core.judge import JUDGE_INFO_FILE

    folder = tmp_path / "judge"
    shutil.copytree(vlm.path, folder)
    (folder / JUDGE_INFO_FILE).write_text(json.dumps({"difference_frames": difference, "frame_pairs": pairs}))
    j = Judge(load_vlm(folder, dtype="fp32", device="cpu"))
    assert j.frame_pairs == pairs
    g = torch.Generator().manual_seed(11)
    shapes = [(5, 48, 64), (3, 56, 56), (5, 48, 64), (7, 40, 48), (1, 32, 32)]
    sources = [torch.rand(*s, 3, generator=g) for s in shapes]
    edits = [torch.rand(*s, 3, generator=g) for s in shapes]
    texts = ["make the sky red", "remove the car", "make the sky red", "  turn it blue ", "add a dog"]
    want = torch.tensor(
        [[j.score(s, e, t, num_frames=2).scores[q] for q in ("PC", "EA")] for s, e, t in zip(sources, edits, texts)]
    )
    patches = []
    hook = j.vlm.model.model.visual.register_forward_hook(lambda m, args, out: patches.append(args[0].shape[0]))
    calls, host_positions = [], []
    real = judge_mod.processor_inputs
    judge_mod.processor_inputs = lambda *a, **k: calls.append(1) or real(*a, **k)
    real_positions = vlm_mod.qwen2_vl_position_ids
    vlm_mod.qwen2_vl_position_ids = lambda *a, **k: host_positions.append(1) or real_positions(*a, **k)
    try:
        got = j.score_batch(sources, edits, texts, questions=("PC", "EA"), num_frames=2, chunk=2)
    finally:
        hook.remove()
        judge_mod.processor_inputs = real
        vlm_mod.qwen2_vl_position_ids = real_positions
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    # each chat's M-RoPE ids came with its tokens (made once per tokenization), none from the batch's host loop
    assert not host_positions and all("positions" in entry for entry in j._chat_tokens.values())
    per_edit = [  # the patches of one chat of each edit, as `score` builds it
        build_inputs(
            j.vlm,
            Judge.messages(
                j._frames(s, 2),
                j._frames(e, 2),
                "q",
                judge_mod.difference_images(s, e, 2, pairs=pairs) if difference else (),
            ),
        )["pixel_values"].shape[0]
        for s, e in zip(sources, edits)
    ]
    assert sum(patches) == sum(per_edit)  # each edit's images once, not once per question
    assert len(patches) == 3  # chunks of 2 edits
    patches.clear()
    hook = j.vlm.model.model.visual.register_forward_hook(lambda m, args, out: patches.append(args[0].shape[0]))
    try:  # a token budget under one edit's chats: one edit a forward, the same scores
        alone = j.score_batch(sources, edits, texts, questions=("PC", "EA"), num_frames=2, max_tokens=1)
    finally:
        hook.remove()
    torch.testing.assert_close(alone, want, rtol=0, atol=1e-5)
    assert patches == per_edit
    assert len(j._chat_tokens) == 2 * (len(shapes) - 1)  # the repeated (question, instruction, sizes) from the cache
    assert len(calls) == len(set(shapes)) == len(j._layouts)  # the processor once per image sizes, checked there
    assert all(layout["checked"] for layout in j._layouts.values())
    shrunk = Judge(j.vlm, max_side=24)
    want = torch.tensor(
        [
            [shrunk.score(s, e, t, num_frames=2).scores[q] for q in DIMENSIONS]
            for s, e, t in zip(sources[:2], edits[:2], texts[:2])
        ]
    )
    torch.testing.assert_close(
        shrunk.score_batch(sources[:2], edits[:2], texts[:2], num_frames=2), want, rtol=0, atol=1e-5
    )


def test_shown_moments_pair_each_frame_with_the_next():
    from viva_core.judge import moment_frames, shown_moments

    assert shown_moments(17, 4) == [(0, 0), (5, 5), (11, 11), (16, 16)]
    assert shown_moments(17, 4, pairs=True) == [(0, 1), (5, 6), (11, 12), (15, 16)]  # the last: the change into 16
    assert shown_moments(5, 2, pairs=True) == [(0, 1), (3, 4)]
    assert shown_moments(1, 4, pairs=True) == [(0, 0)]  # one image: nothing to pair it with
    video = torch.arange(5.0).view(5, 1)
    first, second = moment_frames(video, 2, pairs=True)
    assert first.flatten().tolist() == [0, 3] and second.flatten().tolist() == [1, 4]
    first, second = moment_frames(video, 2)
    assert second is first and first.flatten().tolist() == [0, 4]


def test_frame_pairs_reach_the_patch_embedding_as_two_time_steps(vlm):
    """`temporal_pairs` against an independent computation: the vision tower's Conv3d patch embedding of each laid-out
    row equals the convolution of the two normalised frames' patch at its place, stacked in time (first, then
    second), as a Qwen2-VL model embeds a video's two frames; the same frame twice embeds as the image alone."""
    ip = vlm.processor.image_processor
    p, m = ip.patch_size, ip.merge_size
    g = torch.Generator().manual_seed(2)
    a, b = (torch.randint(0, 256, (56, 56, 3), generator=g).float() / 255 for _ in range(2))
    rows = [ip(images=[to_pil_image(x)], return_tensors="pt")["pixel_values"] for x in (a, b)]
    paired = vlm_mod.temporal_pairs(rows[0], rows[1], vlm.processor)
    embed = vlm.model.model.visual.patch_embed
    with torch.no_grad():
        got = embed(paired)
        torch.testing.assert_close(embed(vlm_mod.temporal_pairs(rows[0], rows[0], vlm.processor)), embed(rows[0]))
    mean, std = torch.tensor(ip.image_mean).view(3, 1, 1), torch.tensor(ip.image_std).view(3, 1, 1)
    frames = [(x.permute(2, 0, 1) - mean) / std for x in (a, b)]
    conv = embed.proj
    gw = 56 // p
    for gy in range(56 // p):
        for gx in range(gw):
            video = torch.stack([f[:, gy * p : (gy + 1) * p, gx * p : (gx + 1) * p] for f in frames], dim=1)
            want = torch.nn.functional.conv3d(video[None], conv.weight, conv.bias).flatten()
            row = ((gy // m) * (gw // m) + gx // m) * m * m + (gy % m) * m + gx % m  # the processor's block order
            torch.testing.assert_close(got[row], want, rtol=1e-4, atol=1e-4)
    with pytest.raises(InputError, match="one size"):
        vlm_mod.temporal_pairs(rows[0], rows[1][:-1], vlm.processor)


def test_a_frame_pairs_judge_sees_motion_and_a_still_video_as_the_plain_judge(vlm, tmp_path):
    """On a still video each pair is one frame twice, which is how the processor lays out an image: the same scores
    as a judge of single frames. On a moving one they differ (the second frame reaches the model); a chat of pairs
    and a chat of singles have the same tokens."""
    import shutil

    from viva_core.judge import JUDGE_INFO_FILE

    folder = tmp_path / "judge"
    shutil.copytree(vlm.path, folder)
    (folder / JUDGE_INFO_FILE).write_text(json.dumps({"difference_frames": True, "frame_pairs": True}))
    pairs, plain = Judge(load_vlm(folder, dtype="fp32", device="cpu")), Judge(vlm, difference=True)
    g = torch.Generator().manual_seed(4)
    still_src = torch.rand(1, 56, 56, 3, generator=g).expand(6, -1, -1, -1)
    still_edit = torch.rand(1, 56, 56, 3, generator=g).expand(6, -1, -1, -1)
    a, b = (j.score(still_src, still_edit, "make it blue", num_frames=3).scores for j in (pairs, plain))
    assert a == pytest.approx(b, abs=1e-6)
    moving = torch.rand(6, 56, 56, 3, generator=g)
    a, b = (j.score(still_src, moving, "make it blue", num_frames=3).scores for j in (pairs, plain))
    assert any(abs(a[d] - b[d]) > 1e-4 for d in DIMENSIONS)
    chats = [j.messages(j._frames(moving, 3), j._frames(moving, 3), "q") for j in (pairs, plain)]
    ids = [processor_inputs(vlm.processor, [c])["input_ids"] for c in chats]
    assert torch.equal(ids[0], ids[1])
    mixed = chats[0][0]["content"][:3] + chats[1][0]["content"][3:]
    with pytest.raises(InputError, match="pair every image"):
        processor_inputs(vlm.processor, [[{"role": "user", "content": mixed}]])


def test_score_batch_refuses_bad_inputs(judge, videos):
    src, edit = videos
    with pytest.raises(InputError, match="2 sources, 1 edits"):
        judge.score_batch([src, src], [edit], ["a", "b"])
    with pytest.raises(InputError, match="instruction"):
        judge.score_batch([src], [edit], ["  "])
    with pytest.raises(InputError, match="XX"):
        judge.score_batch([src], [edit], ["a"], questions=("XX",))
    with pytest.raises(InputError, match="num_frames"):
        judge.score_batch([src], [edit], ["a"], num_frames=0)
