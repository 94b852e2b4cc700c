"""The trainer behind `viva train` and the ComfyUI Train LoRA node: SFT, Edit-GRPO and RWO share the model
setup, data, rollouts, rewards, logging and checkpoints here; the formulas live in `losses.py`.

Determinism: every random draw of a sample is seeded from (seed, step, global sample index), and the data order
from (seed, epoch), so a resumed run, or the same global batch split over K processes, reproduces a straight run.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from .. import compat
from ..data import EditRecord, EditSample, TensorCache, file_identity, load_manifest, load_sample, model_identity
from ..editor import INFERENCE_ONLY_ATTENTION, Conditioning, Editor, EditorOptions, compile_dit, load_editor
from ..errors import InputError, NonFiniteError
from ..lora import save_lora
from ..pipeline import (
    decode_latents_batch,
    decode_latents_differentiable,
    dit_velocity,
    encode_frames_batch,
    guided_velocity,
    pad_tokens,
    unconditional,
)
from ..runtime import ProgressFn, no_progress
from ..sampling import sde_step_with_logprob, shifted_sigmas
from . import losses as L
from .adapters import (
    adapter_disabled,
    add_lora,
    export_lora,
    full_optimizer_state,
    full_tensor,
    load_optimizer_state,
    load_trainable_state,
    lora_cast,
    lora_merged,
    lora_side_path_in_model_dtype,
    trainable_state,
)
from .checkpoint import latest_checkpoint, load_checkpoint, remove_stale_temporaries, save_checkpoint
from .config import AUTO_CHECKPOINTING_PARAMS, TrainConfig, scheduled_lr
from .distributed import World, all_gather_cat, any_ranks, init_world, shutdown
from .metrics import MetricsLog
from .rollout import Transition, sde_rollout

log = logging.getLogger(__name__)

# rollout.micro_batch = 0 (auto): latent tokens per DiT call, CFG's doubled rows counted. The bundled 64x64x17 editor
# (320 tokens a sample) puts 12 records of 8 guided samples in a call; one 480x832x33 Wan record (14,040 tokens a
# sample, 224,640 for 8 guided samples) already exceeds it, so big DiTs keep the per-record calls (and memory) they had.
AUTO_TOKENS_PER_CALL = 2**16
# rollout.decode_batch = 0 (auto): frame pixels per VAE decode: 60 clips of 64x64x17; 480x832 clips one at a time.
AUTO_PIXELS_PER_DECODE = 2**22


@dataclass
class TrainResult:
    lora_path: Optional[Path]  # None when only the refiner / source channels were trained (lora.rank 0)
    refiner_path: Optional[Path]
    steps: int
    interrupted: bool
    last_metrics: dict = field(default_factory=dict)
    timed_out: bool = False  # interrupted by optim.max_minutes alone (no stop request on any rank): what the job asked


# The step index the validation rollouts' noise is seeded with: never a training step's (those count from 0).
VALIDATION_STEP = -1


def _seed(*parts: int) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") & (2**63 - 1)


def _gen(*parts: int, device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device).manual_seed(_seed(*parts))


def checkpointing_wanted(setting: str, dit: torch.nn.Module) -> bool:
    """optim.gradient_checkpointing: "on", "off", or "auto" (on from AUTO_CHECKPOINTING_PARAMS of DiT weights)."""
    if setting == "auto":
        return sum(p.numel() for p in dit.parameters()) >= AUTO_CHECKPOINTING_PARAMS
    return setting == "on"


class Trainer:
    def __init__(
        self,
        cfg: TrainConfig,
        *,
        progress: ProgressFn = no_progress,
        should_stop: Callable[[], bool] = lambda: False,
        on_log: Callable[[int, dict], None] = lambda step, metrics: None,
        editor: Optional[Editor] = None,
    ) -> None:
        """`editor`: an editor already loaded (ComfyUI's graph editor, on its device) to train on instead of
        loading `cfg.model.editor` a second time; the caller removes the LoRA after (adapters.remove_lora)."""
        cfg.check()
        self.cfg, self.progress, self.should_stop, self.on_log = cfg, progress, should_stop, on_log
        self.loaded_editor = editor
        self.out = Path(cfg.output_dir)
        self.stop_requested = False
        self.timed_out = False  # the loop stopped at optim.max_minutes and no rank was asked to stop (`_stop`)
        self._negative: Optional[torch.Tensor] = None
        self._orders: dict[int, torch.Tensor] = {}
        self._ids: dict[int, tuple[str, ...]] = {}

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        cfg = self.cfg
        # the data is checked first: a bad manifest fails before any model is loaded
        self.records = load_manifest(cfg.data.manifest, max_frames=cfg.data.max_frames)
        self.val_records = (
            load_manifest(cfg.data.val_manifest, max_frames=cfg.data.max_frames) if cfg.data.val_manifest else []
        )[: cfg.data.val_limit or None]
        want_cuda = (
            cfg.model.device in ("auto", "cuda") and torch.cuda.is_available() or cfg.model.device.startswith("cuda:")
        )
        self.world: World = init_world("cuda" if want_cuda else "cpu")
        device = f"cuda:{self.world.local_rank}" if want_cuda else "cpu"
        opts = EditorOptions(
            dtype=cfg.model.dtype, device=device, allow_t2v=cfg.model.allow_t2v, attention=cfg.model.attention
        )
        src = Path(cfg.model.editor)
        if self.loaded_editor is not None:
            if self.loaded_editor.options.attention in INFERENCE_ONLY_ATTENTION:
                raise InputError(
                    f"the loaded editor runs attention '{self.loaded_editor.options.attention}', which has no "
                    "backward pass (inference only): training would leave the LoRA's q, k, v untrained. Load the "
                    "editor with attention sdpa (or flash4) to train it."
                )
            log.info(
                "training on the loaded editor %s (%s on %s), no second copy",
                self.loaded_editor.name,
                self.loaded_editor.dtype,
                self.loaded_editor.device,
            )
            self.editor = self.loaded_editor
        elif src.is_dir():
            self.editor = load_editor(str(src), text_encoder_folder=cfg.model.text_encoder or None, options=opts)
        else:
            self.editor = load_editor(
                transformer_file=str(src),
                vae_file=cfg.model.vae or None,
                text_encoder_folder=cfg.model.text_encoder or None,
                options=opts,
            )
        self.device = self.editor.device
        # a chunk's rewards scored in a thread while the GPU decodes the next (`_scored_rollouts`); on a CPU both
        # would share the same cores
        self.overlap_rewards = cfg.rollout.overlap_rewards and self.device.type == "cuda"
        if cfg.model.max_text_tokens:
            self.editor.max_text_tokens = cfg.model.max_text_tokens
        dit = self.editor.transformer
        dit.requires_grad_(False)
        self.params = add_lora(dit, cfg.lora, seed=cfg.seed) if cfg.lora.rank > 0 else []
        self.lora_params = list(self.params)  # what rollout.lora_dtype "model" casts for the rollouts
        if self.params and cfg.lora.compute_dtype == "model":
            lora_side_path_in_model_dtype(dit)
        if cfg.model.allow_t2v:
            dit.patch_embedding.requires_grad_(True)
            self.params += list(dit.patch_embedding.parameters())
        self.refiner, self.instructor = None, None
        if cfg.model.instructor:
            self._setup_instructor()
        if checkpointing_wanted(cfg.optim.gradient_checkpointing, dit):
            dit.enable_gradient_checkpointing()  # only under autograd: the rollouts' no-grad forwards are unchanged
        if cfg.model.compile == "blocks":
            compile_dit(dit, "blocks")  # after the LoRA, so its side paths fuse with the blocks' own work
        self.base, self.dit = dit, dit  # base: the module itself; dit: what training calls (DDP wrapper)
        if self.world.active and cfg.optim.parallel == "fsdp":
            fully_shard = compat.fully_shard()
            for block in dit.blocks:  # FSDP2: each block's parameters sharded over the ranks
                fully_shard(block)
            fully_shard(dit)
            self.params = [p for p in dit.parameters() if p.requires_grad] + (
                list(self.refiner.parameters()) if self.refiner is not None and cfg.model.train_refiner else []
            )
        elif self.world.active:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.dit = DDP(dit, device_ids=[self.world.local_rank] if want_cuda else None)
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        self.cache = TensorCache(Path(cfg.data.cache_dir) if cfg.data.cache_dir else self.out / "cache")
        self.vae_id = model_identity(self.editor.vae, "vae")
        self.te_id = model_identity(self.editor.text_encoder, "text_encoder") if self.editor.text_encoder else "none"
        self.rewards, self.reward_weights = [], torch.ones(0)
        if cfg.method != "sft":
            self._setup_rewards()
        elif cfg.sft.uso_weight > 0:
            self._setup_uso()

    def _setup_instructor(self) -> None:
        from ..instructor import Instructor, RefinerConfig, TokenRefiner, load_refiner
        from ..vlm import load_vlm

        cfg = self.cfg
        vlm = load_vlm(cfg.model.instructor, dtype=cfg.model.dtype, device=str(self.device))
        if cfg.model.refiner:
            refiner = load_refiner(cfg.model.refiner, in_dim=vlm.hidden_size)
        else:
            refiner = TokenRefiner(
                RefinerConfig(
                    in_dim=vlm.hidden_size,
                    out_dim=self.editor.text_dim,
                    hidden_dim=cfg.model.refiner_hidden,
                    depth=cfg.model.refiner_depth,
                    heads=cfg.model.refiner_heads,
                )
            )
        self.refiner = refiner.to(self.device).float()
        self.instructor = Instructor(vlm, self.refiner)
        self.refiner.requires_grad_(cfg.model.train_refiner)
        if cfg.model.train_refiner:
            self.params += list(self.refiner.parameters())

    def _load_judge(self):
        """The judge of rewards.judge_vlm, frozen on the training device in the model's dtype."""
        if not self.cfg.rewards.judge_vlm:
            raise InputError("reward 'judge' needs rewards.judge_vlm (a VLM folder).")
        from ..judge import Judge
        from ..vlm import load_vlm

        return Judge(load_vlm(self.cfg.rewards.judge_vlm, dtype=self.cfg.model.dtype, device=str(self.device)))

    def _setup_uso(self) -> None:
        """The judge whose P(Yes) the self-reflection loss raises; the VAE frozen (its gradient passes through)."""
        from ..judge import judge_info

        self.judge = self._load_judge()
        self.judge_frames = int((judge_info(self.cfg.rewards.judge_vlm) or {}).get("frames", 4))
        self.editor.vae.requires_grad_(False)

    def _setup_rewards(self) -> None:
        from .rewards import build_rewards

        judge = self._load_judge() if any(k.startswith("judge") for k in self.cfg.rewards.weights) else None
        self.rewards, self.reward_weights = build_rewards(
            self.cfg.rewards.weights, judge=judge, clip_dir=self.cfg.rewards.clip_dir or None, device=str(self.device)
        )
        self.labels: dict[int, dict] = {}
        if any(getattr(rw, "needs_labels", False) for rw in self.rewards):
            from ..data import BENCHMARK_FIELDS
            from ..eval import manifest_extras

            self.labels = {
                line: {k: extra[k] for k in BENCHMARK_FIELDS if k in extra}
                for line, extra in manifest_extras(self.cfg.data.manifest).items()
            }

    # ------------------------------------------------------------------ data
    def _global_batch(self, step: int) -> list[tuple[int, EditRecord]]:
        """(global index, record) of this step's global batch; order is a seeded permutation per epoch."""
        n, b = len(self.records), self.cfg.optim.batch_size * self.world.size
        out = []
        for j in range(b):
            flat = step * b + j
            epoch, pos = divmod(flat, n)
            out.append((flat, self.records[int(self._epoch_order(epoch)[pos])]))
        return out

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        """The seeded permutation of an epoch, drawn once (a step's batch may span two epochs)."""
        if epoch not in self._orders:
            self._orders = {e: o for e, o in self._orders.items() if e == epoch - 1}
            self._orders[epoch] = torch.randperm(len(self.records), generator=_gen(self.cfg.seed, epoch))
        return self._orders[epoch]

    def _file_ids(self, rec: EditRecord) -> tuple[str, ...]:
        """Content identities of a record's videos, hashed once per run (the cache keys of its tensors)."""
        if rec.index not in self._ids:
            self._ids[rec.index] = tuple(
                file_identity(p) for p in (rec.source_video, rec.target_video, rec.mask_video) if p
            )
        return self._ids[rec.index]

    def _local_batch(self, step: int) -> list[tuple[int, EditRecord]]:
        return self._global_batch(step)[self.world.rank :: self.world.size]

    def _frame_size(self) -> tuple[int, int] | None:
        """data.height x data.width when both are set, else None (each video's own size)."""
        d = self.cfg.data
        return (d.height, d.width) if d.height and d.width else None

    def _latents_key(self, rec: EditRecord) -> tuple:
        """The cache key of a record's latents: its files' content and everything the encode depends on."""
        return (self._file_ids(rec), self.cfg.data.max_frames, self._frame_size(), self.vae_id, "frames-v2")

    def _sample(self, rec: EditRecord) -> EditSample:
        """The record's frames, conformed to the editor (and to data.height/width when set)."""
        return load_sample(
            rec,
            max_frames=self.cfg.data.max_frames,
            size=self._frame_size(),
            temporal_factor=self.editor.temporal_factor,
            spatial_multiple=self.editor.spatial_multiple,
        )

    def _latent_entries(self, samples: list[EditSample]) -> list[dict[str, torch.Tensor]]:
        """The latents cache entries of `samples` (source/target latents, latent edit mask, the frames): their clips
        go through the VAE together, those of one shape in one call (`encode_frames_batch`)."""
        by_shape: dict[tuple, list] = {}
        for i, s in enumerate(samples):
            for name in ("source", "target"):
                frames = getattr(s, name)
                if frames is not None:
                    by_shape.setdefault(tuple(frames.shape), []).append((i, name, frames))
        latents = {}
        for group in by_shape.values():
            z = encode_frames_batch(self.editor, torch.stack([frames for _, _, frames in group])).cpu()
            latents.update({(i, name): z[k : k + 1] for k, (i, name, _) in enumerate(group)})
        entries = []
        for i, s in enumerate(samples):
            out = {"source": latents[(i, "source")], "source_frames": s.source.contiguous()}
            if s.target is not None:
                out["target"] = latents[(i, "target")]
                out["target_frames"] = s.target.contiguous()
            if s.mask is not None:
                out["mask"] = L.latent_mask(s.mask, tuple(out["source"].shape[2:]), self.editor.temporal_factor)
                out["mask_frames"] = s.mask.contiguous()
            entries.append(out)
        return entries

    def _encoded(self, rec: EditRecord, latents: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Latents of source/target, latent edit mask and text tokens, cached on disk by content and model
        (`latents`: the record's latents entry, already at hand)."""
        if latents is None:
            latents = self.cache.get_or_compute(
                "latents", self._latents_key(rec), lambda: self._latent_entries([self._sample(rec)])[0]
            )
        text = self.cache.get_or_compute(
            "text", (rec.instruction, self.te_id), lambda: {"tokens": self.editor.encode_text(rec.instruction).embeds}
        )
        return {**latents, "text": text["tokens"]}

    def _encoded_all(self, records: list[EditRecord]) -> list[dict[str, torch.Tensor]]:
        """`_encoded` of each record, the latents of those not cached yet encoded in batches first: a batch-1 encode of
        a small clip is launch-bound (~90 ms a record on an H100, bench/RESULTS.md), a batch costs about one. A batch
        holds AUTO_PIXELS_PER_DECODE frame pixels (one record's clips at least), so big videos go a record at a time."""
        todo = {}  # record index -> (record, cache key) of the records with no latents entry
        for r in records:
            key = self._latents_key(r)
            if r.index not in todo and not self.cache.path_for("latents", key).is_file():
                todo[r.index] = (r, key)
        fresh: dict[int, dict[str, torch.Tensor]] = {}  # written now: used as computed, not read back
        pending: list[tuple[EditRecord, tuple, EditSample]] = []
        pixels = 0
        for k, (rec, key) in enumerate(todo.values()):
            sample = self._sample(rec)
            pending.append((rec, key, sample))
            pixels += sum(c[..., 0].numel() for c in (sample.source, sample.target) if c is not None)
            if pixels >= AUTO_PIXELS_PER_DECODE or k == len(todo) - 1:
                for (r, key, _), entry in zip(pending, self._latent_entries([s for *_, s in pending]), strict=True):
                    self.cache.put("latents", key, entry)
                    fresh[r.index] = entry
                pending, pixels = [], 0
        return [self._encoded(rec, fresh.get(rec.index)) for rec in records]

    def _condition(self, rec: EditRecord, enc: dict[str, torch.Tensor]) -> torch.Tensor:
        """Text tokens (+ instructor tokens through the refiner, with grad when the refiner trains), padded."""
        cond = Conditioning(enc["text"])
        if self.instructor is not None:
            hidden = self.cache.get_or_compute(
                "vlm_hidden",
                (rec.instruction, self._file_ids(rec)[0], self.cfg.data.max_frames, self.cfg.model.instructor),
                lambda: {"hidden": self.instructor.hidden_states(rec.instruction, enc["source_frames"][0]).cpu()},
            )["hidden"]
            with torch.set_grad_enabled(self.cfg.model.train_refiner and torch.is_grad_enabled()):
                tokens = self.refiner(hidden.to(self.device).float())
            cond = Conditioning(torch.cat([cond.embeds.to(self.device), tokens.to(cond.embeds.dtype)], dim=1))
        return pad_tokens(cond.embeds, self.editor.max_text_tokens).to(self.device, self.editor.dtype)

    def _grad_sync(self, last: bool):
        """DDP all-reduces gradients on the last backward of a step only; FSDP2 reduces every backward."""
        return self.dit.no_sync() if (not last and self.dit is not self.base) else contextlib.nullcontext()

    def _velocity(
        self, model, x: torch.Tensor, source: torch.Tensor, sigma: torch.Tensor | float, text: torch.Tensor
    ) -> torch.Tensor:
        return dit_velocity(model, x, source, sigma, text.to(self.device), self.editor.dtype)

    def _policy_velocity(
        self, model, x: torch.Tensor, source: torch.Tensor, sigma: torch.Tensor | float, text: torch.Tensor
    ) -> torch.Tensor:
        """The velocity rollouts sample with: guided by rollout.cfg against the empty prompt as `pipeline.edit`
        guides (uncond + cfg (cond - uncond), one batched call), so GRPO and RWO train the sampler users run."""
        guidance, b = self.cfg.rollout.cfg, x.shape[0]
        rows = text.expand(b, -1, -1)
        if guidance != 1.0:  # the b conditioned rows, then b negative rows
            if self._negative is None:
                self._negative = unconditional(self.editor).embeds.to(self.device, self.editor.dtype)
            width = max(text.shape[1], self._negative.shape[1])  # as pipeline.edit pads cond and negative
            rows = torch.cat([pad_tokens(rows, width), pad_tokens(self._negative, width).expand(b, -1, -1)])
        source = source.expand(b, -1, -1, -1, -1)
        return guided_velocity(
            model, x, source, sigma, rows.to(self.device), guidance, self.editor.dtype, self.cfg.rollout.uncond_grad
        )

    # ------------------------------------------------------------------ schedule
    def _lr(self, step: int) -> float:
        o = self.cfg.optim
        return scheduled_lr(o.lr, step, o.steps, o.warmup_steps, o.schedule)

    # ------------------------------------------------------------------ SFT
    def _fm_batch(
        self, model, part: list, step: int, draw: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mask-weighted (VIVA) flow-matching losses of a chunk's records (gi, rec, enc) against their target latents,
        one DiT call: each record on its own seeded draw (`draw` > 0: another draw of the same step), so a record's
        loss does not depend on the records batched with it. Returns (per-record losses [B], x_sigma, sigmas [B],
        velocities) for `_uso_loss`."""
        for _, rec, enc in part:
            if enc["target"] is None:
                raise InputError(
                    f"record {rec.index} ({rec.source_video.name}) has no target_video; flow matching (SFT, or GRPO's "
                    "rollout.sft_weight) needs one: add it to the manifest, or set rollout.sft_weight = 0."
                )
        sigmas, noises = [], []
        for gi, _, enc in part:
            g = _gen(self.cfg.seed, step, gi, 1, *([draw] if draw else []))
            sigmas.append(L.sample_sigmas(1, g, shift=self.cfg.sft.shift, mode=self.cfg.sft.sigma_sampling))
            noises.append(torch.randn(enc["target"].shape, generator=g))
        x0 = torch.cat([enc["target"].float() for _, _, enc in part])
        sigma = torch.cat(sigmas)
        x_t, v_target = L.flow_matching_pair(x0, torch.cat(noises), sigma)
        source, text = self._stacked(part, 1)
        v = self._velocity(model, x_t, source, sigma, text)
        masks = [enc.get("mask") for _, _, enc in part]
        mask = None
        if any(m is not None for m in masks):  # a record without a mask weighs every element 1, as mask 0 does
            like = next(m for m in masks if m is not None)
            mask = torch.cat([(m if m is not None else torch.zeros_like(like)).to(self.device) for m in masks])
        per_record = L.masked_fm_loss(v, v_target.to(self.device), mask, self.cfg.sft.mask_weight, reduce=False)
        return per_record, x_t, sigma, v

    def _fm_loss(
        self, model, rec: EditRecord, enc: dict, gi: int, step: int, uso: bool = False, draw: int = 0
    ) -> tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
        """`_fm_batch` of one record; with `uso` (and the draw's sigma <= sft.uso_max_sigma) also the
        self-reflection loss on the same draw and its mean P(Yes) (`_uso_loss`), else None for both."""
        per_record, x_t, sigma, v = self._fm_batch(model, [(gi, rec, enc)], step, draw)
        fm = per_record.mean()
        if not uso or float(sigma) > self.cfg.sft.uso_max_sigma:
            return fm, None, None
        return (fm, *self._uso_loss(rec, enc, x_t, sigma, v))

    def _uso_loss(
        self, rec: EditRecord, enc: dict, x_t: torch.Tensor, sigma: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """ReViSE's self-reflection loss on one draw (reconstructed; docs/small_models.md, section 42): the clean
        video the prediction implies, x_sigma - sigma v (exact on the straight path), decoded with gradients, shown
        to the judge with the source; -mean over sft.uso_questions of log P(Yes). Also the mean P(Yes), detached."""
        x0 = x_t.to(v.device) - sigma.to(v.device).view(-1, 1, 1, 1, 1) * v.float()
        frames = decode_latents_differentiable(self.editor, x0)[0]
        probs = self.judge.differentiable_yes_probabilities(
            enc["source_frames"], frames, rec.instruction, self.cfg.sft.uso_questions, num_frames=self.judge_frames
        )
        p = torch.stack(list(probs.values()))
        return -p.clamp_min(1e-6).log().mean(), p.detach().mean()

    def _sft_step(self, step: int) -> dict:
        batch = self._local_batch(step)
        items = [(gi, rec, enc) for (gi, rec), enc in zip(batch, self._encoded_all([rec for _, rec in batch]))]
        if self.cfg.sft.uso_weight <= 0:  # flow matching only: the records of a chunk share a DiT call
            return {"loss": float(self._fm_backward(items, step, 1.0 / len(batch), sync_last=True).sum()) / len(batch)}
        # ReViSE's self-reflection decodes each draw and shows it to the judge: one record a call
        losses, fms, reflections, p_yes = [], [], [], []  # detached, read once after the loop (one host sync)
        for k, (gi, rec, enc) in enumerate(items):
            sync = self._grad_sync(k == len(batch) - 1)
            with sync:
                fm, reflection, p = self._fm_loss(self.dit, rec, enc, gi, step, uso=True)
                loss = fm if reflection is None else fm + self.cfg.sft.uso_weight * reflection
                (loss / len(batch)).backward()
            losses.append(loss.detach())
            fms.append(fm.detach())
            if reflection is not None:
                reflections.append(reflection.detach())
                p_yes.append(p)
        total = float(torch.stack(losses).sum()) / len(batch)
        # loss_uso: the batch's self-reflection loss (draws above uso_max_sigma add 0); judge_p_yes: over the rest
        out = {
            "loss": total,
            "loss_fm": float(torch.stack(fms).sum()) / len(batch),
            "loss_uso": float(sum(reflections)) / len(batch),
            "uso_draws": len(p_yes),
        }
        return out | ({"judge_p_yes": float(torch.stack(p_yes).mean())} if p_yes else {})

    @torch.no_grad()
    def validation_loss(self) -> Optional[float]:
        """Held-out FM loss with fixed sigmas/noise per record (comparable across steps)."""
        if not self.val_records:
            return None
        model = self.base
        encs = self._encoded_all(self.val_records)
        vals = [float(self._fm_loss(model, r, enc, i, -1)[0]) for i, (r, enc) in enumerate(zip(self.val_records, encs))]
        return sum(vals) / len(vals)

    def validation_reward(self) -> dict[str, float]:
        """GRPO/RWO: the mean reward of the policy's rollouts (G a record) on the validation records, drawn with the
        same noise at every call (seeded by the record, not the step), so two calls differ only by the policy: the
        reward curve to read (the training reward averages other records at every step). Every rank computes all of
        it, as `validation_loss` (FSDP2 forwards are collective). {} for SFT or without validation records."""
        if not self.val_records or self.cfg.method == "sft":
            return {}
        r, _ = self.validation_rollout_rewards()
        means = r.double().mean(0)
        out = {"val_reward": float((means * self.reward_weights.double()).sum())}
        out.update({f"val_reward_{rw.name}": float(means[k]) for k, rw in enumerate(self.rewards)})
        return out

    def validation_rollout_rewards(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The reward terms [N, K] of G rollouts of each validation record with the validation noise, and each
        rollout's record index [N]: what `validation_reward` averages (recipes/small/val_paired.py pairs them)."""
        batch = [(i, r, enc) for i, (r, enc) in enumerate(zip(self.val_records, self._encoded_all(self.val_records)))]
        _, r, groups, _ = self._scored_rollouts(batch, VALIDATION_STEP)
        return r, groups

    def _validation(self) -> dict[str, Optional[float]]:
        """What is logged at the start, every checkpoint and the end of a run with validation records."""
        return {"val_loss": self.validation_loss(), **self.validation_reward()}

    # ------------------------------------------------------------------ rollouts (GRPO / RWO)
    def _sde_steps(self) -> list[int]:
        r = self.cfg.rollout
        return list(range(r.steps)) if not r.window else list(range(r.window_start, r.window_start + r.window))

    def _records_per_call(self, enc: dict, rows: int = 0) -> int:
        """How many records share a DiT call: rollout.micro_batch, or under 0 as many as fit AUTO_TOKENS_PER_CALL
        latent tokens at `rows` rows a record (0: a rollout group, counting CFG's doubled rows) (at least 1)."""
        r = self.cfg.rollout
        if r.micro_batch:
            return r.micro_batch
        rows = rows or r.group_size * (1 if r.cfg == 1.0 else 2)
        return max(1, AUTO_TOKENS_PER_CALL // (self._tokens_per_sample(enc) * rows))

    def _fsdp_agreed(self, per: int) -> int:
        """A per-call size every rank uses: under FSDP the forwards are collective, so all ranks take the smallest."""
        if self.world.active and self.cfg.optim.parallel == "fsdp":
            dev = self.device if self.device.type == "cuda" else torch.device("cpu")
            per = int(all_gather_cat(self.world, torch.tensor([per], device=dev)).min())
        return per

    def _tokens_per_sample(self, enc: dict) -> int:
        """The DiT's tokens for one sample of the record's latent shape (its patch size; Wan's 1x2x2 if unknown)."""
        patch = tuple(getattr(getattr(self.base, "config", None), "patch_size", None) or (1, 2, 2))
        tokens = 1
        for n, p in zip(tuple(enc["source"].shape[2:]), patch):
            tokens *= max(1, n // p)
        return tokens

    def _record_chunks(self, batch: list, rows: int = 0) -> list[list[int]]:
        """The local records (gi, rec, enc) in DiT-call chunks of `_records_per_call` (`rows` a record; 0: a rollout
        group; flow matching on the records themselves: 1). Records share a call only
        when all share the latent shape and the text width (zero padding would change the DiT's cross-attention);
        otherwise each goes alone. Under FSDP (collective forwards) every rank must make the same calls, so the
        ranks agree on the chunk size first."""
        if not batch:
            return []
        with torch.no_grad():
            keys = {(tuple(enc["source"].shape), self._condition(rec, enc).shape[1]) for _, rec, enc in batch}
        per = self._fsdp_agreed(self._records_per_call(batch[0][2], rows) if len(keys) == 1 else 1)
        return [list(range(i, min(i + per, len(batch)))) for i in range(0, len(batch), per)]

    def _stacked(self, part: list, g: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Source latents and conditioning of a chunk's records, each repeated for its g samples: [B*g, ...] (one
        record: [1, ...], broadcast in the DiT call as the per-record path always did)."""
        texts = [self._condition(rec, enc) for _, rec, enc in part]
        if len(part) == 1:
            return part[0][2]["source"], texts[0]
        source = torch.cat([enc["source"] for _, _, enc in part]).to(self.device)
        return source.repeat_interleave(g, dim=0), torch.cat(texts).repeat_interleave(g, dim=0)

    def _rollout_groups(self, batch: list, step: int) -> list[tuple[torch.Tensor, list[Transition]]]:
        """G Flow-SDE samples of the current policy per local record (gi, rec, enc): (latents [G, ...], transitions).
        The groups of a `_record_chunks` chunk share each DiT call; every sample draws its noise from its own
        generator (seed, step, gi, member), so it is the same sample however the records are batched."""
        with torch.no_grad(), self._rollout_lora():  # one merge (or cast) of the LoRA for all the chunks
            return [group for chunk in self._record_chunks(batch) for group in self._rollout_chunk(batch, chunk, step)]

    def _rollout_chunk(self, batch: list, chunk: list[int], step: int) -> list[tuple[torch.Tensor, list[Transition]]]:
        """`_rollout_groups` of the records `chunk` of `batch`, their G samples each sharing every DiT call."""
        r = self.cfg.rollout
        g, model, out, dev = r.group_size, self.base, [], self.device
        part = [batch[i] for i in chunk]
        gens = [_gen(self.cfg.seed, step, gi, m, 2, device=dev) for gi, _, _ in part for m in range(g)]
        shape = part[0][2]["source"].shape[1:]
        start = (
            torch.stack(
                [
                    torch.randn(tuple(shape), generator=_gen(self.cfg.seed, step, gi, 3, device=dev), device=dev)
                    for gi, _, _ in part
                ]
            ).repeat_interleave(g, dim=0)
            if r.shared_start
            else None
        )
        source, text = self._stacked(part, g)
        latents, transitions = sde_rollout(
            lambda x, s, src=source, txt=text: self._policy_velocity(model, x, src, s, txt),
            shape,
            shifted_sigmas(r.steps, r.shift),
            self._sde_steps(),
            r.noise_level,
            gens,
            dev,
            start=start,
            noise_block=tuple(r.noise_block),
        )
        for j in range(len(part)):
            rows = slice(j * g, (j + 1) * g)
            out.append(
                (
                    latents[rows],
                    [Transition(t.step, t.x[rows], t.x_next[rows], t.log_prob[rows]) for t in transitions],
                )
            )
        return out

    def _rollout_lora(self) -> contextlib.AbstractContextManager:
        """rollout.lora_dtype "model" (or "auto"): the LoRA in the DiT's dtype for the rollouts (its fp32 masters
        train); "merged": the LoRA merged into the DiT's weights for them."""
        if self.cfg.rollout.lora_dtype == "merged":
            return lora_merged(self.base)
        if self.cfg.rollout.lora_in_model_dtype(self.cfg.optim.parallel) and self.editor.dtype != torch.float32:
            return lora_cast(self.lora_params, self.editor.dtype)
        return contextlib.nullcontext()

    def _decode_batch(self, clip_shape: torch.Size) -> int:
        """Clips per VAE decode: rollout.decode_batch, or under 0 as many as fit AUTO_PIXELS_PER_DECODE frame
        pixels (at least 1)."""
        if self.cfg.rollout.decode_batch:
            return self.cfg.rollout.decode_batch
        t, h, w = clip_shape[-3:]
        pixels = ((t - 1) * self.editor.temporal_factor + 1) * h * w * self.editor.spatial_factor**2
        return max(1, AUTO_PIXELS_PER_DECODE // pixels)

    def _decoded(self, latents: torch.Tensor) -> torch.Tensor:
        """Rollout latents [N, ...] -> frames [N, T, H, W, C] (CPU), `_decode_batch` clips per VAE call."""
        per = self._decode_batch(latents.shape)
        return torch.cat(
            [decode_latents_batch(self.editor, latents[i : i + per]) for i in range(0, latents.shape[0], per)]
        )

    def _scored_rollouts(self, batch: list, step: int) -> tuple[list, torch.Tensor, torch.Tensor, float]:
        """G rollouts of each (gi, rec, enc) of `batch` (noise seeded by step, gi and member), decoded and scored.
        Returns (items, rewards [N, K], group ids [N], seconds the phase waited on the rewards). With
        `overlap_rewards` (on a GPU) a chunk's rewards are scored in a host thread while the next chunk decodes,
        one chunk at a time, in order: the same rewards, one chunk's frames more held."""
        from concurrent.futures import Future, ThreadPoolExecutor

        from .rewards import RewardInput, score_records

        rolled = self._rollout_groups(batch, step)
        waited = 0.0  # wall time spent waiting on the rewards; the rest of the phase is sampling and decoding
        g = self.cfg.rollout.group_size
        # records are decoded a chunk at a time (whole groups, >= one group) and scored per record, so at most
        # max(G, decode batch) clips of frames are held at once (twice that while a chunk is scored beside a decode)
        per_chunk = max(1, self._decode_batch(rolled[0][0].shape) // g) if rolled else 1
        items, rewards, groups = [], [], []
        pending: Optional[Future] = None
        overlap = None
        if self.overlap_rewards:
            on_cuda, index = self.device.type == "cuda", self.device.index
            if on_cuda and index is None:
                index = torch.cuda.current_device()
            overlap = ThreadPoolExecutor(  # on this thread's CUDA device (a new thread's would be cuda:0)
                1, "viva-rewards", initializer=torch.cuda.set_device if on_cuda else None, initargs=(index,)
            )
        with overlap or contextlib.nullcontext():
            for c in range(0, len(batch), per_chunk):
                frames_all = self._decoded(torch.cat([lat for lat, _ in rolled[c : c + per_chunk]]))
                inputs = []  # the chunk's records, scored together (in threads where the rewards allow)
                for j, ((gi, rec, enc), (latents, transitions)) in enumerate(
                    zip(batch[c : c + per_chunk], rolled[c : c + per_chunk])
                ):
                    n, mask = latents.shape[0], enc.get("mask_frames")
                    frames = frames_all[j * g : j * g + n]
                    batch_in = RewardInput(
                        source=enc["source_frames"].expand(n, -1, -1, -1, -1),
                        edited=frames,
                        instructions=[rec.instruction] * n,
                        masks=mask.expand(n, -1, -1, -1) if mask is not None else None,
                        source_captions=[rec.source_caption] * n,
                        target_captions=[rec.target_caption] * n,
                        latents=latents,
                        targets=enc["target_frames"].expand(n, -1, -1, -1, -1) if "target_frames" in enc else None,
                        labels=[self.labels.get(rec.line, {})] * n,
                    )
                    inputs.append(batch_in)
                    groups.append(torch.full((n,), gi))
                    items += [(gi, rec, enc, m, latents[m : m + 1], transitions) for m in range(n)]
                t = time.perf_counter()
                if pending is not None:  # the previous chunk's, scored while this one decoded
                    rewards += pending.result()
                if overlap is None:
                    rewards += score_records(self.rewards, inputs)
                else:
                    pending = overlap.submit(score_records, self.rewards, inputs)
                waited += time.perf_counter() - t
            t = time.perf_counter()
            rewards += pending.result() if pending is not None else []
            waited += time.perf_counter() - t
        return items, torch.cat(rewards).float(), torch.cat(groups), waited

    def _rollouts_and_advantages(self, step: int) -> tuple[list, torch.Tensor, dict, torch.Tensor, torch.Tensor]:
        """G rollouts per local record, rewards on decoded frames, advantages over the gathered global batch.
        Returns (local items, local advantages, stats, global rewards [N, K], global group ids [N])."""
        encode_start = time.perf_counter()
        local = self._local_batch(step)
        batch = [(gi, rec, enc) for (gi, rec), enc in zip(local, self._encoded_all([rec for _, rec in local]))]
        start_time = time.perf_counter()
        encode_seconds = start_time - encode_start  # the cache's reads, and the VAE and text encodes of misses
        items, local_r, local_g, reward_seconds = self._scored_rollouts(batch, step)
        dev = self.device if self.world.active and self.device.type == "cuda" else torch.device("cpu")
        all_r = all_gather_cat(self.world, local_r.to(dev)).cpu()
        all_g = all_gather_cat(self.world, local_g.to(dev)).cpu()
        adv, zero_frac = L.group_advantages(all_r, all_g, self.reward_weights)
        start = self.world.rank * local_r.shape[0]
        weighted = (all_r * self.reward_weights).sum(-1)
        stats = {
            "reward": float(weighted.mean()),
            "reward_std": float(weighted.std()) if len(weighted) > 1 else 0.0,
            "zero_var_groups": zero_frac,
            "seconds_rollouts": time.perf_counter() - start_time - reward_seconds,
            "seconds_rewards": reward_seconds,
            "seconds_encode": encode_seconds,
        }
        for k, rw in enumerate(self.rewards):
            stats[f"reward_{rw.name}"] = float(all_r[:, k].mean())
        return items, adv[start : start + local_r.shape[0]], stats, all_r, all_g

    def _grpo_step(self, step: int) -> dict:
        """PPO-clip on the rollouts' SDE transitions, `rollout.inner_updates` passes over one rollout batch (flow_grpo's
        inner epochs). The first pass is on-policy (ratio 1: the clip and the KL cannot act); each later pass starts
        after an optimizer step, so it sees how far the policy moved. The last pass's gradient is left for the
        training loop's step."""
        r = self.cfg.rollout
        items, adv, stats, _, _ = self._rollouts_and_advantages(step)
        g = r.group_size
        groups = [(items[i], adv[i : i + g]) for i in range(0, len(items), g)]
        agg: dict = {}
        for update in range(r.inner_updates):
            if update:
                agg["grad_norm_inner"] = self._apply_update(step)
                self.optimizer.zero_grad(set_to_none=True)
            if r.sft_weight > 0:
                agg["loss_sft"] = self._sft_anchor([first[:3] for first, _ in groups], step, update)
            agg.update(self._ppo_pass(groups))
        return {**stats, **agg}

    def _sft_anchor(self, records: list, step: int, update: int) -> float:
        """GRPO's anchor to the data: the gradient of rollout.sft_weight x the mean flow-matching loss of the step's
        (global index, record, encodings) against their targets (one draw per record and pass), added before the
        pass's PPO gradient (whose last backward all-reduces both under DDP). Returns the mean loss."""
        scale = self.cfg.rollout.sft_weight / len(records)
        return float(self._fm_backward(records, step, scale, draw=update).mean())

    def _fm_backward(
        self, items: list, step: int, scale: float, draw: int = 0, sync_last: bool = False
    ) -> torch.Tensor:
        """Backward of `scale` x the summed flow-matching losses of (gi, rec, enc) `items`, the records of a
        `_record_chunks` chunk in one DiT call; the last call all-reduces under DDP only with `sync_last`.
        Returns the per-record losses, detached (one host transfer for the caller)."""
        losses, chunks = [], self._record_chunks(items, rows=1)
        for k, chunk in enumerate(chunks):
            with self._grad_sync(sync_last and k == len(chunks) - 1):
                per_record = self._fm_batch(self.dit, [items[i] for i in chunk], step, draw)[0]
                (per_record.sum() * scale).backward()
            losses.append(per_record.detach())
        return torch.cat(losses)

    def _ppo_pass(self, groups: list) -> dict:
        """One backward pass of the PPO-clip (+ KL) loss over every transition of the rollout batch. The G samples
        of the records of a `_record_chunks` chunk go through the DiT as one batch per SDE step, so a pass costs
        chunks x window calls, not records x G x window. The loss is the mean over every (sample, transition)
        term whatever the chunking: each call's mean weighs by its share of the terms. Statistics stay on the
        device until one transfer at the end (no host sync per call)."""
        r = self.cfg.rollout
        n_terms = sum(a.shape[0] * len(first[-1]) for first, a in groups)  # per-sample transitions: loss is their mean
        sigmas, block = shifted_sigmas(r.steps, r.shift), tuple(r.noise_block)
        recs = [(first[0], first[1], first[2]) for first, _ in groups]
        chunks = self._record_chunks(recs)
        n_calls = sum(len(groups[c[0]][0][-1]) for c in chunks)
        sums = {"loss": [], "loss_policy": [], "loss_kl": []}
        log_ratios: list[torch.Tensor] = []
        k = 0
        for chunk in chunks:
            part = [groups[i] for i in chunk]
            a = torch.cat([adv for _, adv in part]).to(self.device)
            share = a.shape[0] / n_terms  # this call's samples' share of the mean
            for t, tr0 in enumerate(part[0][0][-1]):
                k += 1
                trs = [first[-1][t] for first, _ in part]
                x = torch.cat([tr.x for tr in trs]).to(self.device)
                x_next = torch.cat([tr.x_next for tr in trs]).to(self.device)
                logp_old = torch.cat([tr.log_prob for tr in trs]).to(self.device)
                s, s_next = float(sigmas[tr0.step]), float(sigmas[tr0.step + 1])
                with self._grad_sync(k == n_calls):
                    source, text = self._stacked([recs[i] for i in chunk], a.shape[0] // len(chunk))
                    v = self._policy_velocity(self.dit, x, source, s, text)
                    st = sde_step_with_logprob(
                        x, v, s, s_next, r.noise_level, float(sigmas[1]), prev_sample=x_next, noise_block=block
                    )
                    pl, _ = L.clipped_policy_loss(st.log_prob, logp_old, a, r.clip_range, stats=False)
                    loss = pl
                    if r.kl_beta > 0:
                        with torch.no_grad(), adapter_disabled(self.base):
                            v_ref = self._policy_velocity(self.base, x, source, s, text)
                        ref = sde_step_with_logprob(
                            x, v_ref, s, s_next, r.noise_level, float(sigmas[1]), prev_sample=x_next, noise_block=block
                        )
                        kl = L.kl_to_reference(st.mean, ref.mean, st.std, block).mean()
                        loss = loss + r.kl_beta * kl
                        sums["loss_kl"].append(kl.detach().double() * share)
                    (loss * share).backward()
                sums["loss"].append(loss.detach().double() * share)
                sums["loss_policy"].append(pl.detach().double() * share)
                log_ratios.append(st.log_prob.detach().float() - logp_old.float())
        log_ratio = torch.cat(log_ratios) if log_ratios else torch.zeros(0, device=self.device)
        ratio = torch.exp(log_ratio)
        stats = torch.stack(
            [
                torch.stack(v).sum() if v else torch.zeros((), dtype=torch.float64, device=self.device)
                for v in sums.values()
            ]
            + [
                ratio.double().mean(),
                ratio.double().std() if ratio.numel() > 1 else ratio.new_zeros((), dtype=torch.float64),
                ((ratio - 1.0).abs() > r.clip_range).double().mean(),
                (0.5 * log_ratio**2).double().mean(),
            ]
        ).tolist()  # the one host transfer
        names = [*sums, "ratio_mean", "ratio_std", "clip_frac", "approx_kl"]
        return dict(zip(names, stats))

    def _rwo_step(self, step: int) -> dict:
        """Reward-weighted flow matching on the rollouts' results, `rollout.inner_updates` passes over one rollout
        batch (fresh flow-matching draws each pass; the last pass's gradient is left for the training loop's step).
        The velocity regressed is the one the rollouts sampled with (guided by rollout.cfg): regressing the
        conditional velocity onto guided samples compounds the guidance every round, which collapsed RWO at CFG 5
        (README)."""
        r = self.cfg.rollout
        items, _, stats, all_r, all_g = self._rollouts_and_advantages(step)
        weights = L.rwo_weights(
            (all_r * self.reward_weights).sum(-1), all_g, temperature=r.rwo_temperature, mode=r.rwo_mode
        )
        start = self.world.rank * len(items)
        local_w = weights[start : start + len(items)]
        agg: dict = {}
        for update in range(r.inner_updates):
            if update:
                agg["grad_norm_inner"] = self._apply_update(step)
                self.optimizer.zero_grad(set_to_none=True)
            agg.update(self._rwo_pass(items, local_w, step, update))
        return {**stats, **agg}

    def _rwo_pass(self, items: list, weights: torch.Tensor, step: int, update: int) -> dict:
        """One backward pass: per group, its G samples x `rollout.rwo_draws` (sigma, noise) draws that all G samples
        share, so two samples' terms differ only by their results; the groups of a `_record_chunks` chunk share each
        DiT call (one call per group took 14 of rwo_v8's 17-19 s steps on an H100: docs/small_models.md, section
        69). The loss is mean_i w_i mean_r FM(x0_i; sigma_r, noise_r) over the local samples, plus, with
        rollout.kl_beta > 0, kl_beta mean ||v - v_base||^2 at the same inputs (v_base: the LoRA off, the SFT base):
        the anchor that signed weights need (unbounded otherwise: the pushed-away samples' loss can grow without
        end)."""
        r = self.cfg.rollout
        g, draws = r.group_size, r.rwo_draws
        starts = list(range(0, len(items), g))
        records = [items[i0][:3] for i0 in starts]
        guided = 1 if r.cfg == 1.0 else 2
        chunks = self._record_chunks(records, rows=g * draws * guided)
        # a group bigger than one call's rows (a 480p Wan record) is split into calls of `per` rows, as before
        tokens = self._tokens_per_sample(records[0][2]) if records else 1
        per = self._fsdp_agreed(r.micro_batch * g * draws or max(1, AUTO_TOKENS_PER_CALL // (tokens * guided)))

        def slices(chunk: list[int]) -> list[slice]:
            return [slice(c, c + per) for c in range(0, g * draws, per)] if len(chunk) == 1 else [slice(None)]

        n_calls, k = sum(len(slices(chunk)) for chunk in chunks), 0
        sums = {"loss": [], "loss_fm": [], "loss_kl": []}
        for chunk in chunks:
            built = self._rwo_rows(items, records, starts, chunk, weights, step, update)
            source, text = built["source"], built["text"]  # a chunk of one: [1, ...], broadcast
            mask = self._stacked_masks(built["masks"]) if self.cfg.sft.mask_weight != 0.0 else None
            for rows in slices(chunk):
                k += 1
                x_t, v_target, sigma, w = (built[key][rows] for key in ("x_t", "v_target", "sigma", "w"))
                share = x_t.shape[0] / (draws * len(items))  # this call's rows' share of the mean
                with self._grad_sync(k == n_calls):
                    v = self._policy_velocity(self.dit, x_t, source, sigma, text)
                    fm = L.reward_weighted_fm_loss(v, v_target, w, mask, self.cfg.sft.mask_weight)
                    loss = fm
                    if r.kl_beta > 0:
                        with torch.no_grad(), adapter_disabled(self.base):
                            v_ref = self._policy_velocity(self.base, x_t, source, sigma, text)
                        kl = ((v - v_ref) ** 2).mean()
                        loss = loss + r.kl_beta * kl
                        sums["loss_kl"].append(kl.detach().double() * share)
                    (loss * share).backward()
                sums["loss"].append(loss.detach().double() * share)
                sums["loss_fm"].append(fm.detach().double() * share)
        names = [key for key, v in sums.items() if v]
        if not names:
            return {}
        values = torch.stack([torch.stack(sums[key]).sum() for key in names]).tolist()  # the one host transfer
        return dict(zip(names, values))

    def _rwo_rows(
        self,
        items: list,
        records: list,
        starts: list[int],
        chunk: list[int],
        weights: torch.Tensor,
        step: int,
        update: int,
    ) -> dict:
        """The flow-matching rows of a chunk's groups: per group its G samples x `rollout.rwo_draws` draws from the
        group's own generator (the same rows however the groups are batched), draw-major; with the chunk's stacked
        source latents and conditioning, and its (mask, rows) pairs."""
        r = self.cfg.rollout
        g, draws = r.group_size, r.rwo_draws
        out: dict = {"x_t": [], "v_target": [], "sigma": [], "w": [], "masks": []}
        for c in chunk:
            i0 = starts[c]
            gi, _, enc = records[c]
            x0 = torch.cat([item[4] for item in items[i0 : i0 + g]]).to(self.device, torch.float32)  # [G, C, T, H, W]
            gen = _gen(self.cfg.seed, step, gi, 4, *([update] if update else []))
            sigma = L.sample_sigmas(draws, gen, shift=self.cfg.sft.shift, mode=self.cfg.sft.sigma_sampling)
            noise = torch.randn((draws, *x0.shape[1:]), generator=gen).to(self.device)
            n = x0.shape[0]  # rows draw-major: draw r of every sample, then draw r + 1
            sigma = sigma.to(self.device).repeat_interleave(n)
            x_t, v_target = L.flow_matching_pair(x0.repeat(draws, 1, 1, 1, 1), noise.repeat_interleave(n, 0), sigma)
            for key, v in (("x_t", x_t), ("v_target", v_target), ("sigma", sigma)):
                out[key].append(v)
            out["w"].append(weights[i0 : i0 + n].repeat(draws))
            out["masks"].append((enc.get("mask"), n * draws))
        source, text = self._stacked([records[c] for c in chunk], g * draws)
        rows = {key: torch.cat(out[key]) for key in ("x_t", "v_target", "sigma", "w")}
        return {**rows, "masks": out["masks"], "source": source, "text": text}

    def _stacked_masks(self, masks: list[tuple[Optional[torch.Tensor], int]]) -> Optional[torch.Tensor]:
        """The chunk's edit masks (mask or None, rows) as one [rows, ...] tensor; a record without a mask weighs every
        element alike, as an all-zero mask does (1 + w * 0). None when no record has one."""
        shape = next((m.shape for m, _ in masks if m is not None), None)
        if shape is None:
            return None
        full = [(m if m is not None else torch.zeros(shape)).to(self.device, torch.float32) for m, _ in masks]
        if len(full) == 1:
            return full[0]
        return torch.cat([m.expand(rows, *m.shape[1:]) for m, (_, rows) in zip(full, masks)])

    # ------------------------------------------------------------------ loop
    def _rng_state(self) -> dict[str, torch.Tensor]:
        state = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state()
        return state

    def _metadata(self, step: int) -> dict:
        c = self.cfg
        return {
            "base_model": Path(c.model.editor).name,
            "method": c.method,
            "rank": c.lora.rank,
            "alpha": c.lora.alpha,
            "targets": c.lora.targets,
            "steps": step,
            "lr": c.optim.lr,
            "rewards": c.rewards.weights if c.method != "sft" else None,
            "mask_weight": c.sft.mask_weight if c.method == "sft" else None,
            # the guidance the policy learned under: sampled at another CFG an Edit-GRPO LoRA can overshoot
            # (lora.guidance_notes; docs/small_models.md, section 61)
            "rollout_cfg": c.rollout.cfg if c.method in ("grpo", "rwo") else None,
            # anchored, it moves less and gains at the base's CFG (lora.sampling_cfg; docs/small_models.md, section 63)
            "kl_beta": c.rollout.kl_beta if c.method in ("grpo", "rwo") else None,
            "clip_range": c.rollout.clip_range if c.method == "grpo" else None,
            "inner_updates": c.rollout.inner_updates if c.method in ("grpo", "rwo") else None,
            "trainer": "viva_core",
        }

    def _save(self, step: int, metrics: MetricsLog) -> None:
        # gathering is collective under FSDP2: every rank takes part, rank 0 writes
        layers, trainable = export_lora(self.base), trainable_state(self.base, self.refiner)
        optimizer = full_optimizer_state(self.optimizer)
        if not self.world.is_main:
            return
        lora = (
            save_lora(self.out / "lora_latest.safetensors", layers, metadata=self._metadata(step)) if layers else None
        )
        png = (
            metrics.plot(self.out / "curves.png", title=f"{self.cfg.method} · step {step}")
            if self.cfg.log.plot
            else None
        )
        extra = {name: f for name, f in (("lora.safetensors", lora), ("curves.png", png)) if f}
        save_checkpoint(
            self.out / "checkpoints",
            step,
            trainable=trainable,
            rng=self._rng_state(),
            optimizer=optimizer,
            state={"config": self.cfg.to_dict()},
            extra_files=extra,
            keep=self.cfg.log.keep_checkpoints,
        )

    def _resume(self, resume: bool | str, metrics: MetricsLog) -> int:
        if not resume:
            return 0
        path = Path(resume) if isinstance(resume, str) else latest_checkpoint(self.out / "checkpoints")
        if path is None:
            log.warning("no checkpoint in %s; starting from step 0", self.out / "checkpoints")
            return 0
        ck = load_checkpoint(path)
        base = self.base
        load_trainable_state(base, self.refiner, ck.trainable)
        load_optimizer_state(self.optimizer, ck.optimizer)
        torch.set_rng_state(ck.rng["torch"])
        if "cuda" in ck.rng and torch.cuda.is_available():  # a checkpoint from a CPU run has none
            torch.cuda.set_rng_state(ck.rng["cuda"])
        if self.world.is_main:
            metrics.truncate_after(ck.step)
        log.info("resumed from %s (step %d)", path, ck.step)
        return ck.step

    def _stop(self) -> bool:
        """A stop request (Ctrl-C, a host's interrupt) or optim.max_minutes of training passed, on any rank."""
        limit = self.cfg.optim.max_minutes
        over_time = bool(limit) and time.perf_counter() - self._started > 60 * limit
        requested, over_time = any_ranks(
            self.world, [self.stop_requested or self.should_stop(), over_time], self.device
        )  # every rank agrees on the reason as well, so each tells the job the same (cli: exit 0 or 130)
        self.timed_out = over_time and not requested
        if self.timed_out:
            log.warning("optim.max_minutes = %g reached: saving a checkpoint and stopping", limit)
        return requested or over_time

    def run(self, resume: bool | str = False) -> TrainResult:
        """Train for optim.steps; saves checkpoints, the final LoRA (and refiner). A stop request (Ctrl-C, ComfyUI
        interrupt) saves a checkpoint of the last finished step and returns with interrupted=True."""
        self._setup()
        cfg, out = self.cfg, self.out
        if self.world.is_main:
            out.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(out / "checkpoints")
        metrics = MetricsLog(
            out, tensorboard=cfg.log.tensorboard and self.world.is_main, resume=bool(resume) or not self.world.is_main
        )  # only rank 0 writes the log
        start = self._resume(resume, metrics)
        if start == 0 and self.val_records:
            val = self._validation()  # every rank runs it: FSDP2 forwards are collective
            if self.world.is_main:
                metrics.log(0, val)  # the curves start at the base model's loss and reward
        step_fn = {"sft": self._sft_step, "grpo": self._grpo_step, "rwo": self._rwo_step}[cfg.method]
        self._started = time.perf_counter()  # optim.max_minutes counts from here: setup and loading excluded
        interrupted, last = False, {}
        step = start
        try:
            for step in range(start, cfg.optim.steps):
                if self._stop():
                    interrupted = True
                    break
                t0 = time.perf_counter()
                if torch.cuda.is_available():
                    torch.cuda.reset_peak_memory_stats()
                lr = self._lr(step)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                self.optimizer.zero_grad(set_to_none=True)
                stats = step_fn(step)
                grad_norm = self._apply_update(step)
                dt = time.perf_counter() - t0
                n = cfg.optim.batch_size * self.world.size * (1 if cfg.method == "sft" else cfg.rollout.group_size)
                last = {
                    **stats,
                    "grad_norm": grad_norm,
                    "lr": lr,
                    "step_time": dt,
                    "samples_per_s": n / dt,
                    "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
                }
                done = step + 1
                if cfg.log.checkpoint_every and done % cfg.log.checkpoint_every == 0 and self.val_records:
                    if done < cfg.optim.steps:  # the last step's is the run's end validation, below
                        last.update(self._validation())
                if self.world.is_main and (done % cfg.log.every == 0 or done == cfg.optim.steps):
                    metrics.log(done, last)
                    self.on_log(done, last)
                if cfg.log.checkpoint_every and done % cfg.log.checkpoint_every == 0 and done < cfg.optim.steps:
                    self._save(done, metrics)
                self.progress(done, cfg.optim.steps, None)
            else:
                step = max(cfg.optim.steps, start)  # resuming past `steps` trains nothing more
        except KeyboardInterrupt:
            interrupted = True
        finished = step
        if self.val_records and not interrupted:
            val = self._validation()
            if self.world.is_main:
                metrics.log(finished, val)
        self._check_ranks_agree()
        self._save(finished, metrics)
        lora_path, refiner_path = self._write_outputs(finished, interrupted)
        metrics.close()
        shutdown(self.world)
        return TrainResult(lora_path, refiner_path, finished, interrupted, last, interrupted and self.timed_out)

    def _apply_update(self, step: int) -> float:
        """Clip the accumulated gradient, refuse a non-finite one, take one optimizer step; the gradient norm."""
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.optim.grad_clip)
        if not torch.isfinite(grad_norm):
            raise NonFiniteError(
                f"step {step + 1}: gradient norm is {float(grad_norm)}; nothing was applied. "
                "Lower optim.lr or check the data; the last checkpoint is intact."
            )
        self.optimizer.step()
        return float(grad_norm)

    def _check_ranks_agree(self) -> None:
        """DDP keeps replicas identical; verify it (a silent divergence would make the saved LoRA rank 0's alone)."""
        if not self.world.active:
            return
        sums = torch.stack([full_tensor(p.detach()).double().sum() for p in self.params]).to(self.device)
        gathered = all_gather_cat(self.world, sums.unsqueeze(0))
        if not torch.allclose(gathered, gathered[:1].expand_as(gathered), rtol=1e-6, atol=1e-9):
            raise RuntimeError(f"trained weights differ between ranks ({gathered.sum(1).tolist()}); this is a bug.")

    def _write_outputs(self, step: int, interrupted: bool) -> tuple[Optional[Path], Optional[Path]]:
        name = self.cfg.output_name + ("_interrupted" if interrupted else "")
        lora_path = self.out / f"{name}.safetensors"
        refiner_path = None
        layers = export_lora(self.base)  # collective under FSDP2
        if self.world.is_main:
            if layers:
                save_lora(lora_path, layers, metadata=self._metadata(step))
            if self.refiner is not None and self.cfg.model.train_refiner:
                from ..instructor import save_refiner

                refiner_path = save_refiner(
                    self.out / f"{name}_refiner.safetensors",
                    self.refiner,
                    metadata={
                        "instructor": Path(self.cfg.model.instructor).name,
                        "editor": Path(self.cfg.model.editor).name,
                        "steps": step,
                    },
                )
        return (lora_path if layers else None), refiner_path


def install_sigint_handler(trainer: Trainer) -> None:
    """First Ctrl-C: finish the current step, save a checkpoint, exit cleanly. Second: stop at once."""

    def handler(signum, frame):
        if trainer.stop_requested:
            raise KeyboardInterrupt
        trainer.stop_requested = True
        log.warning("stop requested: saving a checkpoint after this step (Ctrl-C again to abort)")

    signal.signal(signal.SIGINT, handler)
