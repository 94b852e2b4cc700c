"""Stage `judge_data` of `viva pretrain`: an editor's own outputs on the training clips, labelled by the benchmark's
verifiers, for the judge stage to train on (`judge.editor_outputs`, `judge.editor_share`).

Why: a judge trained only on corrupted ground truths (`judge.CANDIDATE_LABELS`) is at chance on real editor outputs
(ROC-AUC 0.46-0.51 per question against the verifiers; docs/small_models.md, section 29): its negatives (the source,
a blend, flicker, blur) are not the editor's failures (a wrong or missing edit in a soft, re-encoded frame). Here
the labels are the ones the benchmark scores with, so nothing but the judge's capacity stands between it and them.

The folder it writes: `frames.npy` (uint8 [M, T, H, W, 3], what the judge sees) and `labels.jsonl` (one line per
output, same order: the clip's npz, a CRC of its source frames so a different manifest is caught, the seed, and the
four verifier scores), plus `judge_data_summary.json` (label balance per question, time).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ...errors import InputError
from ...eval.score import JUDGE_QUESTIONS as QUESTIONS
from ...runtime import ProgressFn, no_progress, parse_device
from .clips import ClipSet, frames_float, load_clip_set
from .config import ScratchConfig
from .loop import _one_thread, _write_json

log = logging.getLogger(__name__)

FRAMES_FILE = "frames.npy"
LABELS_FILE = "labels.jsonl"


def source_crc(frames: torch.Tensor) -> int:
    """A fingerprint of a clip's uint8 source frames: ties an output to the clip it was made from."""
    return zlib.crc32(frames.contiguous().numpy().tobytes())


@dataclass
class EditorOutputs:
    """A `judge_data` folder matched to the judge's clips: output j is an edit of clip `clip[j]`."""

    frames: np.ndarray  # uint8 [M, T, H, W, 3], memory-mapped (the judge's loader workers share its pages)
    clip: list[int]
    labels: list[dict[str, Optional[bool]]]  # per question: verifier score >= threshold; None = no verifier label
    scores: Optional[list[dict[str, Optional[float]]]] = None  # the verifier scores behind the labels
    by_clip: dict[int, list[int]] = dataclasses.field(init=False, repr=False)  # the outputs of each clip

    def __post_init__(self) -> None:
        self.by_clip = {}
        for k, c in enumerate(self.clip):
            self.by_clip.setdefault(c, []).append(k)

    def __len__(self) -> int:
        return len(self.clip)

    def sibling(self, j: int, rng: np.random.Generator) -> Optional[int]:
        """Another output of output j's clip (drawn by `rng`), or None where the clip has only this one."""
        others = [k for k in self.by_clip[self.clip[j]] if k != j]
        return others[int(rng.integers(len(others)))] if others else None

    def preferences(self, j: int, k: int, margin: float) -> list[int]:
        """Per question (QUESTIONS order): +1 where output j is the better of outputs j and k, -1 where k is, 0 where
        neither or either is unlabelled. margin 0: the Yes/No labels differ; > 0: the scores differ by more."""
        if margin <= 0:
            a, b = self.labels[j], self.labels[k]
            return [0 if a[q] is None or b[q] is None else int(a[q]) - int(b[q]) for q in QUESTIONS]
        if self.scores is None:
            raise ValueError("EditorOutputs.preferences with a margin needs the verifier scores (load_editor_outputs)")
        a, b = self.scores[j], self.scores[k]
        return [
            0 if a[q] is None or b[q] is None or abs(a[q] - b[q]) <= margin else (1 if a[q] > b[q] else -1)
            for q in QUESTIONS
        ]


def load_editor_outputs(folder: str | Path, clips: ClipSet, threshold: float) -> EditorOutputs:
    """The outputs of a `judge_data` folder whose clips are in `clips` (the judge's manifest, maybe limited), each
    checked against its clip's source frames; an output of a clip outside the set is left out."""
    root = Path(folder)
    frames_path, labels_path = root / FRAMES_FILE, root / LABELS_FILE
    if not (frames_path.is_file() and labels_path.is_file()):
        raise InputError(
            f"{root}: no {FRAMES_FILE} and {LABELS_FILE}; judge.editor_outputs takes a folder written by "
            "`viva pretrain` stage judge_data."
        )
    try:
        frames = np.load(frames_path, mmap_mode="r", allow_pickle=False)
        lines = [json.loads(x) for x in labels_path.read_text(encoding="utf-8").splitlines() if x.strip()]
    except (OSError, ValueError) as e:  # a truncated array, a line that is not JSON
        raise InputError(f"{root}: unreadable ({e}); write the folder again with stage judge_data.") from e
    if frames.dtype != np.uint8 or frames.ndim != 5 or len(frames) != len(lines):
        raise InputError(
            f"{frames_path}: {frames.dtype} {frames.shape} does not hold the {len(lines)} uint8 videos that "
            f"{labels_path.name} lists; write the folder again with stage judge_data."
        )
    if frames.shape[1:] != tuple(clips.source.shape[1:]):
        raise InputError(
            f"{frames_path}: videos {frames.shape[1:]} but the judge's clips are {tuple(clips.source.shape[1:])}; "
            "make the outputs from the same manifest."
        )
    where = {rec["npz"]: i for i, rec in enumerate(clips.records)}
    keep, clip, labels, scores, checked = [], [], [], [], {}
    for j, line in enumerate(lines):
        if not (isinstance(line, dict) and {"npz", "source_crc", "scores"} <= line.keys()):
            raise InputError(f"{labels_path} line {j + 1}: needs npz, source_crc and scores; write it again.")
        c = where.get(line["npz"])
        if c is None:
            continue
        if c not in checked:
            checked[c] = source_crc(clips.source[c]) == int(line["source_crc"])
        if not checked[c]:
            raise InputError(
                f"{labels_path} line {j + 1}: made from another clip than {line['npz']} of the judge's manifest "
                "(its source frames differ); judge.editor_outputs must come from data.manifest's clips."
            )
        keep.append(j)
        clip.append(c)
        score = {q: None if line["scores"].get(q) is None else float(line["scores"][q]) for q in QUESTIONS}
        scores.append(score)
        labels.append({q: None if score[q] is None else score[q] >= threshold for q in QUESTIONS})
    if not keep:
        raise InputError(f"{root}: none of its {len(lines)} outputs is of a clip in data.manifest's (limited) clips.")
    if len(keep) < len(lines):
        log.info("judge_data: %d of %d outputs are of clips in this run", len(keep), len(lines))
    return EditorOutputs(frames if len(keep) == len(lines) else frames[keep], clip, labels, scores)


class _Scoring(torch.utils.data.Dataset):
    """Item j: the benchmark's scores (`score_edit`, what `viva eval` reports) of output j against its clip."""

    def __init__(self, clips: ClipSet, outputs: torch.Tensor, clip: list[int]):
        self.clips, self.outputs, self.clip = clips, outputs, clip

    def __len__(self) -> int:
        return len(self.clip)

    def __getitem__(self, j: int) -> dict[str, Optional[float]]:
        from ...eval import score_edit

        c, rec = self.clip[j], self.clips.records[self.clip[j]]
        verify = rec.get("verify") if isinstance(rec.get("verify"), dict) else None
        operation = rec.get("operation") if isinstance(rec.get("operation"), str) else None
        s = score_edit(
            frames_float(self.clips.source[c]),
            frames_float(self.outputs[j]),
            frames_float(self.clips.target[c]),
            self.clips.mask[c],
            verify,
            operation,
        )
        return {"EA": s.ea, "PC": s.pc, "GN": s.gn, "GR": s.gr}


def output_seed(seed: int, clip: int, k: int) -> int:
    """The noise seed of clip `clip`'s k-th output: `viva edit --seed` with it gives the same edit."""
    return seed * 1_000_003 + clip * 97 + k


def _sample_rows(dit, src, cond, negative, noise, settings, dtype, seeds: int = 1, shared_steps: int = 0):
    """Latents of one batch of rows (source latents, text tokens, noise; row i one edit), CFG against `negative`.
    With `shared_steps`, each run of `seeds` rows (one clip) branches off its first row's first steps, as best-of-N
    does (`sampling.shared_trunk`, `branch_starts`)."""
    from ...pipeline import guided_velocity
    from ...sampling import branch_starts, sample, shared_trunk

    def velocity(src, cond):
        text = cond if settings.cfg == 1.0 else torch.cat([cond, negative.expand(cond.shape[0], -1, -1)])
        return lambda x, sigma: guided_velocity(dit, x, src, sigma, text, settings.cfg, dtype)

    run = dict(steps=settings.steps, shift=settings.shift, strength=settings.strength, sampler=settings.sampler)
    resume = None
    if shared_steps:
        trunk = shared_trunk(
            velocity(src[::seeds], cond[::seeds]), noise[::seeds], src[::seeds], shared_steps=shared_steps, **run
        )
        continues = torch.arange(noise.shape[0]) % seeds == 0
        resume = (trunk.step, branch_starts(trunk, noise, continues))
    return sample(velocity(src, cond), noise, src, resume=resume, **run)


def _editor_outputs(
    editor, clips: ClipSet, seeds: int, settings, seed: int, per_call: int, progress: ProgressFn, shared_steps: int = 0
):
    """uint8 [N * seeds, T, H, W, 3]: `seeds` edits of every clip (clip-major), `per_call` clips per DiT batch,
    sampled as `viva eval` samples (CFG against the empty prompt, the editor's shift and sampler); with
    `shared_steps`, branched as best-of-N branches them."""
    from ...pipeline import decode_latents_batch, pad_tokens, seed_noise, unconditional
    from .vae import encode_clips

    n, dev = len(clips), editor.device
    text = {}
    for rec in clips.records:
        if rec["instruction"] not in text:
            text[rec["instruction"]] = editor.encode_text(rec["instruction"]).embeds
    negative = unconditional(editor).embeds
    length = max([editor.max_text_tokens, negative.shape[1], *(e.shape[1] for e in text.values())])
    negative = pad_tokens(negative, length).to(dev, editor.dtype)
    out = []
    with editor.dit_with_loras() as (dit, _), torch.no_grad():
        for lo in range(0, n, per_call):
            idx = list(range(lo, min(lo + per_call, n)))
            with editor.on_device(editor.vae) as vae:
                src = encode_clips(vae, clips.source[idx], dev).repeat_interleave(seeds, 0)
            rows = [pad_tokens(text[clips.records[c]["instruction"]], length) for c in idx for _ in range(seeds)]
            cond = torch.cat(rows).to(dev, editor.dtype)
            one = (1, *src.shape[1:])
            noise = torch.cat([seed_noise(one, output_seed(seed, c, s)) for c in idx for s in range(seeds)])

            z = _sample_rows(dit, src, cond, negative, noise.to(dev), settings, editor.dtype, seeds, shared_steps)
            video = decode_latents_batch(editor, z)
            if not torch.isfinite(video).all():
                raise InputError("judge_data: the editor decoded NaN/Inf frames; run it in fp32 (judge.editor_dtype).")
            out.append((video * 255).round().to(torch.uint8))
            progress(idx[-1] + 1, n)
    return torch.cat(out)


def write_judge_data(cfg: ScratchConfig, progress: ProgressFn = no_progress) -> Path:
    from ...editor import EditorOptions, load_editor
    from ...safe_io import atomic_path, write_text_atomic
    from ...settings import EditSettings

    sec, out, device = cfg.judge, Path(cfg.output_dir) / "judge_data", parse_device(cfg.device)
    clips = load_clip_set(cfg.data.manifest, cfg.data.limit)
    editor = load_editor(sec.editor, options=EditorOptions(dtype=sec.editor_dtype, device=str(device)))
    t, h, w = clips.source.shape[1:4]
    if (t - 1) % editor.temporal_factor or (editor.native_size and editor.native_size != (h, w)):
        raise InputError(
            f"{cfg.data.manifest}: clips of {t} frames at {h}x{w}; {sec.editor} edits 4k+1 frames at "
            f"{editor.native_size}. Make the clips with `viva synth` at the editor's size."
        )
    settings = EditSettings(steps=sec.sample_steps, cfg=sec.guidance).resolved(editor.sampling_defaults)
    settings.check()
    start = time.perf_counter()
    frames = _editor_outputs(
        editor, clips, sec.seeds, settings, cfg.seed, cfg.optim.batch_size, progress, sec.shared_steps
    )
    made = time.perf_counter() - start
    del editor
    clip = [c for c in range(len(clips)) for _ in range(sec.seeds)]
    loader = torch.utils.data.DataLoader(
        _Scoring(clips, frames, clip),
        batch_size=None,
        num_workers=cfg.optim.workers,
        worker_init_fn=_one_thread,
    )
    scores = list(loader)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / FRAMES_FILE) as tmp:  # renamed when whole: an interrupted run leaves no truncated array
        np.save(tmp, frames.numpy(), allow_pickle=False)
    crc = [source_crc(clips.source[c]) for c in range(len(clips))]
    lines = [
        json.dumps({"npz": clips.records[c]["npz"], "source_crc": crc[c], "seed": j % sec.seeds, "scores": s})
        for j, (c, s) in enumerate(zip(clip, scores))
    ]
    write_text_atomic(out / LABELS_FILE, "\n".join(lines) + "\n")
    summary = {
        "outputs": len(clip),
        "clips": len(clips),
        "settings": dataclasses.asdict(settings),
        "seconds_sampling": made,
        "seconds": time.perf_counter() - start,
        "positives": label_balance(scores, sec.threshold),
        "mean_scores": {q: _mean([s[q] for s in scores if s[q] is not None]) for q in QUESTIONS},
    }
    _write_json(out / "judge_data_summary.json", {"config": dataclasses.asdict(cfg), "result": summary})
    log.info("judge_data: %s", summary)
    return out


def label_balance(scores: list[dict[str, Optional[float]]], threshold: float) -> dict[str, list[int]]:
    """Per question: [outputs labelled Yes, labelled No] at `threshold` (unlabelled outputs in neither)."""
    given = {q: [s[q] for s in scores if s[q] is not None] for q in QUESTIONS}
    return {q: [sum(v >= threshold for v in given[q]), sum(v < threshold for v in given[q])] for q in QUESTIONS}


def _mean(values: list[float]) -> Optional[float]:
    return float(np.mean(values)) if values else None
