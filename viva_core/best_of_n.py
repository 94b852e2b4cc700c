"""Self-reflection at inference time: edit with N seeds, let the judge score each, keep the best."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Optional

from .editor import Conditioning, Editor
from .errors import InputError
from .judge import DIMENSIONS, Judge, JudgeResult
from .pipeline import EditResult, EditSettings, edit_encoded_batch, edit_trunk, encode_source, unconditional
from .runtime import ProgressFn, no_progress
from .step_cache import StepCache, StepCacheCount
from .video import Video


@dataclass
class BestOfN:
    """Every candidate's seed and judgement, and the best candidate's edit: the others' videos are dropped as soon
    as they are beaten (N full videos would otherwise stay in memory)."""

    seeds: list[int]
    judgements: list[JudgeResult]
    best: EditResult
    previews: Optional[StepCacheCount] = None  # judged as step-cached previews: their DiT calls, all candidates

    @property
    def best_index(self) -> int:
        return self.seeds.index(self.best.seed)

    @property
    def best_judgement(self) -> JudgeResult:
        return self.judgements[self.best_index]

    def rows(self) -> list[dict]:
        return [
            {
                "seed": seed,
                **{d: round(j.scores[d], 4) for d in DIMENSIONS},
                "overall": round(j.overall, 4),
                "best": i == self.best_index,
            }
            for i, (seed, j) in enumerate(zip(self.seeds, self.judgements))
        ]

    def table(self) -> str:
        """Plain-text table, best row marked with '*'; first, what was judged when it was previews."""
        head = ["seed", *DIMENSIONS, "overall"]
        header = "  ".join(f"{h:>8}" for h in head)
        lines = (
            []
            if self.previews is None
            else [
                f"scores of step-cached previews ({self.previews.label}: {self.previews.computed} of "
                f"{self.previews.calls} DiT calls computed); the video kept is seed {self.best.seed}'s full edit"
            ]
        )
        lines.append(header)
        for row in self.rows():
            cells = [f"{row['seed']:>8}"] + [f"{row[h]:>8.3f}" for h in head[1:]]
            lines.append("  ".join(cells) + ("  *" if row["best"] else ""))
        # the winner was picked by this judge: say what its pick is worth (nothing when its folder records no doubt)
        lines += self.best_judgement.caveat_lines(width=len(header))
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps({"best_seed": self.best.seed, "candidates": self.rows()}, indent=2)


def best_of_n(
    editor: Editor,
    judge: Judge,
    video: Video,
    cond: Conditioning,
    instruction: str,
    *,
    n: int,
    settings: EditSettings = EditSettings(),  # noqa: B008 (frozen)
    negative: Optional[Conditioning] = None,
    num_frames: int = 4,
    batch: int = 1,
    shared_steps: int = 0,
    previews: Optional[StepCache] = None,
    progress_factory: Callable[[int], ProgressFn] = lambda i: no_progress,
) -> BestOfN:
    """Seeds settings.seed .. settings.seed + n - 1; ties keep the lowest seed. The source is encoded once and CFG's
    negative once for all N (each `edit` would encode both again). `batch` candidates are sampled together
    (`edit_encoded_batch`: one DiT call per step for all of them; the same edits up to kernel rounding), then decoded
    and judged one by one; `progress_factory` gets the index of each batch's first candidate (0 also for the shared
    steps). `shared_steps` > 0: the first seed's first steps are run once and every candidate branches off them
    (`pipeline.edit_trunk`), saving (n - 1) x shared_steps DiT steps; the candidates are then branches, not the
    seeds' plain edits. Measured with the bundled editor, 4 of 12 steps shared keep each candidate's quality but halve
    the spread best-of-N picks from (docs/small_models.md, section 34), so neither the CLI nor the node offers it.
    `previews`: the candidates are sampled with this step cache (cheaper, a little off the full edit) and judged, then
    only the best seed is rendered by `editor` as it is configured (progress index n): the video kept is that seed's
    plain edit, the judgements are of its preview (docs/small_models.md, sections 37-38; bench/RESULTS.md)."""
    if n < 1:
        raise InputError(f"best-of-N needs n >= 1, got {n}.")
    if batch < 1:
        raise InputError(f"best-of-N samples candidates in batches of >= 1, got {batch}.")
    if shared_steps < 0:
        raise InputError(f"best-of-N's shared_steps must be >= 0, got {shared_steps}.")
    if shared_steps and previews is not None:
        raise InputError(
            "best-of-N's previews render the winning seed's plain edit, while shared steps make every candidate a "
            "branch of the first seed's trunk: use one of them."
        )
    resolved = settings.resolved(editor.sampling_defaults)
    resolved.check()
    if negative is None and resolved.cfg != 1.0:
        negative = unconditional(editor)
    source = encode_source(editor, video.frames)
    trunk = None
    if shared_steps and n > 1:
        trunk = edit_trunk(
            editor, source, cond, shared_steps, negative=negative, settings=settings, progress=progress_factory(0)
        )
    candidate_editor = editor if previews is None else editor.with_step_cache(previews)
    seeds, judgements, best = [], [], None
    previewed = None if previews is None else StepCacheCount(previews.label())
    for first in range(0, n, batch):
        results = edit_encoded_batch(
            candidate_editor,
            source,
            cond,
            [settings.seed + i for i in range(first, min(n, first + batch))],
            negative=negative,
            settings=settings,
            fps=video.fps,
            audio=video.audio,
            progress=progress_factory(first),
            trunk=trunk,
        )
        if previewed is not None:  # one count per batch: its candidates share the DiT calls
            previewed.calls += results[0].step_cache.calls
            previewed.computed += results[0].step_cache.computed
        for r in results:
            judged = judge.score(video.frames[: r.frames.shape[0]], r.frames, instruction, num_frames=num_frames)
            if best is None or judged.overall > max(j.overall for j in judgements):
                best = r
            seeds.append(r.seed)
            judgements.append(judged)
        del results  # the beaten candidates' videos go now, not at the next batch
    if previews is not None:
        (best,) = edit_encoded_batch(
            editor,
            source,
            cond,
            [best.seed],
            negative=negative,
            settings=settings,
            fps=video.fps,
            audio=video.audio,
            progress=progress_factory(n),
        )
    return BestOfN(seeds, judgements, best, previewed)
