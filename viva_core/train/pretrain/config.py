"""The `viva pretrain` config: one dataclass per section of the TOML, `ScratchConfig` and its loader, the stages."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..config import fill_config, raise_problems

STAGES = ("vae", "editor", "judge_data", "judge")
IMAGE_SIDE = 64  # the VLMs see frames at 64x64: patch 8 (VLMSection.patch), merge 2 -> 16 visual tokens per frame
UMT5_SPECIALS = ("<pad>", "</s>", "<unk>")


@dataclass
class DataSection:
    manifest: str = ""  # `viva synth --format npz` manifest (train split)
    val_manifest: str = ""
    limit: int = 0  # use at most this many clips (0 = all)
    # Editor stage: draw clips with `operation_weights(records, balance)` instead of uniformly (0 = uniform, 1 = each
    # operation about equally often); the records' "operation" field, as synth writes it.
    balance: float = 0.0


@dataclass
class OptimSection:
    steps: int = 1000
    batch_size: int = 32
    lr: float = 3e-4
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    workers: int = 4  # data-loader processes (chat processor, verifier labels)
    max_minutes: float = 0.0  # stop (and save) after this much wall time; 0 = run all steps
    compile: bool = False  # editor stage: torch.compile the DiT (CUDA; worth it for runs of minutes)


@dataclass
class VaeSection:
    base_dim: int = 16
    z_dim: int = 16
    spatial: int = (
        8  # 8 (Wan's 8x) or 4: 16x16 latents at 64x64, which keep what the 8x one loses (docs/small_models.md)
    )
    num_res_blocks: int = 1
    kl_weight: float = 1e-6
    frames: int = 17  # random windows of 1 + 4k frames; later chunks lean on the causal cache, so train on the
    # clip length used at inference (5-frame training measured 22.8 dB on frames 1-5 but 10 dB on frames 10-17)
    init: str = ""  # continue from a VAE folder (e.g. one trained on short windows first, which is ~3x faster)
    # With init: train only the decoder (and post_quant_conv). The encoder, so every latent and the latent statistics,
    # stays exactly as it was, so editors trained on this VAE's latents keep working with the new decoder.
    decoder_only: bool = False
    # Reconstruction loss weight 1 + edge_weight * |image gradient| (0..1 per pixel): small shapes' corners and edges
    # are few pixels of a frame, and the plain loss lets the 4x VAE round them off (docs/small_models.md, section 26).
    edge_weight: float = 0.0
    # The decoder's width (diffusers' `decoder_base_dim`; 0 = base_dim). With init and decoder_only, a width other than
    # the init's starts a fresh decoder of that width on the frozen encoder: is the decoder's capacity or the latent the
    # limit of the shapes it draws (docs/small_models.md, section 78)?
    decoder_base_dim: int = 0


@dataclass
class VLMSection:
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    vision_hidden: int = 64
    vision_depth: int = 2
    # pixels a side of one vision patch; merge 2 makes a token of (2 patch)^2 pixels: 8 -> 16 tokens per 64x64 frame,
    # 4 -> 64 (an object edit a few pixels wide gets a token of its own; docs/small_models.md, section 35)
    patch: int = 8


@dataclass
class EditorSection:
    vae: str = ""  # folder written by the vae stage
    layers: int = 6
    heads: int = 4
    head_dim: int = 64
    ffn_dim: int = 1024
    patch: list = field(default_factory=lambda: [1, 1, 1])
    text_dim: int = 128  # UMT5 width = DiT cross-attention input
    text_layers: int = 2
    text_heads: int = 4
    text_ff: int = 256
    max_text_tokens: int = 192  # text (+ instructor) tokens are zero-padded to this, in training and inference
    instructor: bool = True
    vlm: VLMSection = field(default_factory=VLMSection)
    refiner_hidden: int = 128
    refiner_depth: int = 1
    refiner_heads: int = 4
    mask_weight: float = 1.0  # VIVA's (1 + w M) edit-mask weight; 0 = plain flow matching
    # Continue from an editor folder written by this stage (its DiT, text encoder and tokenizer; its architecture,
    # not the fields above; `vae` defaults to the folder's own): a longer run without the first one's optimizer. A
    # text-only folder continued with `instructor` on gains an instructor and a refiner whose output layer starts at
    # zero: its tokens are then the zero padding the editor already reads, so the run starts from the editor's edits.
    init: str = ""
    # Start the instructor from a VLM folder instead of random weights, e.g. the judge `viva pretrain judge` wrote: a
    # VLM that has already learned to read these clips' instructions against their frames, as VIVA's instructor is a
    # pretrained VLM. With `instructor_frozen` its weights stay as they are and only the refiner learns to use it.
    instructor_init: str = ""
    instructor_frozen: bool = False
    # With `init`: this many more DiT blocks after its last, each starting as a copy of the last whose output
    # projections are zero, so the grown DiT edits exactly as the old one and training starts from there (block
    # expansion, as LLaMA Pro grows a trained model): what more depth buys without training from scratch.
    grow_layers: int = 0
    # Instructor grounding: weight of a BCE loss on the VLM's image tokens predicting the edit mask of the frame it
    # sees. Without it the jointly trained instructor ignores its image (docs/small_models.md, sections 7 and 10).
    grounding_weight: float = 0.0
    cond_dropout: float = 0.1  # share of samples trained on the empty prompt (what CFG's negative is)
    sigma_shift: float = 1.0


# The judge's candidate edits of a clip (judge.CANDIDATE_LABELS labels each), here so the config can check names.
JUDGE_CANDIDATES = ("target", "source", "other", "blend", "flicker", "blur", "shifted", "wrong")


@dataclass
class JudgeSection:
    vlm: VLMSection = field(default_factory=VLMSection)
    frames: int = 4  # frames of each video the judge sees (as at inference)
    threshold: float = 0.5  # EA verifier score >= threshold -> "Yes" where CANDIDATE_LABELS leaves it to the verifier
    difference: bool = True  # also show |edited - source| frames (written to viva_judge.json; docs/small_models.md)
    # Show each moment as two adjacent frames in one temporal patch (judge.shown_moments; written to viva_judge.json):
    # frame-to-frame change, what the GN verifier measures, at no extra token (section 85). A judge trained on single
    # frames may be continued with it: its patch embedding reads both temporal slots already.
    frame_pairs: bool = False
    # Share of items drawn as the ground truth or the unedited source (half each), the rest uniform over CANDIDATES.
    # Uniform draws teach "more change = worse edit" first (another clip's edit changes most and is an EA "No"),
    # which ranks the unchanged source above the truth on EA; docs/small_models.md, section 17.
    gt_source_share: float = 0.0
    # Candidates whose EA answer is left out of the loss (comma list): "other,blend,shifted" keeps EA monotone in the
    # change (source "No", truth/flicker/blur "Yes"), which lets it learn alongside the others (section 17).
    ea_unlabelled: str = ""
    gt_source_steps: int = 0  # a curriculum: the first steps draw only the truth or the source (section 17)
    # The candidate kinds training draws uniformly (judge.CANDIDATES); "wrong" (the same source edited by another
    # instruction) is the EA "No" that only reading the instruction can tell from the truth (section 20).
    candidates: str = "target,source,other,blend,flicker,blur,shifted"
    init: str = ""  # continue from a judge folder written by this stage (its weights, tokenizer and architecture)
    # Real editor outputs labelled by the verifiers (stage judge_data writes them; section 30): the folder, and the
    # share of training items drawn from it (candidate kind "editor") instead of the corruptions above.
    editor_outputs: str = ""
    editor_share: float = 0.0
    # With editor outputs: also rank two outputs of one clip per question (weight of -log sigmoid(margin of the Yes
    # output - margin of the No one)). Best-of-N and a group-relative reward compare outputs of one clip, which the
    # per-item loss can satisfy from the instruction alone (how often such edits pass) without looking at the edit.
    rank_weight: float = 0.0
    # Which two outputs of one clip make a ranking pair on a question: 0, those whose Yes/No labels differ; > 0, those
    # whose verifier scores differ by more than this, also where both pass or both fail. Half of one clip's seed
    # pairs differ in EA by < 0.02, a third by > 0.1, and most of those sit on one side of the 0.5 threshold
    # (docs/small_models.md, section 44).
    rank_margin: float = 0.0
    # Weight of a training-time grounding loss: from the EA answer position the judge points at the source frames'
    # visual tokens where the instruction's edit belongs (the truth's edit mask pooled to the token grid; a q.k head
    # saved beside the weights as ground_head.safetensors). Knowing only where the edit belongs orders 0.77-0.84 of
    # one clip's clearly different candidates, where no judge's P(Yes) does; the pointer learns to place the edit on
    # new clips, but not yet well enough to order them (docs/small_models.md, section 46).
    ground_weight: float = 0.0
    # Show the instruction before the frames as well (judge.INSTRUCTION_LEAD; written to viva_judge.json, which
    # `Judge` follows), so that the frames' tokens can read it (section 46). A judge continued with another setting
    # than it was trained with learns the new layout from its weights.
    instruction_first: bool = False
    # Compute the language model's M-RoPE position ids from host copies of the batch instead of inside the forward
    # (same logits, tested): transformers loops over the batch's 1,536 image grids, device work on a GPU. On an H200
    # (bench/bench_judge_step.py) it made the train step 1.38x faster (docs/small_models.md, section 32).
    host_positions: bool = True
    # Stage judge_data: the editor folder whose outputs it makes, how many per clip (different seeds: a spread of
    # successes and failures of one clip), and how it samples them (viva eval's protocol: 20 steps, CFG 5, fp32).
    editor: str = ""
    seeds: int = 4
    sample_steps: int = 20
    guidance: float = 5.0
    editor_dtype: str = "fp32"
    # > 0: each clip's outputs branch off its first seed's first `shared_steps` steps, as best-of-N's shared_steps
    # samples them (pipeline.edit_trunk), to measure what sharing costs best-of-N (recipes/small/best_of_n_check.py)
    shared_steps: int = 0


@dataclass
class ScratchConfig:
    stage: str = "vae"
    output_dir: str = "runs/small"
    seed: int = 0
    device: str = "auto"
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    vae: VaeSection = field(default_factory=VaeSection)
    editor: EditorSection = field(default_factory=EditorSection)
    judge: JudgeSection = field(default_factory=JudgeSection)

    def check(self) -> None:
        problems = []
        if self.stage not in STAGES:
            problems.append(f"stage '{self.stage}' is not one of {STAGES}")
        if not self.data.manifest:
            problems.append("data.manifest is empty (a `viva synth --format npz` manifest)")
        if self.stage == "editor" and not (self.editor.vae or self.editor.init):
            problems.append("editor.vae is empty (the folder the vae stage wrote)")
        init = {"editor": self.editor.init, "judge": self.judge.init}.get(self.stage, "")
        if init and Path(init).resolve() == (Path(self.output_dir) / self.stage).resolve():
            problems.append(f"{self.stage}.init is the folder this run writes ({init}): use another output_dir")
        if self.stage == "editor" and self.editor.instructor_init and not self.editor.instructor:
            problems.append("editor.instructor_init starts an instructor: set editor.instructor=true")
        if self.stage == "editor" and self.editor.instructor_frozen and not self.editor.instructor_init:
            problems.append("editor.instructor_frozen keeps a VLM as it is: set editor.instructor_init to one")
        if self.stage == "editor" and self.editor.grow_layers and not self.editor.init:
            problems.append("editor.grow_layers grows a trained DiT: set editor.init to its folder")
        if self.editor.grow_layers < 0:
            problems.append(f"editor.grow_layers must be >= 0, got {self.editor.grow_layers}")
        if self.optim.steps < 1 or self.optim.batch_size < 1:
            problems.append("optim.steps and optim.batch_size must be >= 1")
        if len(self.editor.patch) != 3:
            problems.append("editor.patch must be [t, h, w]")
        if not 0 <= self.data.balance <= 1:
            problems.append(f"data.balance must be in [0, 1], got {self.data.balance}")
        if not 0 <= self.judge.gt_source_share <= 1:
            problems.append(f"judge.gt_source_share must be in [0, 1], got {self.judge.gt_source_share}")
        kinds = JUDGE_CANDIDATES
        unknown = [k for k in self.judge.ea_unlabelled.split(",") if k and k not in kinds]
        if unknown:
            problems.append(f"judge.ea_unlabelled names unknown candidates {unknown}")
        unknown = [k for k in self.judge.candidates.split(",") if k not in kinds]
        if unknown:
            problems.append(f"judge.candidates names unknown candidates {unknown}; choose from {', '.join(kinds)}")
        if self.stage == "judge_data" and not self.judge.editor:
            problems.append("judge.editor is empty (the editor folder whose outputs stage judge_data labels)")
        if self.judge.seeds < 1 or self.judge.sample_steps < 1:
            problems.append("judge.seeds and judge.sample_steps must be >= 1")
        if self.judge.rank_weight < 0:
            problems.append(f"judge.rank_weight must be >= 0, got {self.judge.rank_weight}")
        if self.judge.ground_weight < 0:
            problems.append(f"judge.ground_weight must be >= 0, got {self.judge.ground_weight}")
        if not 0 <= self.judge.rank_margin < 1:
            problems.append(f"judge.rank_margin must be in [0, 1) (a score difference), got {self.judge.rank_margin}")
        if not 0 <= self.judge.editor_share <= 1:
            problems.append(f"judge.editor_share must be in [0, 1], got {self.judge.editor_share}")
        if self.stage == "judge" and self.judge.editor_share > 0 and not self.judge.editor_outputs:
            problems.append("judge.editor_share > 0 draws from judge.editor_outputs: set it to a judge_data folder")
        if self.judge.gt_source_steps < 0:
            problems.append(f"judge.gt_source_steps must be >= 0, got {self.judge.gt_source_steps}")
        if self.vae.decoder_only and not self.vae.init:
            problems.append("vae.decoder_only trains the decoder of an existing VAE: set vae.init to its folder")
        if self.vae.decoder_base_dim < 0:
            problems.append(f"vae.decoder_base_dim must be 0 (base_dim) or a width, got {self.vae.decoder_base_dim}")
        if self.vae.decoder_base_dim and self.vae.init and not self.vae.decoder_only:
            problems.append(
                "vae.decoder_base_dim with vae.init gives the VAE a fresh decoder: set vae.decoder_only too, so the "
                "encoder (and every editor trained on its latents) stays as it was"
            )
        if self.vae.edge_weight < 0:
            problems.append(f"vae.edge_weight must be >= 0, got {self.vae.edge_weight}")
        if self.vae.spatial not in VAE_LEVELS:
            problems.append(f"vae.spatial must be one of {sorted(VAE_LEVELS)}, got {self.vae.spatial}")
        raise_problems(problems, "pretrain config")


def load_scratch_config(path: Optional[str] = None, overrides: Optional[list[str]] = None) -> ScratchConfig:
    cfg = fill_config(ScratchConfig(), path, overrides)
    cfg.check()
    return cfg


VAE_LEVELS = {  # spatial factor -> (dim_mult, temperal_downsample): 4x in time either way
    8: ([1, 2, 4, 4], [False, True, True]),  # Wan2.1's layout
    4: ([1, 2, 4], [True, True]),
}
