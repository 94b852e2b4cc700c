"""The judge against the verifiers per question (EA, PC, GN, GR): `judge_agreement`'s `per_question` checked
against a brute-force pairwise AUC and hand-counted accuracy, the one-class case said in words in the reports, and
`evaluate(..., judge=...)` end to end with a tiny random VLM judge on npz clips."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from viva_core.eval import JUDGE_QUESTIONS, EvalReport, aggregate, evaluate, judge_agreement, judge_item, score_edit
from viva_core.eval.loop import manifest_extras

OLD_KEYS = {"n", "positives", "negatives", "threshold", "accuracy", "roc_auc", "items"}


def brute_auc(p: list[float], labels: list[bool]) -> float | None:
    """P(a positive's score > a negative's) + ½ P(tie), counted over every pair."""
    pos = [x for x, y in zip(p, labels) if y]
    neg = [x for x, y in zip(p, labels) if not y]
    if not pos or not neg:
        return None
    return sum((a > b) + 0.5 * (a == b) for a in pos for b in neg) / (len(pos) * len(neg))


def by_hand(p: list[float], labels: list[bool], threshold: float = 0.5) -> dict:
    right = 0
    for x, y in zip(p, labels):
        if (x >= threshold and y) or (x < threshold and not y):
            right += 1
    pos = [x for x, y in zip(p, labels) if y]
    neg = [x for x, y in zip(p, labels) if not y]
    return {
        "n": len(p),
        "positives": len(pos),
        "negatives": len(neg),
        "accuracy": right / len(p),
        "roc_auc": brute_auc(p, labels),
        "mean_p_yes_positives": sum(pos) / len(pos) if pos else None,
        "mean_p_yes_negatives": sum(neg) / len(neg) if neg else None,
    }


def assert_matches(row: dict, want: dict) -> None:
    for key, value in want.items():
        if value is None:
            assert row[key] is None, key
        else:
            assert row[key] == pytest.approx(value, abs=1e-12), key


def constructed_items(seed: int = 0) -> list[dict]:
    """Outputs of 40 records scored on all four questions (few distinct P(Yes): many ties), plus 40 source items
    for EA; every GN verifier score passes and every GR one fails (one class each: no AUC), and PC's straddle the
    threshold exactly."""
    rng = np.random.default_rng(seed)
    items = []
    for i in range(40):
        for q in JUDGE_QUESTIONS:
            p = float(rng.integers(0, 6) / 5)
            verifier = {
                "EA": rng.random(),
                "PC": rng.choice([0.49, 0.5, 0.51]),
                "GN": 0.5 + rng.random() / 2,
                "GR": rng.random() * 0.49,
            }[q]
            items.append(judge_item(i, "output", q, p, float(verifier)))
        items.append(judge_item(i, "source", "EA", float(rng.integers(0, 6) / 5), 0.0))
    return items


def test_per_question_equals_brute_force_and_hand_counts():
    items = constructed_items()
    j = judge_agreement(items)
    assert list(j["per_question"]) == list(JUDGE_QUESTIONS)
    for q in JUDGE_QUESTIONS:
        mine = [it for it in items if it["question"] == q]
        labels = [it[q.lower()] >= 0.5 for it in mine]
        want = by_hand([it["p_yes"] for it in mine], labels)
        assert_matches(j["per_question"][q], want)
        assert j["per_question"][q]["items"] == mine
    ea = j["per_question"]["EA"]
    assert ea["n"] == 80 and sum(it["kind"] == "source" for it in ea["items"]) == 40
    gn, gr = j["per_question"]["GN"], j["per_question"]["GR"]
    assert gn["negatives"] == 0 and gn["roc_auc"] is None and gn["mean_p_yes_negatives"] is None
    assert gr["positives"] == 0 and gr["roc_auc"] is None and gr["mean_p_yes_positives"] is None
    assert j["per_question"]["PC"]["positives"] == sum(it["pc"] >= 0.5 for it in items if it["question"] == "PC")
    # the top level is EA's alone, with every key earlier report.json files had
    assert OLD_KEYS <= set(j) and all(j[k] == ea[k] for k in OLD_KEYS)
    # EA over the edits alone, without the unedited sources (the judge's ranking of the editor's outputs)
    edits = [it for it in items if it["question"] == "EA" and it["kind"] == "output"]
    assert_matches(j["ea_edits_only"], by_hand([it["p_yes"] for it in edits], [it["ea"] >= 0.5 for it in edits]))
    assert "items" not in j["ea_edits_only"]


def test_the_questions_are_the_judges():
    """score.py names the judge's questions without importing the VLM stack; they must stay the judge's."""
    from viva_core.judge import DIMENSIONS

    assert JUDGE_QUESTIONS == DIMENSIONS


def test_threshold_and_items_without_a_question():
    """An item without "question" is EA's (earlier callers); the threshold moves the accuracy, never the AUC; the
    verifier score exactly at the threshold is a positive."""
    assert judge_item(0, "output", "PC", 0.3, 0.5)["label"] is True
    assert judge_item(0, "output", "PC", 0.3, 0.4999)["label"] is False
    old = [{"p_yes": p, "label": y} for p, y in ((0.9, True), (0.6, False), (0.4, True), (0.1, False))]
    j = judge_agreement(old)
    assert j["accuracy"] == 0.5 and j["roc_auc"] == 0.75 and j["per_question"]["EA"]["n"] == 4
    assert list(j["per_question"]) == list(JUDGE_QUESTIONS) and j["per_question"]["GN"]["n"] == 0
    strict = judge_agreement(old, threshold=0.7)
    assert strict["accuracy"] == 0.75 and strict["roc_auc"] == 0.75 and strict["threshold"] == 0.7
    empty = judge_agreement([])
    assert empty["n"] == 0 and empty["accuracy"] is None and empty["roc_auc"] is None
    assert all(empty["per_question"][q]["n"] == 0 for q in JUDGE_QUESTIONS)


def test_reports_name_the_missing_class_instead_of_a_number(tmp_path):
    j = judge_agreement(constructed_items())
    report = EvalReport(
        manifest="m.jsonl", scores=[], by_category={}, by_operation={}, overall=aggregate([]), judge_agreement=j
    )
    table = report.table()
    lines = {
        line.split()[0]: line for line in table.splitlines() if line.split()[:1] and line.split()[0] in JUDGE_QUESTIONS
    }
    assert set(lines) == set(JUDGE_QUESTIONS)
    assert lines["GN"].endswith("none: no negatives") and lines["GR"].endswith("none: no positives")
    assert lines["EA"].endswith(f"{j['roc_auc']:.3f}")
    edits_line = next(line for line in table.splitlines() if line.startswith("EA, edits"))
    assert edits_line.endswith(f"{j['ea_edits_only']['roc_auc']:.3f}")
    page = report.write(tmp_path / "r") / "report.html"
    html = page.read_text()
    assert "none: no negatives" in html and "none: no positives" in html and "mean P(Yes), positives" in html
    saved = json.loads((tmp_path / "r" / "report.json").read_text())["judge_agreement"]
    assert saved["per_question"]["GN"]["roc_auc"] is None and saved["roc_auc"] == pytest.approx(j["roc_auc"])
    # a question without items (PC is undefined for whole-frame edits) keeps its row, said as such
    report.judge_agreement = judge_agreement([it for it in constructed_items() if it["question"] != "PC"])
    assert any(line.startswith("PC ") and line.endswith("none: no items") for line in report.table().splitlines())
    # a report.json written before the per-question rows (EA's keys only) still renders, as EA's row
    old = {k: j[k] for k in OLD_KEYS}
    report.judge_agreement = old
    assert any(line.startswith("EA ") for line in report.table().splitlines())
    assert f"{old['roc_auc']:.3f}" in report.table()


def test_evaluate_scores_each_question_against_its_verifier(tmp_path):
    """End to end with a tiny random VLM judge: each question's items are the outputs' P(Yes) to it (recomputed
    here with the judge itself) against the output's own verifier score of that dimension; EA adds the sources."""
    from tiny_vlm import build_tiny_vlm

    from viva_core.data import load_manifest, read_frames
    from viva_core.judge import Judge
    from viva_core.synth import generate
    from viva_core.vlm import load_vlm

    manifest = generate(tmp_path / "d", n=4, seed=3, format="npz", splits=(1, 0, 0), frames=5, size=32)["train"]
    judge = Judge(load_vlm(build_tiny_vlm(tmp_path / "vlm"), dtype="fp32", device="cpu"))

    def editor(record, source):
        """The truth, the source, the truth with noise, the source played backwards: labels that differ."""
        target = read_frames(record.target_video, None, "target_video")[0]
        noise = torch.rand(target.shape, generator=torch.Generator().manual_seed(record.index))
        return [target, source, (target + 0.3 * (noise - 0.5)).clamp(0, 1), source.flip(0)][record.index % 4]

    report = evaluate(manifest, editor, judge=judge, judge_frames=2, previews=0)
    j = report.judge_agreement
    extras = manifest_extras(manifest)
    p: dict[str, list[float]] = {q: [] for q in JUDGE_QUESTIONS}
    labels: dict[str, list[bool]] = {q: [] for q in JUDGE_QUESTIONS}
    source_p, source_labels = [], []

    for record, score in zip(load_manifest(manifest), report.scores):
        source = read_frames(record.source_video, None)[0]
        target = read_frames(record.target_video, None, "target_video")[0]
        mask = read_frames(record.mask_video, None, "mask_video")[0].mean(dim=-1) if record.mask_video else None
        output = editor(record, source)
        verdict = judge.score(source, output, record.instruction, num_frames=2)
        assert score.details["judge"] == pytest.approx(verdict.scores, abs=1e-6)
        for q in JUDGE_QUESTIONS:
            value = getattr(score, q.lower())
            if value is not None:
                p[q].append(verdict.scores[q])
                labels[q].append(value >= 0.5)
        extra = extras[record.line]
        as_source = score_edit(source, source, target, mask, extra.get("verify"), extra.get("operation"))
        source_p.append(judge.score(source, source, record.instruction, num_frames=2).scores["EA"])
        source_labels.append(as_source.ea >= 0.5)
    assert not any(source_labels)  # the unedited source fails EA by construction
    for q in JUDGE_QUESTIONS:
        got, extra_p, extra_labels = j["per_question"][q], [], []
        if q == "EA":  # EA's items also hold each record's unedited source
            extra_p, extra_labels = source_p, source_labels
        want = by_hand(p[q] + extra_p, labels[q] + extra_labels)
        for key in ("n", "positives", "negatives", "accuracy"):
            assert got[key] == pytest.approx(want[key], abs=1e-9), (q, key)
        if want["roc_auc"] is None:
            assert got["roc_auc"] is None, q
        else:
            assert got["roc_auc"] == pytest.approx(want["roc_auc"], abs=1e-6), q
        kinds = [it["kind"] for it in got["items"]]
        assert kinds.count("source") == (4 if q == "EA" else 0)
    assert j["per_question"]["EA"]["positives"] >= 1 and j["per_question"]["EA"]["negatives"] >= 4
    assert {k: j[k] for k in OLD_KEYS} == {k: j["per_question"]["EA"][k] for k in OLD_KEYS}
    assert "judge vs verifier per question" in report.table()
