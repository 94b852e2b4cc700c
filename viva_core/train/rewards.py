"""Reward terms for Edit-GRPO and RWO: small callable objects, combined with weights (README.md, "Training").

Each reward maps a batch of N edits (`RewardInput`) to N scores, higher is better, and has a `name` used in
logs. `build_rewards` turns a config mapping such as {"judge": 1.0, "preservation": 0.5} into the reward
objects and a weight vector; `score_all` runs them into an [N, K] table that `losses.group_advantages`
normalizes per group and term. Scores are plain numbers (no grad): the policy gradient needs no reward grad.

Built-in names:
    judge[:EA+PC+...]    mean P(Yes) of the ReViSE judge over all (or the listed) dimensions, in [0, 1]
    verifier[:EA+PC+...] mean of `viva eval`'s exact scores against the data's ground truth (EA edit accuracy, PC
                         preservation, GN naturalness, GR realism; default all four), in [0, 1]: synthetic data's
                         perfect reward; SP (spill, not in the default) penalizes changes to what the edit should
                         leave alone by the area changed, which PC's PSNR barely sees (`eval.metrics.spills`)
    preservation         1 - mean |source - edit| outside the edit mask, in [0, 1]
    clip                 VIVA instruction following: CLIP(V_edit, t_edit) - CLIP(V_edit, t_src), in [-2, 2]
    callable:mod:fn      any Python function (RewardInput) -> Tensor[N], imported by name (never eval'd)
"""

from __future__ import annotations

import importlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Protocol, Sequence

import torch

from ..errors import InputError, ModelLoadError, NonFiniteError
from ..judge import DIMENSIONS, Judge
from ..runtime import parse_device, parse_dtype
from ..safe_io import PICKLE_SUFFIXES
from ..video import uniform_frame_indices
from ..vlm import to_pil_image

REWARD_NAMES = (
    "judge",
    "judge:<EA+PC+GN+GR subset>",
    "verifier",
    "verifier:<EA+PC+GN+GR+SP subset>",
    "preservation",
    "clip",
    "callable:<module>:<function>",
)


@dataclass
class RewardInput:
    """N edits to score. Videos are CPU float32 frames in 0..1: `source`/`edited` [N, T, H, W, 3] (a shared
    source may be an `expand`ed view), `masks` [N, T, H, W] (1 = edited region) or None; one instruction and
    optional source/target caption per sample (CLIP rewards need the captions). `latents` [N, C, T', H', W'] are
    the normalized latents the edit was decoded from, for rewards that look at the latent space (cheap).
    `targets` [N, T, H, W, 3] are the ground-truth edits when the data has them, and `labels` the manifest's
    benchmark fields per sample (operation, verify: what `viva synth` writes) for the exact verifiers."""

    source: torch.Tensor
    edited: torch.Tensor
    instructions: Sequence[str]
    masks: Optional[torch.Tensor] = None
    source_captions: Optional[Sequence[Optional[str]]] = None
    target_captions: Optional[Sequence[Optional[str]]] = None
    latents: Optional[torch.Tensor] = None
    targets: Optional[torch.Tensor] = None
    labels: Optional[Sequence[Mapping[str, Any]]] = None

    def __post_init__(self) -> None:
        for what in ("source", "edited"):
            v = getattr(self, what)
            if not isinstance(v, torch.Tensor) or v.ndim != 5 or v.shape[-1] != 3:
                shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
                raise InputError(f"RewardInput.{what}: expected frames [N,T,H,W,3] float 0..1, got {shape}.")
            setattr(self, what, v.detach().float().cpu())
        n = self.n
        if self.edited.shape[0] != n:
            raise InputError(f"RewardInput: {n} source videos but {self.edited.shape[0]} edited videos.")
        self.instructions = list(self.instructions)
        if len(self.instructions) != n:
            raise InputError(f"RewardInput: {len(self.instructions)} instructions for {n} samples.")
        if self.masks is not None:
            if tuple(self.masks.shape) != tuple(self.source.shape[:4]):
                raise InputError(
                    f"RewardInput.masks: expected [N,T,H,W] = {tuple(self.source.shape[:4])} (the "
                    f"source's frames), got {tuple(self.masks.shape)}."
                )
            self.masks = self.masks.detach().float().cpu()
        if self.latents is not None:
            if self.latents.ndim != 5 or self.latents.shape[0] != n:
                raise InputError(
                    f"RewardInput.latents: expected [N,C,T',H',W'] with N={n}, got {tuple(self.latents.shape)}."
                )
            self.latents = self.latents.detach().float().cpu()
        if self.targets is not None:
            if tuple(self.targets.shape) != tuple(self.source.shape):
                raise InputError(
                    f"RewardInput.targets: expected [N,T,H,W,3] = {tuple(self.source.shape)} (the "
                    f"source's shape), got {tuple(self.targets.shape)}."
                )
            self.targets = self.targets.detach().float().cpu()
        self.labels = [{} for _ in range(n)] if self.labels is None else [dict(x) for x in self.labels]
        if len(self.labels) != n:
            raise InputError(f"RewardInput: {len(self.labels)} label sets for {n} samples.")
        for what in ("source_captions", "target_captions"):
            caps = getattr(self, what)
            caps = [None] * n if caps is None else list(caps)
            if len(caps) != n:
                raise InputError(f"RewardInput.{what}: {len(caps)} captions for {n} samples.")
            setattr(self, what, caps)

    @property
    def n(self) -> int:
        return int(self.source.shape[0])


class Reward(Protocol):
    """What the trainer needs from a reward term. Optional: `parallel_safe = True` (a pure function of the frames,
    whose batches may run in threads), or a `joint_key` and a static `score_joint(terms, batches)` that scores the
    terms of one key over many batches in one call (`JudgeReward`)."""

    name: str

    def __call__(self, batch: RewardInput) -> torch.Tensor: ...


# ------------------------------------------------------------------------------------------- judge


class JudgeReward:
    """Mean P(Yes) of the self-reflection judge over `dimensions` (ReViSE's critic as a reward), in [0, 1]."""

    def __init__(self, judge: Judge, dimensions: Sequence[str] = DIMENSIONS, num_frames: int = 4, name: str = "judge"):
        dims = tuple(dimensions)
        unknown = [d for d in dims if d not in DIMENSIONS]
        if not dims or unknown:
            raise InputError(f"judge reward: dimensions {list(dims)} must be a non-empty subset of {list(DIMENSIONS)}.")
        if num_frames < 1:
            raise InputError(f"judge reward: num_frames must be >= 1, got {num_frames}.")
        self.judge, self.dimensions, self.num_frames, self.name = judge, dims, num_frames, name

    def __call__(self, batch: RewardInput) -> torch.Tensor:
        return self.score_joint([self], [batch])[0][0]

    @property
    def joint_key(self) -> tuple[int, int]:
        """Judge terms with the same key (one judge, one frame count) are scored together (`score_joint`)."""
        return id(self.judge), self.num_frames

    @staticmethod
    @torch.no_grad()
    def score_joint(terms: Sequence[JudgeReward], batches: Sequence[RewardInput]) -> list[list[torch.Tensor]]:
        """Each term's scores of each batch ([term][batch] -> [n]) from one `Judge.score_batch` over every batch's
        edits asking the terms' questions once: a recipe's `judge:EA` and `judge:PC` terms share the vision tower and
        the forwards, and the G rollouts of many records fill a forward. Judged one record and one term a call (32 x 2
        calls of 16 edits), the reward took 8-12 s of a ~15 s step on an H100, where the judge scores 512 edits in
        64-edit forwards in 3 s (docs/small_models.md, section 71)."""
        judge, frames = terms[0].judge, terms[0].num_frames
        if any(t.joint_key != terms[0].joint_key for t in terms):
            raise InputError("JudgeReward.score_joint: the terms must share one judge and frame count.")
        questions = [d for d in DIMENSIONS if any(d in t.dimensions for t in terms)]
        pick = [(b, i) for b in batches for i in range(b.n)]
        scores = judge.score_batch(
            [b.source[i] for b, i in pick],
            [b.edited[i] for b, i in pick],
            [b.instructions[i] for b, i in pick],
            questions=questions,
            num_frames=frames,
        )
        sizes = [b.n for b in batches]
        return [list(scores[:, [questions.index(d) for d in t.dimensions]].mean(dim=1).split(sizes)) for t in terms]


# ------------------------------------------------------------------------------------------- verifier


class VerifierReward:
    """Mean of the exact benchmark's scores (`eval.score_edit`) over `dimensions`, in [0, 1] (PC averages SSIM in,
    which dips below 0 on outputs unrelated to the source, so a ruined edit's PC can be slightly negative).

    Needs the ground-truth edit (`targets`); the per-operation EA verifiers also read the `operation` and
    `verify` labels `viva synth` writes (without them EA falls back to the distance-to-target check). A
    dimension that is undefined for a sample (PC when the mask covers every pixel) is left out of its mean."""

    needs_labels = True
    FIELDS = {"EA": "ea", "PC": "pc", "GN": "gn", "GR": "gr", "SP": "spill"}
    BENCHMARK = ("EA", "PC", "GN", "GR")  # plain `verifier`: the benchmark's four dimensions

    def __init__(
        self, dimensions: Sequence[str] = BENCHMARK, name: str = "verifier", device: str | torch.device = "cpu"
    ):
        dims = tuple(dimensions)
        unknown = [d for d in dims if d not in self.FIELDS]
        if not dims or unknown:
            raise InputError(
                f"verifier reward: dimensions {list(dims)} must be a non-empty subset of {list(self.FIELDS)}."
            )
        self.dimensions, self.name = dims, name
        # where the scores are computed: on the GPU a group's verifiers are a few dozen batched kernels; on the CPU
        # SSIM's arithmetic alone takes ~5 ms a 17-frame 64x64 clip (docs/small_models.md, section 50)
        self.device = parse_device(device)
        # pure functions of the frames: score_records may run records in CPU threads (one stream on a GPU)
        self.parallel_safe = self.device.type == "cpu"

    @torch.no_grad()
    def __call__(self, batch: RewardInput) -> torch.Tensor:
        """`eval.score_edit`'s functions per clip, with three savings: only the requested dimensions are computed
        (score_edit computes all four); the inputs are checked and clamped once per batch (once in all for a source,
        target or mask `expand`ed over the batch, as the trainer passes a record's G rollouts); and such a group is
        scored as one batch (`batch_dimension_scores`: what EA and PC measure on the source and ground truth once,
        the outputs' measures in a few batched ops instead of G rounds of small ones)."""
        from ..eval.metrics import checked_range, derive_mask
        from ..eval.score import batch_dimension_scores

        if batch.targets is None:
            raise InputError(
                f"reward '{self.name}' scores edits against the ground truth, but the data has no "
                "target_video; use a manifest with targets (e.g. `viva synth`) or another reward."
            )
        dev = self.device

        def checked(x: torch.Tensor, what: str) -> torch.Tensor:
            return checked_range(x.to(dev), what)

        src = _shared(batch.source, checked, "source")
        out = checked(batch.edited, "output")
        tgt = _shared(batch.targets, checked, "target")
        if batch.masks is not None:
            mask = _shared(batch.masks, lambda m, _: m.to(dev) > 0.5, "mask")  # eval.metrics._mask of [T,H,W]
        else:
            mask = None
        one_edit = all(_is_one(x) for x in (batch.source, batch.targets, batch.masks) if x is not None) and all(
            label == batch.labels[0] for label in batch.labels
        )
        groups = [range(batch.n)] if one_edit else [range(i, i + 1) for i in range(batch.n)]
        dims = set(self.dimensions)
        scores = []
        for rows in groups:
            i = rows[0]
            label = batch.labels[i]
            verify = label.get("verify") if isinstance(label.get("verify"), dict) else None
            operation = label.get("operation") if isinstance(label.get("operation"), str) else None
            s, y = src[i], tgt[i]
            m = derive_mask(s, y) if mask is None else mask[i]
            results = batch_dimension_scores(s, out[rows.start : rows.stop], y, m, verify, operation, dims)
            for j in range(len(rows)):
                kept = [v for v in (results[d][j][0] for d in self.dimensions) if v is not None]
                scores.append(sum(kept) / len(kept) if kept else 0.0)
        return torch.tensor(scores, dtype=torch.float32)


def _is_one(x: torch.Tensor) -> bool:
    """x holds one sample for the whole batch: a batch of one, or one sample `expand`ed over it (stride 0)."""
    return x.shape[0] == 1 or x.stride(0) == 0


def _shared(x: torch.Tensor, fn: Callable[[torch.Tensor, str], torch.Tensor], name: str) -> torch.Tensor:
    """fn(x, name) on the batch, or on its first sample only when x is one sample `expand`ed over the batch (stride 0),
    expanded back."""
    if x.shape[0] > 1 and x.stride(0) == 0:
        one = fn(x[:1], name)
        return one.expand(x.shape[0], *one.shape[1:])
    return fn(x, name)


# ------------------------------------------------------------------------------------------- preservation


class PreservationReward:
    """1 - mean |source - edit| (over pixels and channels) outside the edit mask, in [0, 1].

    Penalizes changes where the instruction asked for none. With no mask (or `outside_mask=False`) the whole
    frame counts, which also penalizes the edit itself: weight it lower than the instruction term then.
    Soft masks weigh each pixel by (1 - M); a mask covering everything leaves nothing to preserve: 1."""

    parallel_safe = True  # a pure function of the frames: score_records may run records in threads

    def __init__(self, outside_mask: bool = True, name: str = "preservation"):
        self.outside_mask, self.name = outside_mask, name

    @torch.no_grad()
    def __call__(self, batch: RewardInput) -> torch.Tensor:
        if batch.source.shape != batch.edited.shape:
            raise InputError(
                f"preservation reward: source {tuple(batch.source.shape)} and edit "
                f"{tuple(batch.edited.shape)} must have the same frames and size."
            )
        diff = (batch.source - batch.edited).abs().mean(dim=-1)  # [N, T, H, W]
        keep = (1.0 - batch.masks) if (self.outside_mask and batch.masks is not None) else torch.ones_like(diff)
        den = keep.sum(dim=(1, 2, 3))
        mean_diff = (keep * diff).sum(dim=(1, 2, 3)) / den.clamp(min=1e-12)
        return torch.where(den > 0, 1.0 - mean_diff, torch.ones_like(den)).clamp(0.0, 1.0)


# ------------------------------------------------------------------------------------------- CLIP


def _check_clip_folder(path: str | os.PathLike) -> Path:
    folder = Path(path)
    need = (
        "config.json, model.safetensors, tokenizer files and preprocessor_config.json (a CLIP model folder "
        "such as openai/clip-vit-large-patch14)"
    )
    if not folder.is_dir():
        raise ModelLoadError(f"{folder}: CLIP folder not found. Give the folder with {need}.")
    files = {p.name for p in folder.iterdir() if p.is_file()}
    if "config.json" not in files:
        raise ModelLoadError(f"{folder}: CLIP folder has no config.json. Expected {need}.")
    if not any(n.endswith(".safetensors") for n in files):
        pickles = sorted(n for n in files if n.lower().endswith(PICKLE_SUFFIXES))
        why = (
            f"the weights are in pickle format ({', '.join(pickles)}), refused because loading it can run "
            "arbitrary code"
            if pickles
            else "no *.safetensors weights"
        )
        raise ModelLoadError(f"{folder}: {why}. Use the model's .safetensors release.")
    if "preprocessor_config.json" not in files:
        raise ModelLoadError(f"{folder}: CLIP folder has no preprocessor_config.json. Expected {need}.")
    return folder


def _features(out: Any) -> torch.Tensor:
    """get_*_features returns a tensor (transformers 4) or an output whose pooler_output is projected (5)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class ClipReward:
    """VIVA's instruction-following reward: mean over sampled edited frames of
    cos(CLIP_img(frame), CLIP_txt(target caption)) - cos(CLIP_img(frame), CLIP_txt(source caption)).

    Rewards moving the video toward the target description and away from the source one; raw cosines
    (no logit scale), so the value lies in [-2, 2]. Loaded from a local folder only."""

    def __init__(
        self,
        clip_dir: str | os.PathLike,
        device: str | torch.device = "cpu",
        *,
        num_frames: int = 4,
        dtype: str | torch.dtype = "fp32",
        name: str = "clip",
    ):
        folder = _check_clip_folder(clip_dir)
        from transformers import CLIPModel, CLIPProcessor

        self.device, self.num_frames, self.name = parse_device(device), num_frames, name
        try:
            self.model = (
                CLIPModel.from_pretrained(folder, local_files_only=True, use_safetensors=True, dtype=parse_dtype(dtype))
                .to(self.device)
                .eval()
            )
            self.processor = CLIPProcessor.from_pretrained(folder, local_files_only=True)
        except Exception as e:  # transformers raises OSError / ValueError / KeyError on foreign folders
            raise ModelLoadError(f"{folder}: cannot load a CLIP model and processor ({type(e).__name__}: {e}).") from e
        self.model.requires_grad_(False)
        self.max_text_tokens = int(self.model.config.text_config.max_position_embeddings)

    def _text(self, caption: str) -> torch.Tensor:
        """One caption alone (no padding): equal captions give bit-equal vectors, so an unchanged caption scores
        exactly 0 whatever order a batched kernel would sum in."""
        tok = self.processor(text=[caption], truncation=True, max_length=self.max_text_tokens, return_tensors="pt")
        feats = _features(self.model.get_text_features(**{k: v.to(self.device) for k, v in tok.items()}))
        return torch.nn.functional.normalize(feats.float(), dim=-1)[0]

    def _images(self, frames: torch.Tensor) -> torch.Tensor:
        pix = self.processor(images=[to_pil_image(f) for f in frames], return_tensors="pt")["pixel_values"]
        feats = _features(self.model.get_image_features(pixel_values=pix.to(self.device, self.model.dtype)))
        return torch.nn.functional.normalize(feats.float(), dim=-1)

    @torch.no_grad()
    def __call__(self, batch: RewardInput) -> torch.Tensor:
        for what in ("target_captions", "source_captions"):
            missing = [i for i, c in enumerate(getattr(batch, what)) if not (isinstance(c, str) and c.strip())]
            if missing:
                raise InputError(
                    f"reward '{self.name}' needs {what} for every sample (it scores CLIP(edit, target "
                    f"caption) - CLIP(edit, source caption)); missing for samples {missing}. Add "
                    "source_caption and target_caption to the data, or drop the clip reward."
                )
        out, text = [], {}
        for i in range(batch.n):
            frames = batch.edited[i][uniform_frame_indices(batch.edited.shape[1], self.num_frames)]
            img = self._images(frames)  # [F, D]
            tgt, src = (c.strip() for c in (batch.target_captions[i], batch.source_captions[i]))
            for c in (tgt, src):
                if c not in text:
                    text[c] = self._text(c)
            out.append(float((img @ text[tgt] - img @ text[src]).mean()))  # two mat-vecs: tgt == src gives 0.0
        return torch.tensor(out, dtype=torch.float32)


# ------------------------------------------------------------------------------------------- user callables


def load_callable(spec: str) -> Callable[[RewardInput], Any]:
    """Import "package.module:function" (attribute paths like "mod:Class.method" too) with importlib."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise InputError(f"callable reward '{spec}': expected 'package.module:function'.")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise InputError(
            f"callable reward '{spec}': cannot import module '{module_name}' ({e}). Put it on "
            "PYTHONPATH or install its package."
        ) from e
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise InputError(f"callable reward '{spec}': module '{module_name}' has no '{attr}'.") from None
    if not callable(obj):
        raise InputError(f"callable reward '{spec}': '{attr}' is a {type(obj).__name__}, not a function.")
    return obj


class CallableReward:
    """A user function (RewardInput) -> Tensor[N] (or a sequence of N numbers) as a reward term."""

    def __init__(self, fn: Callable[[RewardInput], Any], name: str):
        self.fn, self.name = fn, name

    def __call__(self, batch: RewardInput) -> torch.Tensor:
        out = self.fn(batch)
        return out if isinstance(out, torch.Tensor) else torch.as_tensor(out, dtype=torch.float32)


# ------------------------------------------------------------------------------------------- assembly


def build_rewards(
    spec: Mapping[str, float],
    *,
    judge: Optional[Judge] = None,
    clip_dir: Optional[str | os.PathLike] = None,
    device: str | torch.device = "cpu",
) -> tuple[list[Reward], torch.Tensor]:
    """Reward objects and their weights [K] (fp32), in the order of `spec` ({name: weight}). Each reward's
    name is its key in `spec`. The judge is passed in already loaded (it is shared with evaluation)."""
    if not spec:
        raise InputError(f"no rewards given; name at least one of {list(REWARD_NAMES)}.")
    rewards: list[Reward] = []
    weights: list[float] = []
    for key, weight in spec.items():
        try:
            w = float(weight)
        except (TypeError, ValueError):
            w = math.nan
        if not math.isfinite(w):
            raise InputError(f"reward '{key}': weight must be a finite number, got {weight!r}.")
        kind, _, arg = key.partition(":")
        if kind == "judge":
            if judge is None:
                raise InputError(f"reward '{key}' needs a judge VLM (rewards.judge_vlm).")
            dims = [d.strip() for d in arg.replace(",", "+").split("+") if d.strip()] if arg else list(DIMENSIONS)
            rewards.append(JudgeReward(judge, dims, name=key))
        elif kind == "verifier":
            dims = (
                [d.strip() for d in arg.replace(",", "+").split("+") if d.strip()]
                if arg
                else list(VerifierReward.BENCHMARK)
            )
            rewards.append(VerifierReward(dims, name=key, device=device))
        elif key == "preservation":
            rewards.append(PreservationReward(name=key))
        elif key == "clip":
            if not clip_dir:
                raise InputError("reward 'clip' needs a local CLIP model folder (rewards.clip_dir).")
            rewards.append(ClipReward(clip_dir, device, name=key))
        elif kind == "callable" and arg:
            rewards.append(CallableReward(load_callable(arg), name=key))
        else:
            raise InputError(f"unknown reward '{key}'; valid names: {', '.join(REWARD_NAMES)}.")
        weights.append(w)
    return rewards, torch.tensor(weights, dtype=torch.float32)


# threads that score records at once when every reward is a pure CPU function (`parallel_safe`): the verifiers took
# ~30% of an RWO step on the H200 machine scored one record after another (docs/small_models.md, section 40)
MAX_REWARD_THREADS = 8


def score_records(rewards: Sequence[Reward], batches: Sequence[RewardInput]) -> list[torch.Tensor]:
    """`score_all` of each batch (one record's group each), in order, a reward at a time: rewards with a
    `score_joint` (the judge's terms) are scored together, all the batches in one call per `joint_key`; one that says
    it is `parallel_safe` (a pure function of the frames: the verifiers, preservation) runs the batches in a thread
    pool; other models (CLIP) and user callables score one batch after another."""
    if not rewards:
        raise InputError("score_all: no rewards to compute.")
    outputs: list = [None] * len(rewards)  # each reward's outputs of each batch
    joint: dict = {}  # (type, joint_key) -> indices of the rewards scored together
    for k, r in enumerate(rewards):
        if hasattr(r, "score_joint"):
            joint.setdefault((type(r), r.joint_key), []).append(k)
        else:
            outputs[k] = _outputs(r, batches)
    for (kind, _), ks in joint.items():
        for k, outs in zip(ks, kind.score_joint([rewards[k] for k in ks], batches), strict=True):
            outputs[k] = outs
    columns = [[_checked(r, b, out) for b, out in zip(batches, outs, strict=True)] for r, outs in zip(rewards, outputs)]
    return [torch.stack([col[b] for col in columns], dim=1) for b in range(len(batches))]


def _outputs(reward: Reward, batches: Sequence[RewardInput]) -> list:
    """One reward's outputs of each batch: the batches in threads when it is `parallel_safe`, else in turn."""
    threads = min(len(batches), os.cpu_count() or 1, MAX_REWARD_THREADS)
    if threads >= 2 and getattr(reward, "parallel_safe", False):
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(reward, batches))
    return [reward(b) for b in batches]


def _checked(reward: Reward, batch: RewardInput, out: Any) -> torch.Tensor:
    """A reward's output for one batch as [n] fp32 on CPU, finite (NaN/Inf raises NonFiniteError naming the reward:
    it would poison the group statistics)."""
    out = torch.as_tensor(out).detach().float().cpu()
    if tuple(out.shape) != (batch.n,):
        raise InputError(f"reward '{reward.name}' returned shape {tuple(out.shape)}; expected [N] = [{batch.n}].")
    bad = torch.nonzero(~torch.isfinite(out)).flatten().tolist()
    if bad:
        raise NonFiniteError(
            f"reward '{reward.name}' returned NaN/Inf for samples {bad}; nothing was trained on "
            "this batch. Check the reward's inputs (empty masks, blank frames) or its code."
        )
    return out


def score_all(rewards: Sequence[Reward], batch: RewardInput) -> torch.Tensor:
    """Run every reward on the batch: [N, K] fp32 on CPU, column k = rewards[k] (`score_records`' checks)."""
    return score_records(rewards, [batch])[0]
