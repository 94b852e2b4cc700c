"""Self-reflection at inference time: edit with N seeds, let the judge score each, keep the best."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Callable, Optional

from .editor import Conditioning, Editor
from .errors import InputError
from .judge import DIMENSIONS, Judge, JudgeResult
from .pipeline import EditResult, EditSettings, edit, unconditional
from .runtime import ProgressFn, no_progress
from .video import Video


@dataclass
class BestOfN:
    results: list[EditResult]
    judgements: list[JudgeResult]

    @property
    def best_index(self) -> int:
        return max(range(len(self.judgements)), key=lambda i: self.judgements[i].overall)

    @property
    def best(self) -> EditResult:
        return self.results[self.best_index]

    @property
    def best_judgement(self) -> JudgeResult:
        return self.judgements[self.best_index]

    def rows(self) -> list[dict]:
        return [
            {
                "seed": r.seed,
                **{d: round(j.scores[d], 4) for d in DIMENSIONS},
                "overall": round(j.overall, 4),
                "best": i == self.best_index,
            }
            for i, (r, j) in enumerate(zip(self.results, self.judgements))
        ]

    def table(self) -> str:
        """Plain-text table, best row marked with '*'."""
        head = ["seed", *DIMENSIONS, "overall"]
        lines = ["  ".join(f"{h:>8}" for h in head)]
        for row in self.rows():
            cells = [f"{row['seed']:>8}"] + [f"{row[h]:>8.3f}" for h in head[1:]]
            lines.append("  ".join(cells) + ("  *" if row["best"] else ""))
        # the winner was picked by this judge: say what its pick is worth (nothing when its folder records no doubt)
        lines += self.best_judgement.caveat_lines(width=len(lines[0]))
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
    progress_factory: Callable[[int], ProgressFn] = lambda i: no_progress,
) -> BestOfN:
    """Seeds settings.seed .. settings.seed + n - 1; ties keep the lowest seed. CFG's negative is encoded once for
    all N (edit would encode the empty prompt again for every seed)."""
    if n < 1:
        raise InputError(f"best-of-N needs n >= 1, got {n}.")
    if negative is None and settings.resolved(editor.sampling_defaults).cfg != 1.0:
        negative = unconditional(editor)
    results, judgements = [], []
    for i in range(n):
        s = dataclasses.replace(settings, seed=settings.seed + i)
        r = edit(
            editor,
            video.frames,
            cond,
            negative=negative,
            settings=s,
            fps=video.fps,
            audio=video.audio,
            progress=progress_factory(i),
        )
        results.append(r)
        judgements.append(judge.score(video.frames[: r.frames.shape[0]], r.frames, instruction, num_frames=num_frames))
    return BestOfN(results, judgements)
