"""Exact benchmark: verifiers anchored at source (0) and ground truth (1), SSIM/PSNR, temporal and realism
scores, ROC-AUC, evaluate() with its reports, and `viva eval`."""

from __future__ import annotations

import itertools
import json
import math
import shutil

import numpy as np
import pytest
import torch

from viva_core.cli import main
from viva_core.errors import InputError
from viva_core.eval import (
    EditScore,
    aggregate,
    align,
    evaluate,
    judge_agreement,
    psnr,
    roc_auc,
    score_edit,
    ssim,
    ssim_map,
)
from viva_core.judge import JudgeResult
from viva_core.video import read_video, write_video

T, S = 9, 32
RED, BLUE, GREEN = (0.9, 0.1, 0.1), (0.1, 0.2, 0.9), (0.1, 0.8, 0.2)


def background(frames: int = T, size: int = S) -> torch.Tensor:
    """A grey horizontal gradient (so sharpness and SSIM have structure to see)."""
    ramp = torch.linspace(0.3, 0.7, size).view(1, 1, size, 1)
    return ramp.expand(frames, size, size, 3).clone()


def paint(video: torch.Tensor, boxes, colour, shape: str = "square") -> torch.Tensor:
    """Draw one object per frame into `video` (in place) at boxes[t] = (x0, y0, x1, y1); return its mask."""
    mask = torch.zeros(video.shape[:3], dtype=torch.bool)
    yy, xx = torch.meshgrid(torch.arange(video.shape[1]), torch.arange(video.shape[2]), indexing="ij")
    for t, (x0, y0, x1, y1) in enumerate(boxes):
        if shape == "square":
            m = (xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)
        else:  # circle inscribed in the box
            cx, cy, r = (x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2, (x1 - x0) / 2
            m = (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2
        video[t][m] = torch.tensor(colour)
        mask[t] = m
    return mask


def moving(offset: int = 0, side: int = 10, y0: int = 10):
    return [(4 + offset + t, y0, 4 + offset + t + side, y0 + side) for t in range(T)]


def case(operation: str):
    """(source, target, mask, verify) of one synthetic edit of each kind."""
    src, tgt = background(), background()
    if operation == "recolour":
        m = paint(src, moving(), RED)
        paint(tgt, moving(), BLUE)
        return src, tgt, m, {"target_rgb": [round(c * 255) for c in BLUE]}
    if operation == "add":
        m = paint(tgt, moving(), GREEN, "circle")
        return src, tgt, m, {"present": True, "shape": "circle", "rgb": list(GREEN)}
    if operation == "remove":
        m = paint(src, moving(), RED)
        return src, tgt, m, {"present": False}
    if operation == "replace":
        a = paint(src, moving(), RED)
        b = paint(tgt, moving(), BLUE, "circle")
        return src, tgt, a | b, {"shape": "circle", "rgb": list(BLUE)}
    if operation in ("move", "resize"):
        old = moving()
        new = (
            [(x0 + 8, y0 + 6, x1 + 8, y1 + 6) for x0, y0, x1, y1 in old]
            if operation == "move"
            else [(x0 - 3, y0 - 3, x1 + 3, y1 + 3) for x0, y0, x1, y1 in old]
        )
        a = paint(src, old, RED)
        b = paint(tgt, new, RED)
        return src, tgt, a | b, {"bbox": [list(b) for b in new]}
    if operation == "style":
        paint(src, moving(), RED)
        paint(tgt, moving(), RED)
        gray = (tgt @ torch.tensor([0.299, 0.587, 0.114])).unsqueeze(-1).expand_as(tgt).clone()
        return src, gray, torch.ones(T, S, S), {"style": "grayscale"}
    if operation == "recolour+move":
        old = moving()
        new = [(x0 + 8, y0 + 6, x1 + 8, y1 + 6) for x0, y0, x1, y1 in old]
        a = paint(src, old, RED)
        b = paint(tgt, new, BLUE)
        return src, tgt, a | b, {"recolour": {"target_rgb": list(BLUE)}, "move": {"bbox": [list(b) for b in new]}}
    if operation == "generic":
        m = paint(src, moving(), RED)
        paint(tgt, moving(), GREEN)
        return src, tgt, m, None
    raise ValueError(operation)


OPERATIONS = ["recolour", "add", "remove", "replace", "move", "resize", "style", "recolour+move", "generic"]
EXPECTED_VERIFIER = {
    "recolour": "recolour",
    "add": "add",
    "remove": "remove",
    "replace": "replace",
    "move": "position",
    "resize": "position",
    "style": "grayscale",
    "recolour+move": "hybrid",
    "generic": "generic",
}


@pytest.mark.parametrize("operation", OPERATIONS)
def test_ground_truth_scores_one_and_source_scores_low(operation):
    src, tgt, mask, verify = case(operation)
    operation = None if operation == "generic" else operation
    truth = score_edit(src, tgt, tgt, mask, verify, operation)
    assert truth.details["ea"]["verifier"] == EXPECTED_VERIFIER[operation or "generic"]
    assert "fallback" not in json.dumps(truth.details)
    assert truth.ea == pytest.approx(1.0, abs=1e-6)
    assert truth.gn == pytest.approx(1.0) and truth.gr == pytest.approx(1.0)
    if operation == "style":  # whole-frame mask: nothing outside to preserve
        assert truth.pc is None and truth.psnr is None
    else:
        assert truth.pc == pytest.approx(1.0) and truth.ssim == pytest.approx(1.0) and truth.psnr == 100.0
    assert truth.overall == pytest.approx(1.0)
    unedited = score_edit(src, src, tgt, mask, verify, operation)
    assert unedited.ea < 0.3
    assert unedited.overall < truth.overall


def test_partial_recolour_scores_in_between():
    src, tgt, mask, verify = case("recolour")
    half = src.clone()
    half[:, :, :12] = tgt[:, :, :12]  # columns left of 12 recoloured: 36 of the square's 90 columns over time
    ea = score_edit(src, half, tgt, mask, verify, "recolour").ea
    assert ea == pytest.approx(0.4, abs=0.01)


def test_wrong_colour_and_wrong_place_score_zero():
    src, tgt, mask, verify = case("recolour")
    green = background()
    paint(green, moving(), GREEN)
    assert score_edit(src, green, tgt, mask, verify, "recolour").ea < 0.3
    src, tgt, mask, verify = case("move")
    elsewhere = background()
    paint(elsewhere, [(x0, y0 + 14, x1, y1 + 14) for x0, y0, x1, y1 in moving()], RED)  # moved down, not right
    assert score_edit(src, elsewhere, tgt, mask, verify, "move").ea < 0.3


def test_verify_missing_falls_back_to_ground_truth():
    src, tgt, mask, _ = case("recolour")
    for verify in (None, {}, {"target_rgb": "blue"}):
        truth = score_edit(src, tgt, tgt, mask, verify, "recolour")
        assert truth.details["ea"]["verifier"] == "generic" and truth.ea == pytest.approx(1.0)
        assert score_edit(src, src, tgt, mask, verify, "recolour").ea < 0.3


def test_mask_none_is_derived_and_numpy_uint8_accepted():
    src, tgt, mask, verify = case("recolour")
    as_u8 = [(x * 255).round().to(torch.uint8).numpy() for x in (src, tgt)]
    score = score_edit(as_u8[0], as_u8[1], as_u8[1], None, verify, "recolour")
    assert score.details["mask_derived"] and score.ea == pytest.approx(1.0) and score.pc == pytest.approx(1.0)
    with pytest.raises(InputError, match="one shape"):
        score_edit(src, tgt[:4], tgt, mask, verify, "recolour")


def test_mp4_round_trip_keeps_ground_truth_high(tmp_path):
    for operation in ("recolour", "move"):
        src, tgt, mask, verify = case(operation)
        files = {}
        for name, x in (("src", src), ("tgt", tgt), ("mask", mask.float().unsqueeze(-1).expand(-1, -1, -1, 3))):
            files[name] = read_video(write_video(tmp_path / f"{operation}_{name}.mp4", x, 8.0), with_audio=False).frames
        s, y, m = files["src"], files["tgt"], files["mask"]
        truth = score_edit(s, y, y, m, verify, operation)
        assert truth.ea > 0.95 and truth.pc > 0.9 and truth.overall > 0.95
        # the array ground truth against the decoded references: only codec noise separates them
        assert score_edit(s, tgt, y, m, verify, operation).ea > 0.9
        assert score_edit(s, s, y, m, verify, operation).ea < 0.3


def test_one_corrupted_frame_drops_naturalness():
    src, tgt, mask, verify = case("recolour")
    clean = score_edit(src, tgt, tgt, mask, verify, "recolour")
    noisy = tgt.clone()
    noisy[T // 2] = torch.rand(S, S, 3, generator=torch.Generator().manual_seed(0))
    bad = score_edit(src, noisy, tgt, mask, verify, "recolour")
    assert clean.gn == pytest.approx(1.0) and bad.gn < 0.3
    assert bad.details["gn"]["temporal_score"] < 0.5 < clean.details["gn"]["temporal_score"]
    assert bad.details["gn"]["flicker_out"] > 3 * bad.details["gn"]["flicker_gt"]
    assert bad.pc < clean.pc and bad.overall < clean.overall - 0.2


def test_ssim_identical_constant_and_brute_force():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 16, 16, 3, generator=g)
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-12)
    # constant images a, b: σ terms vanish, SSIM = (2ab + C1) / (a² + b² + C1)
    a, b, c1 = 0.5, 0.25, 0.01**2
    assert ssim(torch.full((1, 12, 12, 3), a), torch.full((1, 12, 12, 3), b)) == pytest.approx(
        (2 * a * b + c1) / (a * a + b * b + c1), rel=1e-6
    )
    # one window by hand: a 13x13 gray pair with an 11x11 gaussian window gives a 3x3 map
    xs = torch.rand(1, 13, 13, 1, generator=g, dtype=torch.float64)
    ys = (0.6 * xs + 0.3 * torch.rand(1, 13, 13, 1, generator=g, dtype=torch.float64)).clamp(0, 1)
    k = np.arange(11) - 5.0
    w1 = np.exp(-(k**2) / (2 * 1.5**2))
    w = np.outer(w1, w1) / np.outer(w1, w1).sum()
    smap = ssim_map(xs.float(), ys.float())
    assert smap.shape == (1, 3, 3)
    X, Y = xs[0, ..., 0].numpy(), ys[0, ..., 0].numpy()
    for i, j in itertools.product(range(3), range(3)):
        px, py = X[i : i + 11, j : j + 11], Y[i : i + 11, j : j + 11]
        mx, my = (w * px).sum(), (w * py).sum()
        vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
        cxy = (w * (px - mx) * (py - my)).sum()
        expect = (2 * mx * my + 1e-4) * (2 * cxy + 9e-4) / ((mx**2 + my**2 + 1e-4) * (vx + vy + 9e-4))
        assert float(smap[0, i, j]) == pytest.approx(expect, abs=1e-5)


def test_psnr_definition():
    x = torch.zeros(1, 4, 4, 3)
    assert psnr(x, x + 0.1) == pytest.approx(20.0)
    assert psnr(x, x) == 100.0
    weight = torch.zeros(1, 4, 4)
    weight[0, 0, 0] = 1
    y = x.clone()
    y[0, 1:] = 1.0  # differences only where the weight is 0
    assert psnr(x, y, weight=weight) == 100.0


def test_roc_auc_matches_pairwise_count_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(2, 30))
        scores = rng.integers(0, 5, n) / 4.0  # few distinct values: many ties
        labels = rng.random(n) < 0.5
        pos, neg = scores[labels], scores[~labels]
        if len(pos) == 0 or len(neg) == 0:
            assert roc_auc(scores, labels) is None
            continue
        brute = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg) / (len(pos) * len(neg))
        assert roc_auc(scores, labels) == pytest.approx(brute, abs=1e-12)
    assert roc_auc([0.1, 0.9], [False, True]) == 1.0 and roc_auc([0.5, 0.5], [False, True]) == 0.5


def test_judge_agreement_counts():
    items = [{"p_yes": p, "label": y} for p, y in ((0.9, True), (0.6, False), (0.4, True), (0.1, False))]
    j = judge_agreement(items)
    assert j["accuracy"] == 0.5 and j["roc_auc"] == 0.75 and j["positives"] == 2 and j["negatives"] == 2


def test_align_center_crops_references_like_conform_frames():
    src, tgt, mask, verify = case("recolour")
    out, s, y, m, how = align(tgt[:5, 2:30, 4:28], src, tgt, mask.float())
    assert out.shape == s.shape == y.shape and m.shape == (5, 28, 24) and (how["top"], how["left"]) == (2, 4)
    assert torch.equal(y, out)
    big = torch.nn.functional.interpolate(tgt.permute(0, 3, 1, 2), size=(64, 64)).permute(0, 2, 3, 1)
    out, s, *_, how = align(big, src, tgt, mask.float())
    assert out.shape == src.shape and "resized" in how["note"]


# ------------------------------------------------------------------------------------------- evaluate


class FakeJudge:
    """P(Yes) = 0.8 when the shown output differs from the source, 0.2 when it is the source itself."""

    def score(self, source, edited, instruction, *, num_frames=4):
        p = 0.2 if torch.equal(source, edited) else 0.8
        return JudgeResult(
            scores={"EA": p, "PC": 0.5, "GN": 0.5, "GR": 0.5},
            overall=0.5,
            rationale=None,
            num_frames=num_frames,
            instruction=instruction,
        )

    def score_batch(self, sources, editeds, instructions, *, questions=("EA", "PC", "GN", "GR"), num_frames=4):
        rows = [self.score(s, e, t, num_frames=num_frames).scores for s, e, t in zip(sources, editeds, instructions)]
        return torch.tensor([[row[q] for q in questions] for row in rows])


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """3 records (2 categories) on disk; outputs/: ground truth for 0 and 2, the unedited source for 1."""
    root = tmp_path_factory.mktemp("bench")
    outputs = root / "outputs"
    lines = []
    for i, (operation, category) in enumerate(
        (("recolour", "basic"), ("move", "spatial"), ("recolour+move", "hybrid"))
    ):
        src, tgt, mask, verify = case(operation)
        write_video(root / f"{i}_src.mp4", src, 8.0)
        write_video(root / f"{i}_tgt.mp4", tgt, 8.0)
        write_video(root / f"{i}_mask.mp4", mask.float().unsqueeze(-1).expand(-1, -1, -1, 3), 8.0)
        if i == 1:  # the unedited source: the same bytes, so the FakeJudge's equality never rests on the encoder
            outputs.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / f"{i}_src.mp4", outputs / f"{i}.mp4")
        else:
            write_video(outputs / f"{i}.mp4", tgt, 8.0)
        lines.append(
            {
                "source_video": f"{i}_src.mp4",
                "target_video": f"{i}_tgt.mp4",
                "mask_video": f"{i}_mask.mp4",
                "instruction": f"edit {i} ({operation})",
                "type": category,
                "operation": operation,
                "attribute": "colour",
                "referring": "the square",
                "verify": verify,
            }
        )
    lines[1]["type"] = "basic"  # categories: basic = {0, 1}, hybrid = {2}
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return root, manifest, outputs


def test_evaluate_scores_writes_reports_and_aggregates(bench, tmp_path):
    root, manifest, outputs = bench
    calls = []
    report = evaluate(
        manifest, outputs_dir=outputs, judge=FakeJudge(), progress=lambda d, n, p=None: calls.append((d, n))
    )
    assert calls[-1] == (3, 3)
    ea = {s.index: s.ea for s in report.scores}
    assert ea[0] > 0.95 and ea[2] > 0.95 and ea[1] < 0.3
    assert [s.operation for s in report.scores] == ["recolour", "move", "recolour+move"]
    assert report.scores[2].details["ea"]["verifier"] == "hybrid"
    assert report.scores[0].details["referring"] == "the square"
    assert set(report.by_category) == {"basic", "hybrid"} and report.by_category["basic"]["count"] == 2
    basic = [s for s in report.scores if s.category == "basic"]
    for key in ("ea", "pc", "gn", "gr", "overall", "psnr"):
        assert report.by_category["basic"][key] == pytest.approx(sum(getattr(s, key) for s in basic) / 2)
        assert report.overall[key] == pytest.approx(sum(getattr(s, key) for s in report.scores) / 3)
    assert report.by_operation["move"]["count"] == 1
    # judge: outputs 0, 2 (edited, EA high) and 1 (the source again) plus 3 source negatives
    j = report.judge_agreement
    assert (j["n"], j["positives"], j["negatives"]) == (6, 2, 4)
    assert j["accuracy"] == pytest.approx(1.0) and j["roc_auc"] == pytest.approx(1.0)
    # PC, GN and GR over the 3 outputs; the FakeJudge says 0.5 to each, so their accuracy is the share of positives
    for q in ("PC", "GN", "GR"):
        row, values = j["per_question"][q], [getattr(s, q.lower()) for s in report.scores]
        assert row["n"] == 3 and row["positives"] == sum(v >= 0.5 for v in values)
        assert row["accuracy"] == pytest.approx(row["positives"] / 3)
    assert "judge vs verifier per question" in report.table()

    out = report.write(tmp_path / "report")
    data = json.loads((out / "report.json").read_text())
    assert data["by_category"]["basic"]["count"] == 2 and len(data["scores"]) == 3
    assert data["judge_agreement"]["roc_auc"] == pytest.approx(1.0)
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 * 3 * 3  # 3 edits x (source, output, truth) x 3 frames
    assert "By category" in page and "By operation" in page and "hybrid" in page and "edit 1 (move)" in page
    assert "<link" not in page and "<script src" not in page  # self-contained


def test_evaluate_with_editor_fn_saves_outputs(bench, tmp_path):
    root, manifest, _ = bench
    seen = []

    def editor_fn(record, frames):
        seen.append(record.index)
        return read_video(record.target_video, with_audio=False).frames[:, :, 4:28]  # a cropped edit

    report = evaluate(manifest, editor_fn, outputs_dir=tmp_path / "out", limit=2)
    assert seen == [0, 1] and sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0.mp4", "1.mp4"]
    assert all(s.ea > 0.9 for s in report.scores)  # references cropped like the output; bboxes moved along
    assert report.scores[1].details["alignment"]["left"] == 4


def test_evaluate_lists_missing_outputs_before_scoring(bench, tmp_path):
    _, manifest, _ = bench
    with pytest.raises(InputError, match=r"3 record\(s\) cannot be scored"):
        evaluate(manifest, outputs_dir=tmp_path / "empty")
    with pytest.raises(InputError, match="editor_fn"):
        evaluate(manifest)


def test_cli_eval(bench, tmp_path, capsys):
    _, manifest, outputs = bench
    assert (
        main(["eval", str(manifest), "--outputs", str(outputs), "--report", str(tmp_path / "r"), "--limit", "2"]) == 0
    )
    text = capsys.readouterr().out
    assert "basic" in text and "report.html" in text
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    assert len(data["scores"]) == 2 and data["judge_agreement"] is None
    assert main(["eval", str(manifest), "--report", str(tmp_path / "r2")]) == 2  # neither outputs nor editor


def test_aggregate_skips_undefined():
    a = EditScore(0, "style", "basic", 1.0, None, 0.5, 1.0, 0.8, None, None)
    b = EditScore(1, "style", "basic", 0.0, 0.6, None, 1.0, 0.5, 30.0, 0.9)
    agg = aggregate([a, b])
    assert agg["pc"] == 0.6 and agg["gn"] == 0.5 and agg["ea"] == 0.5 and agg["count"] == 2
    assert math.isclose(agg["overall"], 0.65)


def test_cli_eval_with_editor(bench, tmp_path, capsys):
    from tiny_editor import build_editor_folder

    _, manifest, _ = bench
    report = tmp_path / "r"
    assert (
        main(
            [
                "eval",
                str(manifest),
                "--editor",
                str(build_editor_folder(tmp_path / "editor")),
                "--limit",
                "1",
                "--report",
                str(report),
                "--steps",
                "1",
                "--dtype",
                "fp32",
                "--device",
                "cpu",
                "--sampler",
                "euler",
            ]
        )
        == 0
    )
    assert (report / "outputs" / "0.mp4").is_file()
    data = json.loads((report / "report.json").read_text())
    assert len(data["scores"]) == 1 and 0.0 <= data["scores"][0]["ea"] <= 1.0


def test_cli_eval_on_npz_clips_without_saving_outputs(tmp_path):
    """`viva synth --format npz` sets score directly; --no-outputs writes the report only (no video encoding)."""
    from tiny_editor import build_editor_folder

    from viva_core.synth import generate

    manifest = generate(tmp_path / "d", n=2, seed=1, format="npz", splits=(1, 0, 0), frames=5, size=32)["train"]
    report = tmp_path / "r"
    assert (
        main(
            [
                "eval",
                str(manifest),
                "--editor",
                str(build_editor_folder(tmp_path / "editor")),
                "--no-outputs",
                "--report",
                str(report),
                "--steps",
                "1",
                "--dtype",
                "fp32",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in report.iterdir()) == ["report.html", "report.json"]
    assert len(json.loads((report / "report.json").read_text())["scores"]) == 2
    assert main(["eval", str(manifest), "--outputs", str(tmp_path), "--no-outputs", "--report", str(report)]) == 2


def test_cli_eval_encodes_every_instruction_before_sampling(tmp_path, monkeypatch):
    """Text conditioning: each distinct instruction and the negative are encoded once, up front; the text encoder is
    then released, so it is never on the device with the DiT. The scores equal the resident per-record flow."""
    from tiny_editor import build_editor_folder

    from viva_core.editor import Editor, EditorOptions, load_editor
    from viva_core.pipeline import edit
    from viva_core.settings import EditSettings
    from viva_core.synth import generate

    manifest = generate(tmp_path / "d", n=3, seed=1, format="npz", splits=(1, 0, 0), frames=5, size=32)["train"]
    folder = build_editor_folder(tmp_path / "editor")
    events, encode, release = [], Editor.encode_text, Editor.release_text_encoder
    monkeypatch.setattr(Editor, "encode_text", lambda self, p: events.append(("encode", p)) or encode(self, p))
    monkeypatch.setattr(Editor, "release_text_encoder", lambda self: events.append(("release",)) or release(self))
    args = ["eval", str(manifest), "--editor", str(folder), "--no-outputs", "--steps", "1", "--sampler", "euler"]
    assert main([*args, "--report", str(tmp_path / "r"), "--dtype", "fp32", "--device", "cpu"]) == 0
    instructions = [json.loads(line)["instruction"] for line in manifest.read_text().splitlines()]
    assert events[-1] == ("release",) and sorted(p for _, p in events[:-1]) == sorted({*instructions, ""})
    monkeypatch.undo()

    editor = load_editor(str(folder), options=EditorOptions(dtype="fp32", device="cpu"))
    negative = editor.encode_text("")
    settings = EditSettings(steps=1, sampler="euler")
    resident = evaluate(
        manifest,
        lambda r, f: edit(editor, f, editor.encode_text(r.instruction), negative=negative, settings=settings).frames,
    )
    released = json.loads((tmp_path / "r" / "report.json").read_text())["scores"]
    assert [s["ea"] for s in released] == pytest.approx([s.ea for s in resident.scores], abs=1e-6)


def test_synth_clips_ground_truth_scores_one():
    synth = pytest.importorskip("viva_core.synth")
    plans = [("basic", op) for op in ("recolour", "replace_shape", "remove", "add", "move", "resize")] + [
        ("causal", "speed_change"),
        ("hybrid", "recolour+remove+move"),
    ]
    for i, (category, ops) in enumerate(plans):
        clip = synth.make_clip(np.random.default_rng([3, i]), frames=9, size=48, category=category, ops=ops.split("+"))
        args = (clip.target, clip.target, clip.mask, clip.verify, clip.operation)
        truth = score_edit(clip.source, *args)
        assert truth.ea == pytest.approx(1.0), (clip.operation, truth.details["ea"])
        assert "fallback" not in json.dumps(truth.details["ea"]), (clip.operation, truth.details["ea"])
        assert score_edit(clip.source, clip.source, *args[1:]).ea < 0.3, clip.operation


def test_ssim_map_equals_a_conv2d_reference() -> None:
    """The banded-matmul blur must equal the textbook separable gaussian convolution."""
    import torch.nn.functional as F

    from viva_core.eval.metrics import SSIM_C1, SSIM_C2, _gaussian_1d, ssim_map

    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 40, 48, 3, generator=g)
    y = (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    k = _gaussian_1d(11, 1.5)
    a, b = x.permute(0, 3, 1, 2), y.permute(0, 3, 1, 2)
    st = torch.stack([a, b, a * a, b * b, a * b]).reshape(-1, 1, 40, 48)
    bl = F.conv2d(F.conv2d(st, k.view(1, 1, 1, 11)), k.view(1, 1, 11, 1)).reshape(5, 3, 3, 30, 38)
    ma, mb, aa, bb, ab = bl
    ref = ((2 * ma * mb + SSIM_C1) * (2 * (ab - ma * mb) + SSIM_C2)) / (
        (ma * ma + mb * mb + SSIM_C1) * (aa - ma * ma + bb - mb * mb + SSIM_C2)
    )
    torch.testing.assert_close(ssim_map(x, y), ref.mean(1), rtol=0, atol=1e-5)


def test_dilate_equals_a_max_pool_reference_and_frames_refuse_non_finite() -> None:
    """dilate ORs shifted masks: it must equal the (2r+1)² max-pool it replaced, at the borders and for radii
    larger than the frame; the one-pass NaN/Inf check must catch each of NaN, +Inf and -Inf."""
    import torch.nn.functional as F

    from viva_core.eval.metrics import _frames, dilate

    g = torch.Generator().manual_seed(0)
    for t, h, w, r in itertools.product((1, 3), (1, 2, 7), (1, 5, 9), (1, 2, 3)):
        m = torch.rand(t, h, w, generator=g) < 0.15
        want = F.max_pool2d(m.float().unsqueeze(1), 2 * r + 1, stride=1, padding=r).squeeze(1) > 0.5
        assert torch.equal(dilate(m, r), want), (t, h, w, r)
    x = torch.rand(2, 4, 4, 3, generator=g)
    for bad in (math.nan, math.inf, -math.inf):
        y = x.clone()
        y[1, 2, 3, 0] = bad
        with pytest.raises(InputError, match="NaN/Inf"):
            _frames(y, "output")
    assert torch.equal(_frames(x * 2 - 0.5, "output"), (x * 2 - 0.5).clamp(0, 1))


def test_eval_takes_bundled_for_the_editor_and_the_judge(tmp_path):
    """`--editor bundled --judge bundled`, as `viva edit` takes `--judge bundled`: the small models, no paths."""
    from viva_core import bundled

    manifest = bundled.EXAMPLE.with_suffix(".jsonl")
    report = tmp_path / "r"
    args = ["eval", str(manifest), "--editor", "bundled", "--judge", "bundled", "--ceiling", "--report", str(report)]
    assert main([*args, "--dtype", "fp32", "--vlm-dtype", "fp32", "--device", "cpu"]) == 0
    saved = json.loads((report / "report.json").read_text())
    assert saved["overall"]["count"] == 1 and saved["overall"]["ea"] > 0.5  # the VAE round trip of the truth
    assert saved["judge_agreement"]["n"] == 2  # the bundled judge scored the output and the source
    per_question = saved["judge_agreement"]["per_question"]  # and each question on the output alone; PC has no
    assert [per_question[q]["n"] for q in ("EA", "PC", "GN", "GR")] == [2, 0, 1, 1]  # label: inverting is whole-frame
