"""Self-reflection judge (ReViSE): a VLM answers four Yes/No questions about an edit; the score is P(Yes).

For each dimension the VLM sees a few frames of the source video, then of the edited video, the instruction
and one question, and must answer Yes or No. The score is the probability of "Yes" at the answer position
(right after the assistant prefix of the chat template), restricted to the Yes/No tokens:

    P(Yes) = Σ_{y∈Yes} exp(l_y) / Σ_{t∈Yes∪No} exp(l_t)        (softmax over the Yes/No token ids, fp32)

where Yes/No are the single-token spellings "Yes", " Yes", "yes" / "No", " No", "no" the tokenizer has.
`yes_probability` is that formula alone; it is differentiable, so a trainer can use it as a reward.

Optionally (`difference=True`, or a judge folder whose `viva_judge.json` says `"difference_frames": true`, as
`viva pretrain judge` writes) the VLM also sees |edited - source| frames: a small judge learns from them what it
cannot learn from the two videos side by side (docs/small_models.md, section 5). A judge whose `viva_judge.json` says
`"frame_pairs": true` sees each shown moment as two adjacent frames in one temporal patch (`shown_moments`), which
carries the frame-to-frame change that temporal naturalness is about, at no extra token (section 85).
"""

from __future__ import annotations

import json
import math
import textwrap
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import torch
from PIL import Image

from .compat import qwen2_vl_position_ids, qwen2_vl_vision
from .errors import InputError, ModelLoadError, NonFiniteError
from .safe_io import read_json_object
from .video import uniform_frame_indices
from .vlm import (
    PAIRED_WITH,
    VLM,
    build_inputs,
    fit_max_side,
    forward_shared_images,
    generate_text,
    image_patches,
    processor_inputs,
    shrunk_size,
    temporal_pairs,
    to_model,
    to_pil_image,
)


class Dimension(NamedTuple):
    code: str
    name: str
    question: str  # formatted with {instruction}


# The four ReViSE dimensions: the one table of codes, names and questions.
QUESTIONS: tuple[Dimension, ...] = (
    Dimension("EA", "edit accuracy", "Does the edited video follow the instruction '{instruction}'?"),
    Dimension(
        "PC",
        "preservation consistency",
        "Apart from what the instruction '{instruction}' asks to change, are all other parts of the edited "
        "video (background, other objects, layout, camera) unchanged compared with the source video?",
    ),
    Dimension(
        "GN",
        "generation naturalness",
        "Is the edited video temporally smooth and natural, without flicker, jitter or visual artifacts?",
    ),
    Dimension("GR", "generation realism", "Does the edited video look realistic, like a real recorded video?"),
)
DIMENSIONS = tuple(d.code for d in QUESTIONS)  # ("EA", "PC", "GN", "GR")
JUDGE_INFO_FILE = "viva_judge.json"  # in a judge's VLM folder: how it was trained to see edits
DIFFERENCE_GAIN = 4.0  # |edited - source| x 4: a change of a quarter of the range shows as white

YES_VARIANTS = ("Yes", " Yes", "yes")
NO_VARIANTS = ("No", " No", "no")

RATIONALE_PROMPT = (
    "The instruction was '{instruction}'. In one or two sentences, say how well the edited video "
    "follows it, whether the rest of the source video is preserved, and whether the result looks "
    "natural and realistic."
)


@dataclass
class JudgeResult:
    """Scores in [0, 1] per dimension code, their mean, and an optional generated explanation."""

    scores: dict[str, float]
    overall: float
    rationale: str | None
    num_frames: int  # frames shown from each video
    instruction: str
    caveat: str | None = None  # set when the judge's folder records that it is no better than chance

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, indent=2)

    @classmethod
    def from_json(cls, text: str) -> JudgeResult:
        return cls(**json.loads(text))

    def caveat_lines(self, width: int) -> list[str]:
        """The caveat wrapped to `width` (the scores' own width, so a node showing both does not widen), or []."""
        return textwrap.wrap(self.caveat, width=max(width, 20)) if self.caveat else []

    def table_row(self) -> dict[str, str | float | int]:
        """One row for a results table / CSV (`csv.DictWriter(f, fieldnames=row.keys())`)."""
        return {
            "instruction": self.instruction,
            **{d: round(self.scores[d], 4) for d in DIMENSIONS},
            "overall": round(self.overall, 4),
            "num_frames": self.num_frames,
        }


def yes_probability(last_logits: torch.Tensor, yes_ids: Sequence[int], no_ids: Sequence[int]) -> torch.Tensor:
    """P(Yes) from next-token logits [..., V]: softmax restricted to the Yes/No ids, in fp32 (or the logits' wider
    dtype). Differentiable."""
    logits = last_logits.to(torch.promote_types(last_logits.dtype, torch.float32))
    yes = logits[..., list(yes_ids)]
    both = logits[..., list(yes_ids) + list(no_ids)]
    return torch.exp(torch.logsumexp(yes, dim=-1) - torch.logsumexp(both, dim=-1))


def yes_no_token_ids(tokenizer) -> tuple[list[int], list[int]]:
    """Ids of the Yes/No spellings the tokenizer encodes as a single (non-unknown) token."""

    def single(variants: Sequence[str], word: str) -> list[int]:
        ids: list[int] = []
        for v in variants:
            enc = tokenizer.encode(v, add_special_tokens=False)
            if (
                len(enc) == 1
                and enc[0] != tokenizer.unk_token_id
                and enc[0] not in ids
                and tokenizer.decode(enc).strip().lower() == word
            ):
                ids.append(enc[0])
        return ids

    return single(YES_VARIANTS, "yes"), single(NO_VARIANTS, "no")


def difference_frames(source: torch.Tensor, edited: torch.Tensor, gain: float = DIFFERENCE_GAIN) -> torch.Tensor:
    """Frame by frame |edited - source| x gain in 0..1 [T,H,W,3]: bright where the edit changed the video, black where
    it kept it. `edited` is resized to the source's size when they differ; T is the shorter of the two."""
    t = min(source.shape[0], edited.shape[0])
    wide = torch.promote_types(torch.promote_types(source.dtype, edited.dtype), torch.float32)
    src, edit = source[:t, ..., :3].to(wide), edited[:t, ..., :3].to(wide)
    if edit.shape[1:3] != src.shape[1:3]:
        edit = torch.nn.functional.interpolate(
            edit.permute(0, 3, 1, 2), size=src.shape[1:3], mode="bilinear", align_corners=False
        ).permute(0, 2, 3, 1)
    return ((edit - src).abs() * gain).clamp(0, 1)


def shown_moments(length: int, count: int, pairs: bool = False) -> list[tuple[int, int]]:
    """The frames a judge sees of a video of `length` frames, as the (first, second) frame of each temporal patch:
    `count` moments spread from first to last (`uniform_frame_indices`); for a judge that reads frame pairs, each
    moment's frame and the next (at the end the last two: the change into the last frame), else the frame twice (an
    image). Pairs carry what the GN verifier measures, frame-to-frame change, which frames spread over the clip do not
    (docs/small_models.md, section 83)."""
    moments = uniform_frame_indices(length, count)
    if not pairs:
        return [(i, i) for i in moments]
    last = max(length - 2, 0)
    return [(min(i, last), min(min(i, last) + 1, length - 1)) for i in moments]


def moment_frames(video: torch.Tensor, count: int, pairs: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """`shown_moments` of a video [T,...] as frames: (first frames [k,...], second frames [k,...]); without `pairs`
    the second is the first, the same tensor."""
    moments = shown_moments(video.shape[0], count, pairs)
    first = video[[i for i, _ in moments]]
    return first, (video[[j for _, j in moments]] if pairs else first)


def shown_differences(
    source: torch.Tensor, edited: torch.Tensor, num_frames: int, pairs: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """The difference frames a judge sees, at the moments of the source and edited frames it is shown (as many as the
    shorter video shows): (first frames [k,H,W,C], second frames), as `moment_frames`."""
    k = min(num_frames, source.shape[0], edited.shape[0])
    moments = zip(shown_moments(source.shape[0], k, pairs), shown_moments(edited.shape[0], k, pairs))
    diffs = [[difference_frames(source[a : a + 1], edited[b : b + 1]) for a, b in zip(s, e)] for s, e in moments]
    first = torch.cat([d[0] for d in diffs])
    return first, (torch.cat([d[1] for d in diffs]) if pairs else first)


Shown = Image.Image | tuple[Image.Image, Image.Image]  # a frame a chat shows; a pair shares one temporal patch


def frame_images(first: torch.Tensor, second: torch.Tensor, max_side: int | None = None) -> list[Shown]:
    """Frames as the images of a judge's chat: PIL images, or (image, next frame's image) pairs where `second` is
    not `first` (`moment_frames`)."""
    images = [to_pil_image(f, max_side=max_side) for f in first]
    if second is first:
        return images
    return [(a, to_pil_image(f, max_side=max_side)) for a, f in zip(images, second)]


def difference_images(
    source: torch.Tensor, edited: torch.Tensor, num_frames: int, max_side: int | None = None, pairs: bool = False
) -> list[Shown]:
    """`shown_differences` as the images a judge's chat holds (the judge trainer builds its inputs with this too)."""
    return frame_images(*shown_differences(source, edited, num_frames, pairs), max_side=max_side)


def judge_info(vlm_path: str | Path) -> dict | None:
    """The judge folder's `viva_judge.json` (how a project-trained judge sees edits and whether it writes text), or
    None for a folder without one (a chat VLM such as Qwen2.5-VL)."""
    info = Path(vlm_path) / JUDGE_INFO_FILE
    return read_json_object(info, "judge info") if info.is_file() else None


# Shown before the frames by a judge trained with `judge.instruction_first` (viva_judge.json "instruction_first"):
# in a causal VLM only tokens after the instruction can read it, so with the instruction last (the question) no
# frame token knows what the edit should touch; first, every source, edit and difference token can.
INSTRUCTION_LEAD = "The edit instruction: {instruction}"


def reads_instruction_first(vlm_path: str | Path) -> bool:
    """Whether the judge folder says it was trained with the instruction shown before the frames."""
    return bool((judge_info(vlm_path) or {}).get("instruction_first", False))


def reads_difference_frames(vlm_path: str | Path) -> bool:
    """Whether the judge folder says it was trained with difference frames."""
    return bool((judge_info(vlm_path) or {}).get("difference_frames", False))


def reads_frame_pairs(vlm_path: str | Path) -> bool:
    """Whether the judge folder says it was trained on frame pairs (`shown_moments`)."""
    return bool((judge_info(vlm_path) or {}).get("frame_pairs", False))


CHANCE_AUC = 0.6  # a recorded held-out ROC-AUC below this: the scores carry no evidence of edit quality
RELIABLE_AUC = 0.9  # a question whose recorded ranking of correct over corrupted edits is below this is named
RELIABLE_PAIR_AGREEMENT = 0.6  # a recorded within-clip pair agreement below this: best-of-N picks about at random


def judge_caveat(vlm_path: str | Path) -> str | None:
    """A warning to show with the scores of a judge whose folder records (viva_judge.json, written by
    recipes/small/judge_check.py --record) that it cannot tell edits from unedited sources (`held_out_roc_auc`), or
    that some questions rank correct above corrupted edits poorly (`held_out_question_aucs`) or rank an editor's own
    held-out outputs poorly against the verifiers (`editor_output_aucs`, from a `viva eval --judge` report), or
    (recipes/small/best_of_n_check.py --record) that it orders candidates of one edit about at random
    (`candidate_pair_agreement`; `candidate_clear_pair_agreement`, over the pairs whose verifier EA differs clearly,
    where recorded), which is what a best-of-N pick relies on."""
    info = judge_info(vlm_path) or {}
    auc = info.get("held_out_roc_auc")
    if not _is_number(auc):
        return None
    if auc < CHANCE_AUC:
        return (
            f"caution: this judge told held-out ground-truth edits from unedited sources with ROC-AUC {auc:.2f} "
            "(0.5 is chance), so its scores say little about this edit; use a chat VLM such as Qwen2.5-VL to judge."
        )
    parts = [
        f"{where} for " + ", ".join(f"{k} {v:.2f}" for k, v in weak.items())
        for where, key in (
            ("on corrupted edits", "held_out_question_aucs"),
            ("on an editor's outputs", "editor_output_aucs"),
        )
        if (weak := _weak_questions(info.get(key)))
    ]
    clear = _is_number(info.get("candidate_clear_pair_agreement"))
    agreement = info.get("candidate_clear_pair_agreement" if clear else "candidate_pair_agreement")
    weak_pick = _is_number(agreement) and agreement < RELIABLE_PAIR_AGREEMENT
    if not parts and not weak_pick:
        return None
    text = f"note: edited vs unedited held-out ROC-AUC {auc:.2f}"
    if parts:
        text += f", but below {RELIABLE_AUC} " + "; ".join(parts)
    if weak_pick:
        text += (
            f"; it ordered candidates of one edit as the verifiers did in {agreement:.2f} of "
            f"{'the pairs they tell clearly apart' if clear else 'pairs'} (0.5 is chance), "
            "so its best-of-N pick is close to a random one"
        )
    return text + ": a screen, not a verdict."


def _weak_questions(aucs: object) -> dict[str, float]:
    """The recorded per-question ROC-AUCs below RELIABLE_AUC (malformed entries ignored)."""
    items = aucs.items() if isinstance(aucs, dict) else ()
    return {k: v for k, v in items if k in DIMENSIONS and _is_number(v) and v < RELIABLE_AUC}


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def judge_generates_text(vlm_path: str | Path) -> bool:
    """Whether the judge can write a rationale. A judge trained from scratch on Yes/No answers only (``viva
    pretrain judge``, whose folder has viva_judge.json; the bundled small judge) never learned to write text and
    generates junk ("assistant assistant ..."); ``"generates_text"`` in that file says it explicitly. A folder
    without the file is a chat VLM, which can."""
    info = judge_info(vlm_path)
    return True if info is None else bool(info.get("generates_text", False))


def _as_video(frames: torch.Tensor, what: str) -> torch.Tensor:
    if isinstance(frames, Image.Image) or not isinstance(frames, torch.Tensor):
        raise InputError(f"{what}: expected frames as a tensor [T,H,W,C] float 0..1, got {type(frames).__name__}.")
    if frames.ndim == 3:
        frames = frames.unsqueeze(0)
    if frames.ndim != 4 or frames.shape[0] < 1 or frames.shape[-1] not in (1, 3, 4):
        raise InputError(f"{what}: expected frames [T,H,W,C] (or one image [H,W,C]), got shape {tuple(frames.shape)}.")
    return frames


def _check_questions(questions: Sequence[str]) -> None:
    if not questions or any(q not in DIMENSIONS for q in questions):
        raise InputError(f"judge questions {list(questions)}: each must be one of {list(DIMENSIONS)}.")


class Judge:
    """Scores (source, edited, instruction) with a VLM on the four ReViSE dimensions.

    `max_side` shrinks frames (longest side, pixels) before the processor sees them, which bounds the
    number of visual tokens; `batch_questions` runs the four questions as one left-padded batch (same
    scores as one at a time, more memory); `difference` also shows |edited - source| frames, `frame_pairs` each
    moment as two adjacent frames (None: what the judge folder's viva_judge.json says, else off)."""

    def __init__(
        self,
        vlm: VLM,
        *,
        max_side: int | None = 448,
        batch_questions: bool = True,
        difference: bool | None = None,
        frame_pairs: bool | None = None,
    ):
        self.vlm = vlm
        self.difference = reads_difference_frames(vlm.path) if difference is None else difference
        self.frame_pairs = reads_frame_pairs(vlm.path) if frame_pairs is None else frame_pairs
        ip = getattr(vlm.processor, "image_processor", None)
        if self.frame_pairs and getattr(ip, "temporal_patch_size", None) != 2:
            raise ModelLoadError(
                f"{vlm.path}: frame pairs need a Qwen2-VL-family image processor (a temporal patch of 2 frames), "
                f"not {type(ip).__name__}; turn frame_pairs off."
            )
        self.instruction_first = reads_instruction_first(vlm.path)
        self.generates_text = judge_generates_text(vlm.path)
        self.caveat = judge_caveat(vlm.path)
        self.max_side = max_side
        self.batch_questions = batch_questions
        self.yes_ids, self.no_ids = yes_no_token_ids(vlm.tokenizer)
        self._chat_tokens: dict[tuple, dict[str, torch.Tensor]] = {}  # score_batch's tokenized chats, by text and sizes
        self._layouts: dict[tuple, dict] = {}  # per image sizes: the processor's grids, and whether _expanded matched
        if not self.yes_ids or not self.no_ids:
            raise ModelLoadError(
                f"{vlm.path}: the tokenizer has no single-token spelling of "
                f"{'Yes' if not self.yes_ids else 'No'} (tried {YES_VARIANTS + NO_VARIANTS}), so "
                "P(Yes) cannot be read from the logits. Use a chat VLM such as Qwen2.5-VL."
            )

    # ------------------------------------------------------------------------------------------ prompts
    def _frames(self, frames: torch.Tensor, num_frames: int) -> list[Shown]:
        return frame_images(*moment_frames(frames, num_frames, self.frame_pairs), max_side=self.max_side)

    @staticmethod
    def messages(
        source: Sequence[Shown],
        edited: Sequence[Shown],
        text: str,
        difference: Sequence[Shown] = (),
        lead: str = "",
    ) -> list[dict]:
        """One user turn: [`lead`,] labelled source frames, labelled edited frames, [difference frames,] then `text`.
        A frame given as an (image, next image) pair is one image part carrying both (`vlm.PAIRED_WITH`)."""

        def image(shown: Shown) -> dict:
            if isinstance(shown, tuple):
                return {"type": "image", "image": shown[0], PAIRED_WITH: shown[1]}
            return {"type": "image", "image": shown}

        content: list[dict] = [{"type": "text", "text": lead + "\n"}] if lead else []
        content.append({"type": "text", "text": "Source video, before the edit (frames in time order):\n"})
        for i, img in enumerate(source):
            content += [{"type": "text", "text": f"Source frame {i + 1}: "}, image(img)]
        content.append({"type": "text", "text": "\nEdited video, after the edit (frames in time order):\n"})
        for i, img in enumerate(edited):
            content += [{"type": "text", "text": f"Edited frame {i + 1}: "}, image(img)]
        if difference:
            content.append({"type": "text", "text": "\nDifference, edited minus source (bright = changed):\n"})
            for i, img in enumerate(difference):
                content += [{"type": "text", "text": f"Difference frame {i + 1}: "}, image(img)]
        content.append({"type": "text", "text": "\n" + text})
        return [{"role": "user", "content": content}]

    def lead(self, instruction: str) -> str:
        """What this judge reads before the frames: the instruction where it was trained so, else nothing."""
        return INSTRUCTION_LEAD.format(instruction=instruction) if self.instruction_first else ""

    @staticmethod
    def question_text(code: str, instruction: str) -> str:
        dim = QUESTIONS[DIMENSIONS.index(code)]
        return dim.question.format(instruction=instruction) + " Answer Yes or No."

    # ------------------------------------------------------------------------------------------ scoring
    def yes_probabilities(
        self,
        source_images: Sequence[Shown],
        edited_images: Sequence[Shown],
        instruction: str,
        difference_images: Sequence[Shown] = (),
    ) -> dict[str, torch.Tensor]:
        """P(Yes) per dimension as 0-d fp32 tensors, under the caller's grad mode."""
        conversations = [
            self.messages(
                source_images,
                edited_images,
                self.question_text(d, instruction),
                difference_images,
                self.lead(instruction),
            )
            for d in DIMENSIONS
        ]
        groups = [conversations] if self.batch_questions else [[c] for c in conversations]
        probs: list[torch.Tensor] = []
        for group in groups:
            inputs = build_inputs(self.vlm, group, add_generation_prompt=True)
            logits = forward_shared_images(self.vlm, inputs, len(group)).logits[:, -1]  # images encoded once
            probs.extend(yes_probability(logits, self.yes_ids, self.no_ids).unbind(0))
        return dict(zip(DIMENSIONS, probs))

    def differentiable_yes_probabilities(
        self,
        source: torch.Tensor,
        edited: torch.Tensor,
        instruction: str,
        questions: Sequence[str] = DIMENSIONS,
        *,
        num_frames: int = 4,
    ) -> dict[str, torch.Tensor]:
        """P(Yes) per question with gradients reaching `edited` (frames [T,H,W,C] 0..1): the judge as a
        differentiable reward (ReViSE's self-reflection loss). The prompts, frames and difference frames are
        `score`'s, but the pixels go to the model through `vlm.image_patches` instead of PIL and the processor, so
        they are not rounded to 8 bits (`score`'s values for frames already on that grid). The model's own
        parameters get no gradient when frozen. Qwen2-VL-family judges only."""
        _check_questions(questions)
        edited = _as_video(edited, "edited")
        source = _as_video(source, "source").to(edited.device)
        k = min(num_frames, source.shape[0], edited.shape[0])
        srcs = moment_frames(source.detach()[..., :3], k, self.frame_pairs)
        edits = moment_frames(edited[..., :3], k, self.frame_pairs)
        layouts = []  # the shown images of the moments' first frames, then (frame pairs) of their second frames
        for src, edit in zip(srcs, edits) if self.frame_pairs else [(srcs[0], edits[0])]:
            shown = [fit_max_side(src, self.max_side), fit_max_side(edit, self.max_side)]
            if self.difference:  # as difference_images: full-size |edited - source| at the shown moments, then shrunk
                shown.append(fit_max_side(difference_frames(src, edit), self.max_side))
            layouts.append(shown)
        shown = layouts[0]
        pils = [[to_pil_image(f) for f in group] for group in shown]  # the chat's text and grids; pixels below
        conversations = [
            self.messages(
                pils[0],
                pils[1],
                self.question_text(q, instruction.strip()),
                pils[2] if self.difference else (),
                self.lead(instruction.strip()),
            )
            for q in questions
        ]
        inputs = build_inputs(self.vlm, conversations, add_generation_prompt=True)
        pixels, grid = image_patches(self.vlm.processor, torch.cat(shown))
        if grid.tolist() != inputs["image_grid_thw"][: grid.shape[0]].tolist():
            raise InputError(
                f"{self.vlm.path}: the processor's image grid differs from image_patches' {grid.tolist()}."
            )
        if self.frame_pairs:
            pixels = temporal_pairs(
                pixels, image_patches(self.vlm.processor, torch.cat(layouts[1]))[0], self.vlm.processor
            )
        inputs["pixel_values"] = pixels.to(self.vlm.device, self.vlm.dtype).repeat(len(questions), 1)
        logits = forward_shared_images(self.vlm, inputs, len(questions)).logits[:, -1]
        return dict(zip(questions, yes_probability(logits, self.yes_ids, self.no_ids).unbind(0)))

    # ------------------------------------------------------------------------------------------ batched scoring
    def _shown(
        self, source: torch.Tensor, edited: torch.Tensor, num_frames: int
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], tuple[int, ...]]:
        """The frames `score` shows of one edit, as RGB [H,W,3] tensors on the 8-bit grid its PIL images hold: the
        source's, the edit's, then the difference frames when this judge reads them (at their own size); the second
        frames of their temporal patches (the same list without frame pairs); and how many of each (source, edit,
        difference)."""
        source, edited = _as_video(source, "source"), _as_video(edited, "edited")
        rgb = [v[..., :3] if v.shape[-1] != 1 else v.expand(*v.shape[:-1], 3) for v in (source, edited)]
        moments = [moment_frames(v, num_frames, self.frame_pairs) for v in rgb]
        if self.difference:
            moments.append(shown_differences(rgb[0], rgb[1], num_frames, self.frame_pairs))

        def on_8_bits(groups) -> list[torch.Tensor]:
            return [f for group in groups for f in ((group.detach().float().clamp(0, 1) * 255).round() / 255)]

        shown = on_8_bits(m[0] for m in moments)
        seconds = on_8_bits(m[1] for m in moments) if self.frame_pairs else shown
        counts = tuple(len(m[0]) for m in moments)
        return shown, seconds, counts if self.difference else (*counts, 0)

    def _tokens(self, question: str, instruction: str, sizes: tuple, groups: tuple[int, ...]) -> dict:
        """The processor's text inputs (ids, its other per-token rows, image grids) for one chat whose images have
        these (width, height) `sizes`, and the chat's M-RoPE position ids [3, 1, L] under "positions" where this
        transformers computes them: they depend on the text and the sizes only, so blank images of those sizes stand
        in, and the result is kept (a group of G samples of one record is tokenized once; transformers' positions
        loop over every image of a batch on the host, ~0.15 s a 48-edit forward on a 2-core CPU)."""
        key = (question, instruction, sizes, groups)
        if key not in self._chat_tokens:
            if len(self._chat_tokens) >= 8192:
                self._chat_tokens.clear()
            blank = [Image.new("RGB", wh) for wh in sizes]
            a, b = groups[0], groups[0] + groups[1]
            chat = self.messages(
                blank[:a], blank[a:b], self.question_text(question, instruction), blank[b:], self.lead(instruction)
            )
            out = self._text_inputs(chat, sizes)
            entry = {k: v for k, v in out.items() if k not in ("attention_mask", "pixel_values")}
            positions = qwen2_vl_position_ids(self.vlm.model, out)
            if positions is not None:
                entry["positions"] = positions.to("cpu", torch.int32)  # a cache of 8,192 chats stays small
            self._chat_tokens[key] = entry
        return self._chat_tokens[key]

    def _text_inputs(self, chat: list[dict], sizes: tuple) -> dict:
        """`processor_inputs` of one chat of blank images without the image processor once it has been checked for
        these image sizes: the chat template's image tokens expanded by the grids the processor gave the first chat
        of these sizes, then the tokenizer (a new chat costs ~0.8 ms instead of ~6 ms on a 2-core CPU, most of it
        preprocessing blank images; 0.87 s of a 512-edit reward call on an H100, docs/small_models.md section 75).
        The first chat of each sizes goes through the processor and is compared with the shortcut, key by key and
        value by value; any difference keeps the processor for those sizes."""
        known = self._layouts.get(sizes)
        if known is not None and known["checked"]:
            return self._expanded(chat, known)
        out = processor_inputs(self.vlm.processor, [chat])
        if known is None:
            known = {"grids": out["image_grid_thw"], "keys": set(out) - {"pixel_values"}, "checked": False}
            fast = self._expanded(chat, known)
            known["checked"] = fast is not None and set(fast) == known["keys"]
            known["checked"] = known["checked"] and all(torch.equal(fast[k], out[k]) for k in known["keys"])
            self._layouts[sizes] = known
        return out

    def _expanded(self, chat: list[dict], known: dict) -> dict | None:
        """What the Qwen2-VL processors do to the text (each image token repeated grid / merge^2 times), from the
        grids already known; None where the processor has no such token or the counts do not fit."""
        proc = self.vlm.processor
        token, merge = getattr(proc, "image_token", None), getattr(proc.image_processor, "merge_size", None)
        if not isinstance(token, str) or not merge:
            return None
        parts = proc.apply_chat_template(chat, add_generation_prompt=True, tokenize=False).split(token)
        counts = (known["grids"].prod(-1) // merge**2).tolist()
        if len(parts) != len(counts) + 1:
            return None
        text = parts[0] + "".join(token * n + part for n, part in zip(counts, parts[1:]))
        out = dict(proc.tokenizer([text], return_tensors="pt"))
        if "mm_token_type_ids" in known["keys"]:
            out["mm_token_type_ids"] = (out["input_ids"] == self.vlm.model.config.image_token_id).long()
        out["image_grid_thw"] = known["grids"]
        return out

    def _pixels(self, images: list[torch.Tensor]) -> torch.Tensor:
        """Pixel patches of one edit's shown images, as the processor lays them out: in torch (`image_patches`) when
        neither `max_side` nor the processor resizes them (the bundled judge's 64x64 frames), else by the processor."""
        ip = self.vlm.processor.image_processor
        h, w = images[0].shape[:2]
        if all(tuple(x.shape) == tuple(images[0].shape) for x in images) and shrunk_size(w, h, self.max_side) == (w, h):
            pixels, grid = image_patches(ip, torch.stack(images))
            if int(grid[0, 1]) * ip.patch_size == h and int(grid[0, 2]) * ip.patch_size == w:
                return pixels
        return ip(images=[to_pil_image(x, max_side=self.max_side) for x in images], return_tensors="pt")["pixel_values"]

    @torch.no_grad()
    def score_batch(
        self,
        sources: Sequence[torch.Tensor],
        editeds: Sequence[torch.Tensor],
        instructions: Sequence[str],
        *,
        questions: Sequence[str] = DIMENSIONS,
        num_frames: int = 4,
        chunk: int = 64,
        max_tokens: int = 2**16,
    ) -> torch.Tensor:
        """P(Yes) [N, len(questions)] of N edits, `score`'s numbers (to float rounding) for many edits at once: the
        chats of up to `chunk` edits, and of at most `max_tokens` tokens (at least one edit; a 7B judge's 8 frames of
        448 pixels are ~2,000 tokens a chat), share one forward; each edit's images are laid out once for all its
        questions (in torch when no resize is needed), and a chat's tokens are made once per (question, instruction,
        sizes). Why: judged one at a time, the 512 rollouts of an Edit-GRPO step took 45-58 s of a 52 s step on an
        H100 (grpo_v15_judge, docs/small_models.md, section 69). Qwen2-VL-family judges; others go through `score`."""
        n = len(sources)
        if len(editeds) != n or len(instructions) != n:
            raise InputError(f"score_batch: {n} sources, {len(editeds)} edits and {len(instructions)} instructions.")
        _check_questions(questions)
        if num_frames < 1:
            raise InputError(f"num_frames must be ≥ 1, got {num_frames}.")
        texts = [t.strip() if isinstance(t, str) else "" for t in instructions]
        if not all(texts):
            raise InputError("the judge needs the edit instruction (one is empty).")
        if qwen2_vl_vision(self.vlm.model) is None:
            rows = [self.score(s, e, t, num_frames=num_frames).scores for s, e, t in zip(sources, editeds, texts)]
            return torch.tensor([[r[q] for q in questions] for r in rows], dtype=torch.float32)
        out: list[torch.Tensor] = []

        def new_part() -> dict:  # one forward's chats: their tokens, per-token rows, grids, patches, M-RoPE ids
            return {"ids": [], "extra": {}, "grids": [], "pixels": [], "positions": [], "size": 0}

        part = new_part()
        for i in range(n):
            shown, seconds, groups = self._shown(sources[i], editeds[i], num_frames)
            sized = tuple(shrunk_size(int(x.shape[1]), int(x.shape[0]), self.max_side) for x in shown)
            tokens = [self._tokens(q, texts[i], sized, groups) for q in questions]
            size = sum(int(t["input_ids"].shape[1]) for t in tokens)
            edits = len(part["pixels"])
            if edits and (edits >= max(1, chunk) or part["size"] + size > max_tokens):
                out.append(self._forward_part(part, len(questions)))
                part = new_part()
            for tok in tokens:
                part["ids"].append(tok["input_ids"][0])
                for key, v in tok.items():
                    if key not in ("input_ids", "image_grid_thw", "positions"):
                        part["extra"].setdefault(key, []).append(v[0])
                part["grids"].append(tok["image_grid_thw"])
                if "positions" in tok:
                    part["positions"].append(tok["positions"][:, 0])
            pixels = self._pixels(shown)
            if self.frame_pairs:
                pixels = temporal_pairs(pixels, self._pixels(seconds), self.vlm.processor)
            part["pixels"].append(pixels)
            part["size"] += size
        if part["pixels"]:
            out.append(self._forward_part(part, len(questions)))
        scores = torch.cat(out)
        if not bool(torch.isfinite(scores).all()):
            raise NonFiniteError(
                f"{self.vlm.path}: the judge produced a non-finite P(Yes); load the VLM in bf16 or fp32, not fp16."
            )
        return scores

    def _forward_part(self, part: dict, questions: int) -> torch.Tensor:
        """P(Yes) [edits, questions] of one `score_batch` chunk: its chats left-padded into one shared-image forward."""
        inputs = self._left_padded(part["ids"], part["extra"])
        inputs["image_grid_thw"] = torch.cat(part["grids"])
        inputs["pixel_values"] = torch.cat(part["pixels"])
        cached = len(part["positions"]) == len(part["ids"])
        if cached:  # each chat's own M-RoPE ids, right-aligned as the left padding puts its tokens (pads: 0, unread)
            rows = part["positions"]
            positions = torch.zeros((3, len(rows), inputs["input_ids"].shape[1]), dtype=torch.long)
            for r, row in enumerate(rows):
                positions[:, r, positions.shape[2] - row.shape[1] :] = row
            inputs["position_ids"] = positions
        model_inputs = to_model(self.vlm, inputs)
        logits = forward_shared_images(self.vlm, model_inputs, questions, host_positions=not cached).logits[:, -1]
        return yes_probability(logits, self.yes_ids, self.no_ids).float().view(-1, questions).cpu()

    def _left_padded(self, ids: list[torch.Tensor], extra: dict[str, list[torch.Tensor]]):
        """Chats' token rows left-padded into one batch, as the processor pads (pad id, attention 0, other rows 0)."""
        from transformers import BatchFeature

        tok = self.vlm.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        width = max(len(r) for r in ids)
        batch = {"input_ids": torch.full((len(ids), width), int(pad), dtype=ids[0].dtype)}
        batch["attention_mask"] = torch.zeros((len(ids), width), dtype=torch.long)
        for key, rows in extra.items():
            batch[key] = torch.zeros((len(ids), width), dtype=rows[0].dtype)
        for r, row in enumerate(ids):
            batch["input_ids"][r, width - len(row) :] = row
            batch["attention_mask"][r, width - len(row) :] = 1
            for key, rows in extra.items():
                batch[key][r, width - len(row) :] = rows[r]
        return BatchFeature(batch)

    @torch.no_grad()
    def score(
        self,
        source: torch.Tensor,
        edited: torch.Tensor,
        instruction: str,
        *,
        num_frames: int = 4,
        rationale: bool = False,
        max_rationale_tokens: int = 64,
    ) -> JudgeResult:
        """Score an edit. `source`/`edited`: frames [T,H,W,C] (or one image [H,W,C]); `num_frames` of each
        are shown, spread uniformly from first to last."""
        if not isinstance(instruction, str) or not instruction.strip():
            raise InputError("the judge needs the edit instruction (it is empty).")
        if num_frames < 1:
            raise InputError(f"num_frames must be ≥ 1, got {num_frames}.")
        if rationale and not self.generates_text:
            raise InputError(
                f"{self.vlm.path}: this judge was trained to answer Yes/No only and cannot write a "
                "rationale; turn rationale off or judge with a chat VLM such as Qwen2.5-VL."
            )
        source, edited = _as_video(source, "source"), _as_video(edited, "edited")
        instruction = instruction.strip()
        src_imgs, edit_imgs = self._frames(source, num_frames), self._frames(edited, num_frames)
        diff_imgs = (
            difference_images(source, edited, num_frames, self.max_side, self.frame_pairs) if self.difference else []
        )
        probs = self.yes_probabilities(src_imgs, edit_imgs, instruction, diff_imgs)
        scores = {d: float(p) for d, p in probs.items()}
        for d, s in scores.items():
            if not math.isfinite(s):
                raise NonFiniteError(
                    f"{self.vlm.path}: the judge produced a non-finite P(Yes) for {d}; load the "
                    "VLM in bf16 or fp32 instead of fp16."
                )
        text = None
        if rationale:
            text = generate_text(
                self.vlm,
                self.messages(
                    src_imgs,
                    edit_imgs,
                    RATIONALE_PROMPT.format(instruction=instruction),
                    diff_imgs,
                    self.lead(instruction),
                ),
                max_new_tokens=max_rationale_tokens,
            )
        return JudgeResult(
            scores=scores,
            overall=sum(scores.values()) / len(scores),
            rationale=text,
            num_frames=max(len(src_imgs), len(edit_imgs)),
            instruction=instruction,
            caveat=self.caveat,
        )
