"""`evaluate`: the evaluation loop over a manifest (read, edit or load the output, align, score, ask the
judge, aggregate) and the manifest fields only the benchmark reads."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..data import EditRecord, load_manifest, read_frames
from ..errors import InputError
from ..judge import DIMENSIONS
from ..runtime import ProgressFn
from ..video import PathLike, read_video, write_video
from .alignment import _shift_boxes, align
from .metrics import _frames, _mask, derive_mask
from .report import EditPreview, EvalReport, make_preview
from .score import JUDGE_QUESTIONS, EditScore, aggregate, judge_agreement, judge_item, score_edit
from .verifiers import edit_accuracy

if TYPE_CHECKING:
    from ..judge import Judge

CLIP_FPS = 8.0  # frame rate of saved outputs when the source is an npz clip (`viva synth`'s default)


def manifest_extras(path: PathLike) -> dict[int, dict]:
    """The fields `load_manifest` ignores (operation, verify, attribute, referring, ...) per line number."""
    extras: dict[int, dict] = {}
    for number, line in enumerate(Path(path).expanduser().read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                extras[number] = obj
    return extras


def _as_output(result) -> torch.Tensor:
    """An editor_fn's result: frames, or an object with `.frames` (EditResult)."""
    return _frames(getattr(result, "frames", result), "editor output")


def evaluate(
    manifest: PathLike,
    editor_fn: Callable[[EditRecord, torch.Tensor], torch.Tensor] | None = None,
    *,
    outputs_dir: PathLike | None = None,
    judge: Judge | None = None,
    limit: int | None = None,
    progress: ProgressFn | None = None,
    max_frames: int | None = None,
    judge_frames: int = 4,
    previews: int = 8,
) -> EvalReport:
    """Score every record of a manifest with ground truth (target_video; mask_video optional).

    Outputs come from `editor_fn(record, source_frames)` (saved as `outputs_dir/<index>.mp4` when
    `outputs_dir` is given), or without `editor_fn` from those files. All inputs are checked before any
    compute. With a `judge`, its P(Yes) to each question is compared with that question's verifier (see module
    doc).
    `previews` edits get frame strips in the HTML report."""
    if editor_fn is None and outputs_dir is None:
        raise InputError(
            "evaluate needs outputs: pass editor_fn (run an editor) or outputs_dir (a folder of <index>.mp4 edits)."
        )
    if limit is not None and limit < 1:
        raise InputError(f"limit={limit} must be at least 1, or None for every record.")
    records = load_manifest(manifest, max_frames=max_frames)[:limit]
    extras = manifest_extras(manifest)
    out_dir = None if outputs_dir is None else Path(outputs_dir).expanduser()
    problems = [
        f"line {r.line}: no target_video; the exact benchmark needs the ground-truth edit"
        for r in records
        if r.target_video is None
    ]
    if editor_fn is None:
        problems += [
            f"line {r.line}: output {out_dir / f'{r.index}.mp4'} not found"
            for r in records
            if not (out_dir / f"{r.index}.mp4").is_file()
        ]
    if problems:
        raise InputError(
            f"{manifest}: {len(problems)} record(s) cannot be scored:\n" + "\n".join(f"  {p}" for p in problems[:50])
        )

    scores: list[EditScore] = []
    shown: list[EditPreview] = []
    judged: list[dict] = []
    for done, record in enumerate(records, start=1):
        extra = extras.get(record.line, {})
        source_frames, fps = read_frames(record.source_video, max_frames)
        target = read_frames(record.target_video, max_frames, "target_video")[0]
        mask = (
            None
            if record.mask_video is None
            else read_frames(record.mask_video, max_frames, "mask_video")[0].mean(dim=-1)
        )
        if editor_fn is not None:
            output = _as_output(editor_fn(record, source_frames))
            if out_dir is not None:
                write_video(out_dir / f"{record.index}.mp4", output, fps or CLIP_FPS)
        else:
            output = read_video(out_dir / f"{record.index}.mp4", max_frames=max_frames, with_audio=False).frames
        output, source, target, mask, how = align(output, source_frames, target, mask)
        verify = extra.get("verify") if isinstance(extra.get("verify"), dict) else None
        if verify is not None and (how["top"] or how["left"] or how["frames"] < source_frames.shape[0]):
            verify = _shift_boxes(verify, how["frames"], how["top"], how["left"], *source_frames.shape[1:3])
        operation = extra.get("operation") if isinstance(extra.get("operation"), str) else None
        score = score_edit(source, output, target, mask, verify, operation, index=record.index, category=record.type)
        score.details.update(
            instruction=record.instruction,
            line=record.line,
            alignment=how,
            verify_given=verify is not None,
            **{k: extra[k] for k in ("attribute", "referring") if k in extra},
        )
        if judge is not None:
            # the output and the unedited source (the EA baseline) in one shared forward
            rows = judge.score_batch(
                [source, source], [output, source], [record.instruction] * 2, num_frames=judge_frames
            ).tolist()
            verdict, baseline = (dict(zip(DIMENSIONS, row)) for row in rows)
            edit_region = derive_mask(source, target) if mask is None else _mask(mask)
            source_ea = edit_accuracy(source, source, target, edit_region, verify, operation)[0]
            score.details["judge"] = verdict
            for question in JUDGE_QUESTIONS:  # each question against its own verifier, on the output
                verifier = getattr(score, question.lower())
                if question in verdict and verifier is not None:  # PC of a whole-frame edit: no label
                    judged.append(judge_item(record.index, "output", question, verdict[question], verifier))
            judged.append(judge_item(record.index, "source", "EA", baseline["EA"], source_ea))
        scores.append(score)
        if len(shown) < previews:
            shown.append(make_preview(record.index, record.instruction, source, output, target))
        if progress is not None:
            progress(done, len(records))

    def grouped(key: Callable[[EditScore], str]) -> dict[str, dict]:
        groups: dict[str, list[EditScore]] = {}
        for s in scores:
            groups.setdefault(key(s), []).append(s)
        return {name: aggregate(group) for name, group in sorted(groups.items())}

    return EvalReport(
        manifest=str(manifest),
        scores=scores,
        by_category=grouped(lambda s: s.category),
        by_operation=grouped(lambda s: s.operation),
        overall=aggregate(scores),
        judge_agreement=judge_agreement(judged) if judge is not None else None,
        previews=shown,
    )
