"""Editing nodes: load a video, encode the instruction, edit, best-of-N. Declarations and calls only."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from comfy_api.latest import io

from ..viva_core.best_of_n import best_of_n
from ..viva_core.conditioning import MODES, build_conditioning, negative_conditioning
from ..viva_core.editor import Conditioning
from ..viva_core.errors import InputError
from ..viva_core.judge import Judge
from ..viva_core.pipeline import EditSettings, edit
from ..viva_core.sampling import SAMPLERS
from ..viva_core.video import read_video
from . import common as c


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
            node_id="VIVA_LoadVideo", display_name="VIVA Load Video", category=c.CATEGORY,
            description="Streams a video from the input folder keeping only the frames you ask for, so long videos "
                        "do not fill RAM. Outputs frames, fps, audio and a VIDEO.",
            inputs=[
                io.Combo.Input("video", options=c.input_videos() or [c.NONE], upload=io.UploadType.video,
                               tooltip="A video file in ComfyUI's input folder."),
                io.Int.Input("max_frames", default=81, min=0, max=10000, tooltip="Frames to keep (0 = all). Wan "
                             "editors want 4k+1 frames (17, 33, 49, 81); extra frames are dropped later, reported."),
                io.Int.Input("stride", default=1, min=1, max=64, tooltip="Keep every Nth frame (fps divides by N)."),
                io.Int.Input("start_frame", default=0, min=0, max=1_000_000),
            ],
            outputs=[io.Image.Output("frames"), io.Float.Output("fps"), io.Audio.Output("audio"), io.Video.Output("video")],
        )

    @classmethod
    def execute(cls, video: str, max_frames: int, stride: int, start_frame: int) -> io.NodeOutput:
        v = read_video(c.resolve_input_file(video), max_frames=max_frames or None, stride=stride,
                       start_frame=start_frame, max_bytes=c.memory_budget_bytes())
        return io.NodeOutput(v.frames, v.fps, c.core_audio_to_comfy(v.audio), c.to_video_output(v.frames, v.fps, v.audio))


class EncodeInstruction(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VIVA_EncodeInstruction", display_name="VIVA Encode Instruction", category=c.CATEGORY,
            description="Turns the edit instruction into the editor's conditioning. text: UMT5 tokens (Lucy-Edit). "
                        "instructor: + VLM tokens grounded on the first frame through a trained token refiner (VIVA). "
                        "rewrite: the VLM writes a grounded target description (no extra weights).",
            inputs=[
                c.Editor.Input("editor"),
                io.String.Input("instruction", multiline=True, default="replace the dog with a fox"),
                io.Image.Input("source", tooltip="Source frames; the first one grounds the instructor."),
                io.Combo.Input("mode", options=list(MODES), default="text"),
                io.String.Input("negative_prompt", multiline=True, default="", tooltip="Used when cfg != 1."),
                c.VLM.Input("vlm", optional=True, tooltip="Needed by the instructor and rewrite modes."),
                io.Combo.Input("refiner", options=[c.NONE] + c.safetensors_files(c.REFINER_FOLDER), default=c.NONE,
                               tooltip="Token refiner (.safetensors in models/viva/refiners) for mode instructor."),
                io.Image.Input("reference_image", optional=True, tooltip="Optional reference (e.g. the object to add)."),
                io.Conditioning.Input("text_conditioning", optional=True, tooltip="CONDITIONING from CLIP Text Encode "
                                      "with Wan's UMT5; replaces the editor's own text encoder for the instruction."),
            ],
            outputs=[c.Cond.Output("conditioning"), io.String.Output("prompt")],
        )

    @classmethod
    def execute(cls, editor, instruction: str, source: torch.Tensor, mode: str, negative_prompt: str, vlm=None,
                refiner: str = c.NONE, reference_image: Optional[torch.Tensor] = None,
                text_conditioning=None) -> io.NodeOutput:
        text_cond = Conditioning(text_conditioning[0][0].float().cpu(), "CLIP Text Encode") if text_conditioning else None
        refiner_path = None if refiner == c.NONE else c.resolve_file(c.REFINER_FOLDER, refiner)
        reference = reference_image[0] if reference_image is not None else None
        cond, prompt = build_conditioning(editor, instruction, source[0], mode=mode, vlm=vlm,
                                          refiner_path=refiner_path, reference=reference, text_cond=text_cond)
        return io.NodeOutput(CondPair(cond, negative_conditioning(editor, negative_prompt), instruction, prompt), prompt)


def _sampling_inputs() -> list:
    return [
        io.Int.Input("steps", default=30, min=1, max=200),
        io.Float.Input("cfg", default=5.0, min=0.0, max=20.0, step=0.1, tooltip="Guidance; 1 = off (half the time)."),
        io.Int.Input("seed", default=0, min=0, max=2**63 - 1, control_after_generate=True),
        io.Float.Input("shift", default=5.0, min=0.1, max=20.0, step=0.1, tooltip="Wan sigma shift (3 for 480p)."),
        io.Float.Input("strength", default=1.0, min=0.01, max=1.0, step=0.01,
                       tooltip="1 = full edit from noise; lower keeps more of the source's layout."),
        io.Combo.Input("sampler", options=list(SAMPLERS), default="unipc"),
        io.Float.Input("fps", default=16.0, min=1.0, max=120.0, step=0.5, tooltip="Frame rate for IMAGE input "
                       "(a VIDEO input keeps its own fps and audio)."),
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
            node_id="VIVA_EditVideo", display_name="VIVA Edit Video", category=c.CATEGORY,
            description="Edits the source video following the conditioning (flow-matching sampler). Frame count is "
                        "snapped to 4k+1 and sides to the model's multiple; the report says what changed.",
            inputs=[c.Editor.Input("editor"), c.Cond.Input("conditioning"), *_sampling_inputs()],
            outputs=[io.Image.Output("frames"), io.Video.Output("video"), io.String.Output("report")],
        )

    @classmethod
    def execute(cls, editor, conditioning: CondPair, steps: int, cfg: float, seed: int, shift: float,
                strength: float, sampler: str, fps: float, max_frames: int, images=None, video=None) -> io.NodeOutput:
        src = c.source_video(images, video, fps, max_frames)
        result = edit(editor, src.frames, conditioning.positive, negative=conditioning.negative,
                      settings=_settings(steps, cfg, seed, shift, strength, sampler), fps=src.fps, audio=src.audio,
                      progress=c.Progress(steps))
        return io.NodeOutput(result.frames, c.to_video_output(result.frames, result.fps, result.audio), result.summary())


class BestOfN(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VIVA_BestOfN", display_name="VIVA Best-of-N (self-reflection)", category=c.CATEGORY,
            description="Edits with N seeds (seed, seed+1, ...), scores each with the self-reflection judge "
                        "(P(Yes) on edit accuracy, preservation, naturalness, realism) and keeps the best.",
            inputs=[c.Editor.Input("editor"), c.Cond.Input("conditioning"), c.VLM.Input("judge_vlm"),
                    io.Int.Input("candidates", default=4, min=1, max=64),
                    io.Int.Input("judge_frames", default=4, min=1, max=32),
                    *_sampling_inputs()],
            outputs=[io.Image.Output("frames"), io.Video.Output("video"), io.String.Output("table"),
                     io.Float.Output("best_score"), io.Int.Output("best_seed")],
        )

    @classmethod
    def execute(cls, editor, conditioning: CondPair, judge_vlm, candidates: int, judge_frames: int, steps: int,
                cfg: float, seed: int, shift: float, strength: float, sampler: str, fps: float, max_frames: int,
                images=None, video=None) -> io.NodeOutput:
        src = c.source_video(images, video, fps, max_frames)
        total = candidates * steps
        outcome = best_of_n(editor, Judge(judge_vlm), src, conditioning.positive, conditioning.instruction,
                            n=candidates, settings=_settings(steps, cfg, seed, shift, strength, sampler),
                            negative=conditioning.negative, num_frames=judge_frames,
                            progress_factory=lambda i: c.Progress(offset=i * steps, grand_total=total))
        best = outcome.best
        return io.NodeOutput(best.frames, c.to_video_output(best.frames, best.fps, best.audio),
                             outcome.table() + "\n" + best.summary(), outcome.best_judgement.overall, best.seed)


class JudgeEdit(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VIVA_Judge", display_name="VIVA Judge Edit (self-reflection)", category=c.CATEGORY,
            description="Asks the VLM Yes/No questions about the edit and reads P(Yes) from its answer logits: EA edit "
                        "accuracy, PC preservation, GN naturalness, GR realism; overall is their mean.",
            inputs=[c.VLM.Input("vlm"), io.Image.Input("source"), io.Image.Input("edited"),
                    io.String.Input("instruction", multiline=True, default=""),
                    io.Int.Input("num_frames", default=4, min=1, max=32, tooltip="Frames sampled uniformly from each."),
                    io.Boolean.Input("rationale", default=False, tooltip="Also generate a short explanation.")],
            outputs=[io.Float.Output("edit_accuracy"), io.Float.Output("preservation"), io.Float.Output("naturalness"),
                     io.Float.Output("realism"), io.Float.Output("overall"), io.String.Output("report")],
        )

    @classmethod
    def execute(cls, vlm, source: torch.Tensor, edited: torch.Tensor, instruction: str, num_frames: int,
                rationale: bool) -> io.NodeOutput:
        if not instruction.strip():
            raise InputError("the judge needs the instruction the edit was made for.")
        c.interrupt_check()
        r = Judge(vlm).score(source[..., :3], edited[..., :3], instruction, num_frames=num_frames, rationale=rationale)
        s = r.scores
        return io.NodeOutput(s["EA"], s["PC"], s["GN"], s["GR"], r.overall, r.to_json())
