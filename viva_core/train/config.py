"""Training configuration: one TOML file, overridable with `--set section.key=value`; validated before any work."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from ..errors import ConfigError, InputError

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

METHODS = ("sft", "grpo", "rwo")
GRADIENT_CHECKPOINTING = ("off", "on", "auto")
ROLLOUT_LORA_DTYPES = ("auto", "fp32", "model", "merged")  # RolloutConfig.lora_dtype
LORA_COMPUTE_DTYPES = ("fp32", "model")  # LoraConfig.compute_dtype
TRAIN_COMPILE_MODES = ("off", "blocks")  # ModelConfig.compile: each DiT block compiled, LoRA included
AUTO_CHECKPOINTING_PARAMS = 1e9  # "auto" turns gradient checkpointing on from this DiT size
PLAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")  # output names: no folders, no leading dot
# devices torch and ComfyUI use (DirectML is privateuseone); checked by name so a typo fails before any load
DEVICE = re.compile(r"^(auto|cpu|mps|(cuda|xpu|npu|mlu|hpu|privateuseone)(:\d+)?)$")
LORA_TARGETS = {  # diffusers module-name suffixes inside Wan blocks
    "attn": [
        "attn1.to_q",
        "attn1.to_k",
        "attn1.to_v",
        "attn1.to_out.0",
        "attn2.to_q",
        "attn2.to_k",
        "attn2.to_v",
        "attn2.to_out.0",
    ],
    "attn+ffn": [
        "attn1.to_q",
        "attn1.to_k",
        "attn1.to_v",
        "attn1.to_out.0",
        "attn2.to_q",
        "attn2.to_k",
        "attn2.to_v",
        "attn2.to_out.0",
        "ffn.net.0.proj",
        "ffn.net.2",
    ],
}


@dataclass
class ModelConfig:
    editor: str = ""  # diffusers editor folder or single-file DiT
    vae: str = ""  # VAE file for a single-file DiT
    text_encoder: str = ""  # UMT5 folder if the editor folder has none
    dtype: str = "bf16"
    device: str = "auto"
    allow_t2v: bool = False  # zero-init source channels of a T2V base and train them (SFT only)
    # "blocks": torch.compile each repeated DiT block (LoRA included) for the rollouts, updates and SFT steps (the
    # editor's compile=blocks: 1.45x against 1.68x its FLOP floor at inference, bench/RESULTS.md); a first step
    # compiles for minutes on a big DiT, and each new shape (frames, batch rows, the rollouts' LoRA dtype) again
    compile: str = "off"
    # the DiT's attention for the rollouts, updates and SFT steps: the editor's option ("flash4": flash-attn-4 on
    # Hopper / Blackwell, its forward and backward 16-19% past cuDNN's at the Wan shapes, bench/RESULTS.md)
    attention: str = "sdpa"
    max_text_tokens: int = 0  # text padding length; 0 = the editor's own (512 for Wan, viva_editor.json for ours)
    instructor: str = ""  # VLM folder: condition on instructor tokens through the refiner
    refiner: str = ""  # start from this refiner (.safetensors); empty = new refiner when train_refiner
    train_refiner: bool = False
    refiner_depth: int = 2
    refiner_hidden: int = 1024
    refiner_heads: int = 8


@dataclass
class DataConfig:
    manifest: str = ""
    val_manifest: str = ""
    # the first N records of val_manifest (0: all): grpo/rwo roll out G samples of each at every checkpoint
    val_limit: int = 0
    max_frames: int = 17
    height: int = 0  # 0 = keep the source size (snapped to the model's multiple)
    width: int = 0
    cache_dir: str = ""  # default: <output_dir>/cache


@dataclass
class LoraConfig:
    rank: int = 32  # 0: no LoRA (SFT of the token refiner and/or the source channels only)
    alpha: float = 64.0
    targets: str = "attn"
    init_from: str = ""  # continue from a LoRA file (any supported format)
    # dtype of the LoRA's side path where gradients flow (SFT, the PPO and RWO passes): "model" (the weights cast down
    # to the activations' dtype, differentiably, the fp32 masters still what the optimizer steps:
    # adapters.lora_side_path_in_model_dtype) or "fp32" (PEFT's way: the activations cast up to the fp32 LoRA
    # weights). In a bf16 DiT "model" computes what the rollouts' bf16 side path ("auto") does, so the first PPO ratio
    # is exactly 1, and the Edit-GRPO update at the Wan-1.3B shape takes 13% less time and 21% less memory
    # (bench/RESULTS.md, "Training steps"); an fp32 DiT is the same either way
    compute_dtype: str = "model"


@dataclass
class OptimConfig:
    steps: int = 1000
    lr: float = 1e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    warmup_steps: int = 0
    schedule: str = "constant"  # constant | cosine
    batch_size: int = 1  # records per step per process
    parallel: str = "ddp"  # under torchrun: ddp (replicas) or fsdp (FSDP2, blocks sharded: for DiTs >= 5B)
    # recompute each DiT block's activations in the backward instead of keeping them (diffusers' gradient
    # checkpointing): about one more forward per step for far less memory. "auto": on for a DiT of at least
    # 1 B parameters (the 1.3B's SFT step at 480x832x33 peaked at 43.7 GiB without it), off for smaller ones
    gradient_checkpointing: str = "off"
    # stop after this much wall time in the training loop, saving as a Ctrl-C does (a checkpoint, the LoRA named
    # *_interrupted; --resume continues); 0 = run all steps. For time-boxed jobs (a cluster's wall-time limit, a lent
    # GPU): a signal can be lost (a compiled run on an H100 died at SIGINT without saving, docs/small_models.md
    # section 83), a time limit cannot
    max_minutes: float = 0.0


@dataclass
class SFTConfig:
    mask_weight: float = 1.0  # VIVA's (1 + w * M) edit-mask weight
    sigma_sampling: str = "logit_normal"
    shift: float = 1.0
    # ReViSE's self-reflection loss, reconstructed (its code is not public; docs/small_models.md, section 42):
    # uso_weight x the mean over uso_questions of -log P(Yes) that the judge (rewards.judge_vlm) gives the clean video
    # each flow-matching draw implies (x_sigma - sigma v, decoded), its gradient through the VAE and the judge into the
    # editor. ReViSE weighs it 0.1 against flow matching. Draws with sigma above uso_max_sigma skip it (there the
    # implied video is the blur of an average, which the judge was not trained on).
    uso_weight: float = 0.0
    uso_questions: list[str] = field(default_factory=lambda: ["EA"])
    uso_max_sigma: float = 1.0


@dataclass
class RolloutConfig:
    """Edit-GRPO and RWO rollouts: Flow-SDE sampling with log-probs, groups of G samples per record."""

    group_size: int = 8
    steps: int = 10
    shift: float = 5.0
    cfg: float = 1.0  # classifier-free guidance scale of the rollouts (as EditSettings.cfg); 1 = off
    # GRPO and RWO: the gradient through the guided velocity's negative (unconditioned) rows too, as flow_grpo; false:
    # through the conditioned rows only. Guided, the LoRA's gradient is cfg x the conditioned one minus (cfg - 1) x
    # the unconditioned one, two near-equal terms whose noise adds (docs/small_models.md, section 50)
    uncond_grad: bool = True
    noise_level: float = 0.7
    # latent (frames, rows, cols) blocks the SDE noise is constant over: [1, 1, 1] is Flow-GRPO's SDE; larger blocks
    # explore and credit only coarse directions (the plain SDE's noise and drift correction projected onto
    # block-constant latents, the ODE elsewhere). Meant to cut the policy gradient's noise; on the CPU it did not
    # make batches agree reliably better (docs/small_models.md, section 50)
    noise_block: list[int] = field(default_factory=lambda: [1, 1, 1])
    window: int = 0  # 0: SDE (and training) on every step; k: SDE on k steps in the high-noise half, ODE elsewhere
    window_start: int = 1  # first step of the window (fixed for the run: per-sample random windows destabilize)
    # The G samples of a record start from the same noise, so that their rewards differ only through the SDE steps'
    # noise, the part of the sample the policy's log-probability accounts for (docs/small_models.md, section 14).
    shared_start: bool = False
    clip_range: float = 1e-3
    # GRPO: the Gaussian KL of each SDE step to the base's (LoRA off); RWO: kl_beta mean ||v - v_base||^2, the
    # velocity-space anchor to the base at the flow-matching inputs (what signed weights need to stay bounded)
    kl_beta: float = 0.0
    # GRPO: each pass also descends sft_weight x the mean mask-weighted flow-matching loss of the step's records
    # against their ground-truth targets (the SFT loss, one draw per record and pass). The verifier reward prices
    # preservation only through PC's weight; unguided GRPO bought held-out EA with PC and doubled the validation
    # flow-matching loss (docs/small_models.md, sections 56-57). Needs records with target videos.
    sft_weight: float = 0.0
    # GRPO and RWO: optimizer steps per rollout batch (flow_grpo's inner epochs). For GRPO 1 keeps every update
    # on-policy, where the PPO ratio is exactly 1 and the clip and KL never act; > 1 reuses each (costly) batch of
    # rollouts (RWO with fresh flow-matching draws each pass).
    inner_updates: int = 1
    # records whose G samples share one DiT call (rollouts and the GRPO pass); 1 = one record's group per call (the
    # memory of the per-record path, for big DiTs); 0 = auto: as many as fit AUTO_TOKENS_PER_CALL latent tokens
    # (with CFG's doubled rows), so the bundled 64x64 editor goes all at once and a 480p Wan record by record.
    micro_batch: int = 0
    # clips per VAE decode of the rollouts; 1 = one at a time; 0 = auto: as many as fit AUTO_PIXELS_PER_DECODE pixels
    decode_batch: int = 0
    # on a CUDA device, score a decode chunk's rewards in a worker thread while the next chunk decodes (the same
    # rewards, in order; one chunk's frames more held); false: in turn, as on the CPU (docs/small_models.md, section 91)
    overlap_rewards: bool = True
    rwo_mode: str = "softmax"
    rwo_temperature: float = 1.0
    # RWO: flow-matching draws (sigma, noise) per rollout, the same draws for every sample of a group (common random
    # numbers): the weights' part of the gradient then compares the samples' results under one noise instead of
    # adding each sample's own flow-matching noise. More draws cost a DiT pass each and did not make batches agree
    # better on the CPU (docs/small_models.md, section 40), hence 1.
    rwo_draws: int = 1
    # dtype of the LoRA's side path in the rollouts (no grad): "fp32" (its trained masters), "model" (cast to
    # model.dtype for the rollouts, the fp32 masters back for the update) or "auto" ("model" unless FSDP2 shards the
    # weights). fp32 LoRA weights make every adapted linear run in fp32: +39% a DiT forward at the Wan-1.3B shape on an
    # H100, +13% in bf16, the Edit-GRPO iteration 1.14x; with a trained-size LoRA the first update's |log ratio| is
    # 4e-7 either way, far under any clip (bench/RESULTS.md; docs/small_models.md, sections 72 and 79). "merged": the
    # LoRA merged into the DiT's weights for the rollouts (no side path; the weights restored bit-exactly after,
    # adapters.lora_merged), at the cost of the merged sum's rounding in the DiT's dtype (docs/small_models.md,
    # section 87) and a copy of every adapted weight while they run; compiled, it saves only 3% of the iteration over
    # "model" (section 93), so "auto" stays "model". Under lora.compute_dtype "model" the side path computes in the
    # DiT's dtype whatever this says ("fp32" then casts the masters at each call, "model" once a rollout batch)
    lora_dtype: str = "auto"

    def lora_in_model_dtype(self, parallel: str) -> bool:
        """Whether the rollouts run the LoRA in the DiT's dtype ("auto": yes, except under FSDP2)."""
        return self.lora_dtype == "model" or (self.lora_dtype == "auto" and parallel != "fsdp")


@dataclass
class RewardConfig:
    weights: dict[str, float] = field(default_factory=lambda: {"preservation": 1.0})
    judge_vlm: str = ""
    clip_dir: str = ""


@dataclass
class LogConfig:
    every: int = 1
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    tensorboard: bool = True
    plot: bool = True


@dataclass
class TrainConfig:
    method: str = "sft"
    output_dir: str = "runs/viva_lora"
    output_name: str = "viva_lora"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    rewards: RewardConfig = field(default_factory=RewardConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def check(self) -> None:
        problems = []
        if self.method not in METHODS:
            problems.append(f"method '{self.method}' is not one of {METHODS}")
        if not self.model.editor:
            problems.append("model.editor is empty (a diffusers editor folder or a Wan DiT .safetensors)")
        if not self.data.manifest:
            problems.append("data.manifest is empty (a JSONL manifest, see `viva train --help`)")
        if self.lora.targets not in LORA_TARGETS:
            problems.append(f"lora.targets '{self.lora.targets}' is not one of {sorted(LORA_TARGETS)}")
        if self.lora.rank < 0:
            problems.append("lora.rank must be >= 0")
        if self.lora.rank == 0 and not (self.method == "sft" and (self.model.train_refiner or self.model.allow_t2v)):
            problems.append(
                "lora.rank 0 (no LoRA) needs method sft with model.train_refiner or model.allow_t2v: "
                "otherwise nothing would train"
            )
        if self.method != "sft" and self.rollout.group_size < 2:
            problems.append("rollout.group_size must be >= 2 (advantages are relative within a group)")
        if self.method != "sft" and self.model.allow_t2v:
            problems.append("model.allow_t2v needs method sft: GRPO/RWO train LoRAs only")
        if self.optim.parallel not in ("ddp", "fsdp"):
            problems.append(f"optim.parallel '{self.optim.parallel}' is not ddp or fsdp")
        if self.optim.schedule not in ("constant", "cosine"):
            problems.append(f"optim.schedule '{self.optim.schedule}' is not constant or cosine")
        if self.sft.uso_weight and self.method != "sft":
            problems.append("sft.uso_weight (the judge's loss on flow matching's predictions) needs method sft")
        if self.sft.uso_weight and not self.rewards.judge_vlm:
            problems.append("sft.uso_weight needs rewards.judge_vlm: the judge VLM folder whose P(Yes) it raises")
        from ..judge import DIMENSIONS

        if self.sft.uso_weight and (not self.sft.uso_questions or set(self.sft.uso_questions) - set(DIMENSIONS)):
            problems.append(f"sft.uso_questions {self.sft.uso_questions}: a non-empty list of {list(DIMENSIONS)}")
        block = self.rollout.noise_block
        if not (
            isinstance(block, (list, tuple))
            and len(block) == 3
            and all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in block)
        ):
            problems.append(
                f"rollout.noise_block {block!r}: three positive integers, latent (frames, rows, cols), e.g. [1, 4, 4]"
            )
        if self.rollout.window and not 0 <= self.rollout.window_start < self.rollout.steps:
            problems.append("rollout.window_start must be a step index below rollout.steps")
        problems += check_output_name(self.output_name)
        out = Path(self.output_dir)
        if out.exists() and not out.is_dir():
            problems.append(
                f"output_dir '{self.output_dir}' is a file; name a folder (it holds checkpoints and the LoRA)"
            )
        from ..editor import ATTENTION_BACKENDS, INFERENCE_ONLY_ATTENTION
        from ..runtime import DTYPES
        from .losses import RWO_MODES, SIGMA_MODES

        problems += _choices(
            [
                ("model.dtype", self.model.dtype, ("auto", *DTYPES)),
                ("sft.sigma_sampling", self.sft.sigma_sampling, SIGMA_MODES),
                ("rollout.rwo_mode", self.rollout.rwo_mode, RWO_MODES),
                ("rollout.lora_dtype", self.rollout.lora_dtype, ROLLOUT_LORA_DTYPES),
                ("lora.compute_dtype", self.lora.compute_dtype, LORA_COMPUTE_DTYPES),
                ("model.compile", self.model.compile, TRAIN_COMPILE_MODES),
                ("model.attention", self.model.attention, ATTENTION_BACKENDS),
                ("optim.gradient_checkpointing", self.optim.gradient_checkpointing, GRADIENT_CHECKPOINTING),
            ]
        )
        if self.model.attention in INFERENCE_ONLY_ATTENTION:
            problems.append(
                f"model.attention '{self.model.attention}' has no backward pass (inference only), so training "
                "cannot use it; pick sdpa (or flash4 where flash-attn-4 is installed)"
            )
        if self.model.compile != "off" and self.optim.parallel == "fsdp":
            problems.append('model.compile "blocks" needs optim.parallel "ddp" (not measured with FSDP2\'s sharding)')
        if self.rollout.lora_dtype in ("model", "merged") and self.optim.parallel == "fsdp":
            problems.append(
                f'rollout.lora_dtype "{self.rollout.lora_dtype}" needs optim.parallel "ddp" (FSDP2 owns its sharded '
                "weights)"
            )
        if not DEVICE.match(self.model.device):
            problems.append(f"model.device '{self.model.device}' is not a device; use auto, cpu, cuda, cuda:N or mps")
        o, r = self.optim, self.rollout
        problems += _ranges(
            [
                ("optim.steps", o.steps, 1, None),
                ("optim.lr", o.lr, 0, None),
                ("optim.weight_decay", o.weight_decay, 0, None),
                ("optim.grad_clip", o.grad_clip, 0, None, True),
                ("optim.warmup_steps", o.warmup_steps, 0, None),
                ("optim.max_minutes", o.max_minutes, 0, None),
                ("optim.batch_size", o.batch_size, 1, None),
                ("data.max_frames", self.data.max_frames, 1, None),
                ("data.val_limit", self.data.val_limit, 0, None),
                ("data.height", self.data.height, 0, None),
                ("data.width", self.data.width, 0, None),
                ("model.max_text_tokens", self.model.max_text_tokens, 0, None),
                ("model.refiner_depth", self.model.refiner_depth, 1, None),
                ("model.refiner_hidden", self.model.refiner_hidden, 1, None),
                ("model.refiner_heads", self.model.refiner_heads, 1, None),
                ("sft.mask_weight", self.sft.mask_weight, 0, None),
                ("sft.shift", self.sft.shift, 0, None, True),
                ("sft.uso_weight", self.sft.uso_weight, 0, None),
                ("sft.uso_max_sigma", self.sft.uso_max_sigma, 0, 1, True),
                ("rollout.steps", r.steps, 1, None),
                ("rollout.shift", r.shift, 0, None, True),
                ("rollout.cfg", r.cfg, 0, None),
                ("rollout.noise_level", r.noise_level, 0, None),
                ("rollout.window", r.window, 0, None),
                ("rollout.clip_range", r.clip_range, 0, None, True),
                ("rollout.kl_beta", r.kl_beta, 0, None),
                ("rollout.sft_weight", r.sft_weight, 0, None),
                ("rollout.inner_updates", r.inner_updates, 1, None),
                ("rollout.micro_batch", r.micro_batch, 0, None),
                ("rollout.decode_batch", r.decode_batch, 0, None),
                ("rollout.rwo_temperature", r.rwo_temperature, 0, None, True),
                ("rollout.rwo_draws", r.rwo_draws, 1, None),
                ("log.every", self.log.every, 1, None),
                ("log.checkpoint_every", self.log.checkpoint_every, 0, None),
                ("log.keep_checkpoints", self.log.keep_checkpoints, 0, None),
            ]
            + ([("lora.alpha", self.lora.alpha, 0, None, True)] if self.lora.rank > 0 else [])
        )  # unused without a LoRA
        if bool(self.data.height) != bool(self.data.width):
            problems.append("data.height and data.width: set both, or leave both at 0 to keep the videos' size")
        raise_problems(problems, "training config")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def scheduled_lr(lr: float, step: int, steps: int, warmup_steps: int, schedule: str = "cosine") -> float:
    """Linear warm-up to `lr` over `warmup_steps`, then constant, or cosine decay from `lr` to 0 at `steps` over the
    steps after the warm-up (both trainers). The decay starts where the warm-up ends, so the run reaches `lr`
    whatever the ratio of warm-up to steps (an earlier form multiplied the two and peaked at half of it)."""
    if warmup_steps and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "cosine":
        done = min(step - warmup_steps, steps - warmup_steps) / max(1, steps - warmup_steps)
        return lr * 0.5 * (1 + math.cos(math.pi * done))
    return lr


def raise_problems(problems: list[str], what: str) -> None:
    """One ConfigError listing every problem of a config (none: returns)."""
    if problems:
        raise ConfigError(f"invalid {what}:\n  - " + "\n  - ".join(problems))


def check_output_name(name: str) -> list[str]:
    """Output names become file names inside output_dir: a path ('../../x', 'a/b') would write elsewhere."""
    if PLAIN_NAME.match(name) and not name.endswith(".safetensors"):
        return []
    return [
        f"output_name '{name}' must be a plain name (letters, digits, _ . -; no folders, no leading dot, no "
        ".safetensors): it names files inside output_dir"
    ]


def _choices(items: list[tuple[str, str, tuple[str, ...]]]) -> list[str]:
    return [f"{name} '{value}' is not one of {list(allowed)}" for name, value, allowed in items if value not in allowed]


def _ranges(items: list[tuple]) -> list[str]:
    """(name, value, low, high[, low_exclusive]) -> a problem for each value outside its range."""
    problems = []
    for name, value, lo, hi, *open_ in items:
        above = value > lo if open_ and open_[0] else value >= lo
        if not above or (hi is not None and value > hi):
            bound = f"> {lo}" if open_ and open_[0] else f">= {lo}"
            problems.append(f"{name} = {value} must be {bound}" + (f" and <= {hi}" if hi is not None else ""))
    return problems


def _coerce(value: str, current: Any) -> Any:
    """`--set` values arrive as text: parse them as the type the field already has (JSON for dicts/lists)."""
    if isinstance(current, bool):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"'{value}' is not a boolean (true/false)")
    if isinstance(current, int):
        return int(value)
    if isinstance(current, float):
        return float(value)
    if isinstance(current, (dict, list)):
        return json.loads(value)
    return value


_TYPE_NAMES = {
    bool: ("a boolean", "true"),
    int: ("an integer", "8"),
    float: ("a number", "0.5"),
    str: ("a string", '"text"'),
    dict: ("a table", "{ a = 1.0 }"),
    list: ("a list", "[1, 2]"),
}


def _describe(value: Any) -> str:
    kind = {bool: "boolean", int: "integer", float: "number", str: "string", dict: "table", list: "list"}.get(
        type(value), type(value).__name__
    )
    shown = json.dumps(value) if isinstance(value, str) else repr(value)
    return f"the {kind} {shown}"


def _typed(value: Any, hint: Any, where: str) -> Any:
    """`value` checked against the field's type hint (bool is not an int; an int is a float; floats are finite);
    returns it converted where that is lossless (int -> float). The message names the key and the fix."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union:  # Optional[X]
        if value is None and type(None) in args:
            return None
        return _typed(value, next(a for a in args if a is not type(None)), where)
    base = origin or hint
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
        dict: lambda v: isinstance(v, dict),
        list: lambda v: isinstance(v, list),
    }.get(base)
    if ok is None:
        return value  # Any / unknown: nothing to check
    if not ok(value):
        name, example = _TYPE_NAMES[base]
        key = where.rsplit(".", 1)[-1]
        raise ConfigError(f"config '{where}' must be {name}, got {_describe(value)}; write e.g. {key} = {example}")
    if base is float:
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"config '{where}' must be a finite number, got {value}")
    if base is dict and len(args) == 2:
        return {_typed(k, args[0], f"{where}.{k}"): _typed(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if base is list and len(args) == 1:
        return [_typed(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def _hints(section: Any) -> dict[str, Any]:
    return typing.get_type_hints(type(section))


def _apply(section: Any, data: dict, where: str) -> None:
    hints = _hints(section)
    for key, value in data.items():
        if key not in hints:
            valid = [f.name for f in dataclasses.fields(section)]
            raise ConfigError(f"unknown config key '{where}{key}'; valid keys here: {valid}")
        current = getattr(section, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(
                    f"config '{where}{key}' must be a table ([{where}{key}] section), got {_describe(value)}"
                )
            _apply(current, value, f"{where}{key}.")
        else:
            setattr(section, key, _typed(value, hints[key], f"{where}{key}"))


def read_toml(path: str | Path) -> dict:
    """A TOML file as a dict; a missing file, a folder, non-UTF-8 bytes or bad TOML give a ConfigError naming it."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{p}: is a folder; name the TOML config file inside it.")
    try:
        return tomllib.loads(p.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found.") from None
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{p}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); save the config as UTF-8."
        ) from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read the config ({e.strerror or e}).") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML ({e}).") from None


def parse_reward_weights(text: str) -> dict[str, float]:
    """`"preservation=1.0, judge=0.5"` → {"preservation": 1.0, "judge": 0.5} (the ComfyUI node's `rewards` text).

    Pairs are separated by commas or new lines; a name without `=weight` weighs 1. Names keep their order and
    are checked by `rewards.build_rewards`; here only the form is: empty names, non-numbers, repeats."""
    weights: dict[str, float] = {}
    for item in text.replace("\n", ",").split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        name = name.strip()
        if not name:
            raise InputError(f"rewards: '{item.strip()}' has no reward name; write name=weight, e.g. preservation=1.0")
        try:
            weight = float(value) if sep else 1.0
        except ValueError:
            raise InputError(f"rewards: the weight of '{name}' is '{value.strip()}', not a number") from None
        if not math.isfinite(weight):
            raise InputError(f"rewards: the weight of '{name}' must be a finite number, got {value.strip()}")
        if name in weights:
            raise InputError(f"rewards: '{name}' is given twice; keep one")
        weights[name] = weight
    return weights


def fill_config(cfg: Any, path: Optional[str] = None, overrides: Optional[list[str]] = None) -> Any:
    """Fill a config dataclass from a TOML file (optional), then `section.key=value` overrides; returns `cfg`.
    Every value is type-checked against its field (see `_typed`); ranges are each config's `check()`."""
    if path:
        try:
            _apply(cfg, read_toml(path), "")
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}" if not str(e).startswith(str(path)) else str(e)) from None
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set '{item}' must look like section.key=value")
        *parents, leaf = key.strip().split(".")
        section = cfg
        for name in parents:
            section = getattr(section, name, None)
            if not dataclasses.is_dataclass(section):
                raise ConfigError(f"--set '{item}': no config section '{name}'")
        hints = _hints(section)
        if leaf not in hints or dataclasses.is_dataclass(getattr(section, leaf)):
            raise ConfigError(f"--set '{item}': unknown key '{key}'; valid keys here: {sorted(hints)}")
        try:
            setattr(section, leaf, _typed(_coerce(value, getattr(section, leaf)), hints[leaf], key.strip()))
        except ConfigError as e:
            raise ConfigError(f"--set '{item}': {e}") from None
        except (ValueError, json.JSONDecodeError) as e:
            raise ConfigError(f"--set '{item}': {e}") from None
    return cfg


def load_config(path: Optional[str] = None, overrides: Optional[list[str]] = None) -> TrainConfig:
    """TOML file (optional) then `section.key=value` overrides; relative paths stay relative to the CWD."""
    cfg = fill_config(TrainConfig(), path, overrides)
    cfg.check()
    return cfg
