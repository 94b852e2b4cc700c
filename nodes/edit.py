"""Editing nodes: load a video, encode the instruction, edit, best-of-N. Declarations and calls only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from comfy_api.latest import io, ui

from ..viva_core.best_of_n import best_of_n
from ..viva_core.conditioning import MODES, build_conditioning, negative_conditioning
from ..viva_core.editor import Conditioning
from ..viva_core.errors import InputError
from ..viva_core.judge import DIMENSIONS, Judge
from ..viva_core.pipeline import EditSettings, edit
from ..viva_core.settings import BUNDLED_STEPS, SAMPLERS
from ..viva_core.settings import DEFAULTS as D
from ..viva_core.step_cache import MAX_THRESHOLD, step_cache_for
from ..viva_core.video import read_video
from . import common as c
from .model_management import previewer


@dataclass
class CondPair:
    """What flows through a VIVA_CONDITIONING socket."""

    positive: Conditioning
    negative: Optional[Conditioning]
    instruction: str
    prompt: str


class LoadVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VIVA_LoadVideo",
            display_name="VIVA Load Video",
            category=c.CATEGORY,
            description="Streams a video from the input folder keeping only the frames you ask for, so long videos "
            "do not fill RAM. Outputs frames, fps, audio and a VIDEO.",
            inputs=[
                io.Combo.Input(
                    "video",
                    options=c.input_videos() or [c.NONE],
                    upload=io.UploadType.video,
                    tooltip="A video file in ComfyUI's input folder.",
                ),
                io.Int.Input(
                    "max_frames",
                    default=81,
                    min=0,
                    max=10000,
                    tooltip="Frames to keep (0 = all). Wan "
                    "editors want 4k+1 frames (17, 33, 49, 81); extra frames are dropped later, reported.",
                ),
                io.Int.Input("stride", default=1, min=1, max=64, tooltip="Keep every Nth frame (fps divides by N)."),
                io.Int.Input(
                    "start_frame",
                    default=0,
                    min=0,
                    max=1_000_000,
                    tooltip="First frame to keep (skips the frames before it).",
                ),
            ],
            outputs=[
                io.Image.Output("frames", display_name="frames", tooltip="Kept frames as an IMAGE batch [T,H,W,3]."),
                io.Float.Output(
                    "fps", display_name="fps", tooltip="Frame rate of the kept frames (source fps / stride)."
                ),
                io.Audio.Output(
                    "audio", display_name="audio", tooltip="The audio of the kept time span (None when silent)."
                ),
                io.Video.Output(
                    "video_out",
                    display_name="video",
                    tooltip="Frames + fps + audio as a VIDEO (connect to Edit Video's video).",
                ),
            ],
        )

    @classmethod
    def execute(cls, video: str, max_frames: int, stride: int, start_frame: int) -> io.NodeOutput:
        v = read_video(
            c.resolve_input_file(video),
            max_frames=max_frames or None,
            stride=stride,
            start_frame=start_frame,
            max_bytes=c.memory_budget_bytes(),
        )
        return io.NodeOutput(
            v.frames, v.fps, c.core_audio_to_comfy(v.audio), c.to_video_output(v.frames, v.fps, v.audio)
        )


class EncodeInstruction(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VIVA_EncodeInstruction",
            display_name="VIVA Encode Instruction",
            category=c.CATEGORY,
            description="Turns the edit instruction into the editor's conditioning. text: UMT5 tokens (Lucy-Edit). "
            "instructor: + VLM tokens grounded on the first frame through a trained token refiner (VIVA). "
            "rewrite: the VLM writes a grounded target description (no extra weights).",
            inputs=[
                c.Editor.Input("editor", tooltip="The editor (its UMT5 text encoder encodes the prompt)."),
                io.String.Input(
                    "instruction",
                    multiline=True,
                    default="replace the dog with a fox",
                    tooltip="What to change, as an imperative sentence.",
                ),
                io.Image.Input("source", tooltip="Source frames; the first one grounds the instructor."),
                io.Combo.Input(
                    "mode",
                    options=list(MODES),
                    default="text",
                    tooltip="text: the instruction as is. "
                    "instructor: + VLM tokens through a token refiner. rewrite: the VLM rewrites it first.",
                ),
                io.String.Input("negative_prompt", multiline=True, default="", tooltip="Used when cfg != 1."),
                c.VLM.Input("vlm", optional=True, tooltip="Needed by the instructor and rewrite modes."),
                io.Combo.Input(
                    "refiner",
                    options=[c.NONE] + c.safetensors_files(c.REFINER_FOLDER),
                    default=c.NONE,
                    tooltip="Token refiner (.safetensors in models/viva/refiners) for mode instructor.",
                ),
                io.Image.Input(
                    "reference_image", optional=True, tooltip="Optional reference (e.g. the object to add)."
                ),
                io.Conditioning.Input(
                    "text_conditioning",
                    optional=True,
                    tooltip="CONDITIONING from CLIP Text Encode "
                    "with Wan's UMT5; replaces the editor's own text encoder for the instruction.",
                ),
            ],
            outputs=[
                c.Cond.Output(
                    "conditioning",
                    display_name="conditioning",
                    tooltip="Positive (+ negative) tokens for Edit Video / Best-of-N.",
                ),
                io.String.Output(
                    "prompt", display_name="prompt", tooltip="The text the encoder saw (the rewrite in mode rewrite)."
                ),
            ],
        )

    @classmethod
    def execute(
        cls,
        editor,
        instruction: str,
        source: torch.Tensor,
        mode: str,
        negative_prompt: str,
        vlm=None,
        refiner: str = c.NONE,
        reference_image: Optional[torch.Tensor] = None,
        text_conditioning=None,
    ) -> io.NodeOutput:
        text_cond = (
            Conditioning(text_conditioning[0][0].float().cpu(), "CLIP Text Encode") if text_conditioning else None
        )
        refiner_path = None if refiner == c.NONE else c.resolve_file(c.REFINER_FOLDER, refiner)
        reference = reference_image[0] if reference_image is not None else None
        cond, prompt = build_conditioning(
            editor,
            instruction,
            source[0],
            mode=mode,
            vlm=vlm,
            refiner_path=refiner_path,
            reference=reference,
            text_cond=text_cond,
        )
        pair = CondPair(cond, negative_conditioning(editor, negative_prompt), instruction, prompt)
        return io.NodeOutput(pair, prompt, ui=ui.PreviewText(prompt))


_EDITOR_TIP = "The editor from VIVA Load Editor / VIVA LoRA Loader."
_COND_TIP = "From VIVA Encode Instruction."


def _sampling_inputs() -> list:
    return [
        io.Int.Input(
            "steps",
            default=D.steps,
            min=1,
            max=200,
            tooltip=f"Sampler steps (time grows linearly); the bundled small editor needs only {BUNDLED_STEPS}.",
        ),
        io.Float.Input("cfg", default=D.cfg, min=0.0, max=20.0, step=0.1, tooltip="Guidance; 1 = off (half the time)."),
        io.Int.Input(
            "seed",
            default=D.seed,
            min=0,
            max=2**63 - 1,
            control_after_generate=True,
            tooltip="Noise seed; best-of-N uses seed, seed+1, ...",
        ),
        io.Float.Input("shift", default=D.shift, min=0.1, max=20.0, step=0.1, tooltip="Wan sigma shift (3 for 480p)."),
        io.Float.Input(
            "strength",
            default=D.strength,
            min=0.01,
            max=1.0,
            step=0.01,
            tooltip="1 = full edit from noise; lower keeps more of the source's layout.",
        ),
        io.Combo.Input("sampler", options=list(SAMPLERS), default=D.sampler, tooltip="Flow-matching ODE solver."),
        io.Float.Input(
            "fps",
            default=16.0,
            min=1.0,
            max=120.0,
            step=0.5,
            tooltip="Frame rate for IMAGE input (a VIDEO input keeps its own fps and audio).",
        ),
        io.Int.Input("max_frames", default=81, min=0, max=10000, tooltip="Frames taken from the source (0 = all)."),
        io.Image.Input("images", optional=True, tooltip="Source frames (IMAGE batch)."),
        io.Video.Input("video", optional=True, tooltip="Source VIDEO (fps and audio kept)."),
    ]


def _settings(steps: int, cfg: float, seed: int, shift: float, strength: float, sampler: str) -> EditSettings:
    return EditSettings(steps=steps, cfg=cfg, seed=seed, shift=shift, strength=strength, sampler=sampler)


class EditVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VIVA_EditVideo",
            display_name="VIVA Edit Video",
            category=c.CATEGORY,
            description="Edits the source video following the conditioning (flow-matching sampler). Frame count is "
            "snapped to 4k+1; the edit comes back at the source's size and aspect (padded, or for a "
            "small model scaled to fit its size, while editing); the report says what changed (W x H).",
            inputs=[
                c.Editor.Input("editor", tooltip=_EDITOR_TIP),
                c.Cond.Input("conditioning", tooltip=_COND_TIP),
                *_sampling_inputs(),
            ],
            outputs=[
                io.Image.Output("frames", display_name="frames", tooltip="Edited frames (IMAGE batch)."),
                io.Video.Output("edited_video", display_name="video", tooltip="Edited frames + fps + source audio."),
                io.String.Output(
                    "report",
                    display_name="report",
                    tooltip="Seed, size, time, frame/size snapping and LoRA key reports.",
                ),
            ],
        )

    @classmethod
    def execute(
        cls,
        editor,
        conditioning: CondPair,
        steps: int,
        cfg: float,
        seed: int,
        shift: float,
        strength: float,
        sampler: str,
        fps: float,
        max_frames: int,
        images=None,
        video=None,
    ) -> io.NodeOutput:
        src = c.source_video(images, video, fps, max_frames)
        result = edit(
            editor,
            src.frames,
            conditioning.positive,
            negative=conditioning.negative,
            settings=_settings(steps, cfg, seed, shift, strength, sampler),
            fps=src.fps,
            audio=src.audio,
            progress=c.Progress(steps, previewer=previewer(editor)),
        )
        report = result.summary()
        return io.NodeOutput(
            result.frames, c.to_video_output(result.frames, result.fps, result.audio), report, ui=ui.PreviewText(report)
        )


class BestOfN(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VIVA_BestOfN",
            display_name="VIVA Best-of-N (self-reflection)",
            category=c.CATEGORY,
            description="Edits with N seeds (seed, seed+1, ...), scores each with the self-reflection judge "
            "(P(Yes) on edit accuracy, preservation, naturalness, realism) and keeps the best.",
            inputs=[
                c.Editor.Input("editor", tooltip=_EDITOR_TIP),
                c.Cond.Input("conditioning", tooltip=_COND_TIP),
                c.VLM.Input("judge_vlm", tooltip="The VLM that scores each candidate (VIVA Load VLM)."),
                io.Int.Input(
                    "candidates",
                    default=4,
                    min=1,
                    max=64,
                    tooltip="N edits with seeds seed..seed+N-1; time grows N times.",
                ),
                io.Int.Input(
                    "judge_frames",
                    default=4,
                    min=1,
                    max=32,
                    tooltip="Frames of each video shown to the judge (uniformly spread).",
                ),
                *_sampling_inputs(),
                io.Int.Input(
                    "candidate_batch",
                    default=1,
                    min=1,
                    max=64,
                    optional=True,
                    tooltip="Candidates sampled at once (one model call per step for all of them): faster where one "
                    "edit leaves the GPU idle, e.g. small models; more memory. The same edits up to rounding.",
                ),
                io.Float.Input(
                    "preview_cache",
                    default=0.0,
                    min=0.0,
                    max=MAX_THRESHOLD,
                    step=0.01,
                    optional=True,
                    tooltip="0: every candidate is a full edit. Above 0: candidates are judged as step-cached "
                    "previews (First Block Cache at this threshold; fewer model calls each) and only the winning seed "
                    "is rendered in full, so the video kept is a plain edit. Higher skips more and previews drift "
                    "further from the full edits.",
                ),
            ],
            outputs=[
                io.Image.Output("frames", display_name="frames", tooltip="Frames of the best candidate."),
                io.Video.Output("best_video", display_name="video", tooltip="The best candidate as a VIDEO."),
                io.String.Output(
                    "table", display_name="table", tooltip="Scores of every candidate; the best is marked '*'."
                ),
                io.Float.Output(
                    "best_score",
                    display_name="best_score",
                    tooltip="Overall score (mean P(Yes)) of the best candidate.",
                ),
                io.Int.Output(
                    "best_seed",
                    display_name="best_seed",
                    tooltip="Seed of the best candidate (reuse it in Edit Video).",
                ),
            ],
        )

    @classmethod
    def execute(
        cls,
        editor,
        conditioning: CondPair,
        judge_vlm,
        candidates: int,
        judge_frames: int,
        steps: int,
        cfg: float,
        seed: int,
        shift: float,
        strength: float,
        sampler: str,
        fps: float,
        max_frames: int,
        images=None,
        video=None,
        candidate_batch: int = 1,
        preview_cache: float = 0.0,
    ) -> io.NodeOutput:
        src = c.source_video(images, video, fps, max_frames)
        batch = min(candidate_batch or 1, candidates)
        previews = step_cache_for("first_block" if preview_cache else "off", preview_cache)
        runs = -(-candidates // batch) + (previews is not None)  # the bar counts batch steps, and the winner's render
        total, preview = runs * steps, previewer(editor)
        outcome = best_of_n(
            editor,
            Judge(judge_vlm),
            src,
            conditioning.positive,
            conditioning.instruction,
            n=candidates,
            settings=_settings(steps, cfg, seed, shift, strength, sampler),
            negative=conditioning.negative,
            num_frames=judge_frames,
            batch=batch,
            previews=previews,
            progress_factory=lambda i: c.Progress(offset=-(-i // batch) * steps, grand_total=total, previewer=preview),
        )
        best, judged = outcome.best, outcome.best_judgement
        table = outcome.table() + "\n" + best.summary()
        return io.NodeOutput(
            best.frames,
            c.to_video_output(best.frames, best.fps, best.audio),
            table,
            judged.overall,
            best.seed,
            ui=c.text_and_scores_ui(table, judged.scores, f"best seed {best.seed}"),
        )


class JudgeEdit(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VIVA_Judge",
            display_name="VIVA Judge Edit (self-reflection)",
            category=c.CATEGORY,
            description="Asks the VLM Yes/No questions about the edit and reads P(Yes) from its answer logits: EA edit "
            "accuracy, PC preservation, GN naturalness, GR realism; overall is their mean.",
            inputs=[
                c.VLM.Input("vlm", tooltip="The judging VLM (VIVA Load VLM)."),
                io.Image.Input("source", tooltip="Source frames (IMAGE batch)."),
                io.Image.Input("edited", tooltip="Edited frames (IMAGE batch)."),
                io.String.Input(
                    "instruction", multiline=True, default="", tooltip="The instruction the edit was made for."
                ),
                io.Int.Input("num_frames", default=4, min=1, max=32, tooltip="Frames sampled uniformly from each."),
                io.Boolean.Input(
                    "rationale",
                    default=False,
                    tooltip="Also generate a short explanation (chat VLMs only: a judge trained "
                    "on Yes/No answers, such as viva-small-judge, cannot; the toggle is "
                    "then disabled, and the report gives the scores alone).",
                ),
            ],
            outputs=[
                io.Float.Output(
                    "edit_accuracy",
                    display_name="edit_accuracy",
                    tooltip="EA: P(Yes) that the edit follows the instruction.",
                ),
                io.Float.Output(
                    "preservation", display_name="preservation", tooltip="PC: P(Yes) that the rest is unchanged."
                ),
                io.Float.Output(
                    "naturalness", display_name="naturalness", tooltip="GN: P(Yes) that the motion/look is natural."
                ),
                io.Float.Output("realism", display_name="realism", tooltip="GR: P(Yes) that the result looks real."),
                io.Float.Output("overall", display_name="overall", tooltip="Mean of the four scores."),
                io.String.Output(
                    "report", display_name="report", tooltip="The scores as JSON (+ rationale when asked)."
                ),
            ],
            is_output_node=True,  # it shows its scores on the node, so it runs without a node after it
        )

    @classmethod
    def execute(
        cls, vlm, source: torch.Tensor, edited: torch.Tensor, instruction: str, num_frames: int, rationale: bool
    ) -> io.NodeOutput:
        if not instruction.strip():
            raise InputError("the judge needs the instruction the edit was made for.")
        c.interrupt_check()
        judge = Judge(vlm)
        explain = rationale and judge.generates_text  # a Yes/No-only judge would write junk: say so instead
        r = judge.score(source[..., :3], edited[..., :3], instruction, num_frames=num_frames, rationale=explain)
        s = r.scores
        text = "  ".join(f"{d} {s[d]:.3f}" for d in DIMENSIONS) + f"  overall {r.overall:.3f}"
        if r.rationale:
            text += "\n" + r.rationale
        elif rationale:
            text += "\n(no rationale: this judge answers Yes/No only; use a chat VLM for one)"
        if r.caveat:  # one line: the node's text box wraps it at its own width (a hard wrap came out ragged)
            text += "\n" + r.caveat
        return io.NodeOutput(
            s["EA"], s["PC"], s["GN"], s["GR"], r.overall, r.to_json(), ui=c.text_and_scores_ui(text, s)
        )
