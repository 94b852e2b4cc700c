"""The edit, top to bottom: check inputs -> conform frames -> encode source -> sample -> decode -> un-conform (back to
the source's size) -> check output.

`edit` is what the CLI, the ComfyUI Edit node and best-of-N all call; nothing else runs the DiT for inference.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence

import torch

from .editor import Conditioning, Editor
from .errors import InputError, NonFiniteError
from .lora import LoraKeyReport, guidance_notes
from .runtime import ProgressFn, no_progress
from .sampling import NUM_TRAIN_TIMESTEPS, Trunk, branch_starts, sample, shared_trunk
from .settings import EditSettings
from .step_cache import StepCacheCount, step_cached
from .video import Audio, ConformReport, conform_frames, format_size, trim_audio, unconform_frames


@dataclass
class EditResult:
    frames: torch.Tensor  # [T,H,W,C] float32 0..1 on CPU, at the source's size
    fps: float
    audio: Optional[Audio]
    conform: ConformReport
    lora_reports: list[LoraKeyReport] = field(default_factory=list)
    seed: int = 0
    seconds: float = 0.0
    step_cache: Optional[StepCacheCount] = None  # with a step cache: how many DiT calls of its sampling run computed
    # lora.guidance_notes: a LoRA of the stack learned under another CFG than this edit's; in the report, so a ComfyUI
    # user sees it on the node
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        size = format_size(self.frames.shape[1], self.frames.shape[2])
        lines = [f"seed {self.seed}, {self.frames.shape[0]} frames {size} @ {self.fps:g} fps in {self.seconds:.1f} s"]
        if self.conform.changed:
            lines.append(self.conform.message())
        lines += self.notes  # before the LoRA key reports: what to change comes first
        lines += [r.summary() for r in self.lora_reports]
        if self.step_cache is not None:
            lines.append(self.step_cache.summary())
        return "\n".join(line for line in lines if line)


def pad_tokens(embeds: torch.Tensor, length: int) -> torch.Tensor:
    """Zero-pad [B, L, D] tokens to `length` (Wan was trained on zero-padded 512-token text); longer inputs are kept."""
    if embeds.shape[1] >= length:
        return embeds
    return torch.cat([embeds, embeds.new_zeros(embeds.shape[0], length - embeds.shape[1], embeds.shape[2])], dim=1)


def unconditional(editor: Editor) -> Conditioning:
    """CFG's negative when none is given: the empty prompt (what cond dropout trains), zeros without a text encoder.
    A released text encoder is an error, not zeros: the negative had to be encoded before the release."""
    if editor.text_encoder_released:
        raise InputError(
            f"{editor.name}: CFG needs the negative prompt's tokens, but the text encoder was released "
            "(Editor.release_text_encoder). Encode it first and pass it: negative=negative_conditioning(editor, "
            "'') from viva_core.conditioning before the release, then edit(..., negative=negative); or use cfg 1."
        )
    if editor.text_encoder is not None:
        return editor.encode_text("")
    return Conditioning(torch.zeros(1, 1, editor.text_dim), "empty")


def normalize_latents(vae: torch.nn.Module, z: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    mean = torch.tensor(vae.config.latents_mean, dtype=z.dtype, device=z.device).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std, dtype=z.dtype, device=z.device).view(1, -1, 1, 1, 1)
    return z * std + mean if inverse else (z - mean) / std


def dit_velocity(
    dit: torch.nn.Module,
    x: torch.Tensor,
    source: torch.Tensor,
    sigma: torch.Tensor | float,
    text: torch.Tensor,
    dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """The editor's DiT call, the one place for it (inference, Edit-GRPO, pretraining): noise latents `x` and
    source latents channel-concatenated (VIVA / Lucy-Edit), Wan's timestep sigma * 1000, velocity out in fp32.
    `x` and `source` broadcast over the batch of `text` [B, L, D] (CFG's cond + negative rows share one x);
    `sigma` is a scalar or [B]; `dtype` casts the input (None: as given, e.g. under autocast)."""
    dev, b = text.device, max(x.shape[0], source.shape[0], text.shape[0])
    inp = torch.cat([x.to(dev).expand(b, *x.shape[1:]), source.to(dev).expand(b, *source.shape[1:])], dim=1)
    t = (torch.as_tensor(sigma, dtype=torch.float32, device=dev) * NUM_TRAIN_TIMESTEPS).reshape(-1).expand(b)
    out = dit(
        hidden_states=inp if dtype is None else inp.to(dtype), timestep=t, encoder_hidden_states=text, return_dict=False
    )[0]
    return out.float()


def guide(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: uncond + scale (cond - uncond)."""
    return uncond + scale * (cond - uncond)


def guided_velocity(
    dit: torch.nn.Module,
    x: torch.Tensor,
    source: torch.Tensor,
    sigma: torch.Tensor | float,
    text: torch.Tensor,
    cfg: float,
    dtype: Optional[torch.dtype] = None,
    uncond_grad: bool = True,
) -> torch.Tensor:
    """The velocity CFG samples with, in one DiT call for k rows of `x`: `text` holds the k conditioned rows, then,
    when cfg != 1, the k negative rows; `source` is one row (shared) or k rows; `sigma` a scalar or one per row of
    `x`. uncond + cfg (cond - uncond). `uncond_grad=False` detaches the negative rows (same value; a gradient only
    through the conditioned ones: Edit-GRPO's `rollout.uncond_grad`)."""
    if cfg == 1.0:
        return dit_velocity(dit, x, source, sigma, text, dtype)
    k = x.shape[0]
    both = source if source.shape[0] == 1 else torch.cat([source, source])
    if isinstance(sigma, torch.Tensor) and sigma.numel() > 1:  # one sigma per row: the negative rows' too
        sigma = torch.cat([sigma.reshape(-1), sigma.reshape(-1)])
    out = dit_velocity(dit, torch.cat([x, x]), both, sigma, text, dtype)
    return guide(out[:k], out[k:] if uncond_grad else out[k:].detach(), cfg)


def encode_frames(editor: Editor, frames: torch.Tensor) -> torch.Tensor:
    """[T,H,W,C] 0..1 -> normalized latents [1, z, T', H', W'] fp32 (posterior mode, as Lucy-Edit does)."""
    return encode_frames_batch(editor, frames.unsqueeze(0))


def encode_frames_batch(editor: Editor, frames: torch.Tensor) -> torch.Tensor:
    """Clips of one shape [N,T,H,W,C] 0..1 -> normalized latents [N, z, T', H', W'] fp32, in one VAE call (the
    causal VAE encodes a clip in per-chunk calls too small to fill a GPU, so clips batched cost about one's time;
    samples are independent, so each encodes as it would alone, up to kernel rounding)."""
    with editor.on_device(editor.vae) as vae:
        dev, dt = next(vae.parameters()).device, next(vae.parameters()).dtype
        x = frames.permute(0, 4, 1, 2, 3).to(dev, dt) * 2 - 1
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mode()
    return normalize_latents(vae, z.float())


def decode_latents(editor: Editor, z: torch.Tensor) -> torch.Tensor:
    """Normalized latents -> [T,H,W,C] 0..1 fp32 on CPU."""
    return decode_latents_batch(editor, z[:1])[0]


def decode_latents_batch(editor: Editor, z: torch.Tensor) -> torch.Tensor:
    """Normalized latents [N, z, T', H', W'] -> [N,T,H,W,C] 0..1 fp32 on CPU, in one VAE call (samples are
    independent in the VAE: each clip decodes as it would alone, up to kernel rounding)."""
    with torch.no_grad():
        return decode_latents_differentiable(editor, z).cpu()


def decode_latents_differentiable(editor: Editor, z: torch.Tensor) -> torch.Tensor:
    """`decode_latents_batch` under the caller's grad mode, left on the VAE's device: gradients of a loss on the
    frames reach `z` (a reward computed on the predicted clean video). The clamp to 0..1 passes no gradient to
    pixels outside the range."""
    with editor.on_device(editor.vae) as vae:
        dev, dt = next(vae.parameters()).device, next(vae.parameters()).dtype
        video = vae.decode(normalize_latents(vae, z.to(dev, torch.float32), inverse=True).to(dt)).sample
    return ((video.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 4, 1)


def conform_for_editor(
    editor: Editor, frames: torch.Tensor, working_size: Optional[tuple[int, int]] = None
) -> tuple[torch.Tensor, ConformReport]:
    """`frames` [T,H,W,C] as the editor takes them: 4k+1 frames, sides padded (edge) to its multiple, and for an
    editor trained at one size (`native_size`, e.g. the bundled 64x64) first scaled to fit it, aspect kept.

    Why pad, not crop: the edit must line up with the source frame by frame and pixel by pixel. A crop loses the
    border (it comes back unedited); padding keeps the whole frame, and `unconform_frames` cuts the padding off and
    scales back, so the edit has the source's W x H. Why edge padding, not reflect: it puts no mirrored copies of
    objects into the border for the editor to act on, and it works for any aspect (reflect needs each pad narrower
    than the frame: a 1920x200 clip fit into 64x64 is 64x7 plus 57 rows of padding). Measured on the bundled models
    (`recipes/small/aspect_check.py`: four 96x48 / 48x96 clips, "Invert the colours.", 20 steps), mean PSNR of the
    edit against the truth over the whole frame / of the VAE round trip against the source: edge pad 14.40 / 25.93
    dB, reflect 14.19 / 25.52, squash to 64x64 (distorts shapes) 14.65 / 24.03, center crop 5.50 (its
    border unedited)."""
    return conform_frames(
        frames.float(),
        editor.temporal_factor,
        editor.spatial_multiple,
        resize_to=working_size or editor.native_size,
        fit="pad",
        pad_mode="replicate",
    )


def reconstruct(editor: Editor, frames: torch.Tensor) -> torch.Tensor:
    """`frames` [T,H,W,C] 0..1 through the editor's VAE and back, conformed and returned at the source's size as
    `edit` does: the best any edit decoded by this VAE can look, so scoring the ground truth this way measures the
    codec's ceiling."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise InputError(f"frames must be [T,H,W,3] with T >= 1, got shape {tuple(frames.shape)}.")
    frames, report = conform_for_editor(editor, frames)
    return unconform_frames(decode_latents(editor, encode_frames(editor, frames)), report)


@contextlib.contextmanager
def blame_damaged_weights(editor: Editor) -> Iterator[None]:
    """A NaN/Inf from the models is reported as damaged weights, naming the files, when the weights hold NaN/Inf;
    otherwise the error stands as raised (fp16 overflow, a LoRA strength, the guidance)."""
    try:
        yield
    except NonFiniteError as e:
        editor.raise_if_damaged(e)
        raise


@dataclass(frozen=True)
class EncodedSource:
    """A source conformed to the editor (`conform_for_editor`) and VAE-encoded once: what every seed of a best-of-N
    starts from, so N candidates cost one encode."""

    latents: torch.Tensor  # [1, z, T', H', W'] normalized fp32
    conform: ConformReport
    seconds: float


def encode_source(editor: Editor, frames: torch.Tensor, resize_to: Optional[tuple[int, int]] = None) -> EncodedSource:
    """Check `frames` [T,H,W,C] (0..1), conform them to the editor (4k+1 frames, working size) and encode them."""
    t0 = time.perf_counter()
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise InputError(f"source frames must be [T,H,W,3] with T >= 1, got shape {tuple(frames.shape)}.")
    if not torch.isfinite(frames).all():
        raise InputError("source frames contain NaN/Inf.")
    frames, report = conform_for_editor(editor, frames, resize_to)
    with blame_damaged_weights(editor):
        latents = encode_frames(editor, frames)
    return EncodedSource(latents, report, time.perf_counter() - t0)


def edit(
    editor: Editor,
    frames: torch.Tensor,
    cond: Conditioning,
    *,
    negative: Optional[Conditioning] = None,
    settings: EditSettings = EditSettings(),  # noqa: B008 (frozen)
    fps: float = 16.0,
    audio: Optional[Audio] = None,
    resize_to: Optional[tuple[int, int]] = None,
    progress: ProgressFn = no_progress,
) -> EditResult:
    """Edit `frames` [T,H,W,C] (0..1) following `cond`. The frame count is snapped to 4k+1 (trailing frames
    dropped); the edit comes back at the source's size (`conform_for_editor`; `resize_to` (h, w) overrides the
    editor's working size). Both are reported. A shift or sampler left as None is the editor's
    (`Editor.sampling_defaults`, from its folder's scheduler config), else the default (settings.DEFAULTS)."""
    settings.resolved(editor.sampling_defaults).check()  # before the encode: a bad setting fails at once
    source = encode_source(editor, frames, resize_to)
    return edit_encoded(
        editor, source, cond, negative=negative, settings=settings, fps=fps, audio=audio, progress=progress
    )


def edit_encoded(
    editor: Editor,
    source: EncodedSource,
    cond: Conditioning,
    *,
    negative: Optional[Conditioning] = None,
    settings: EditSettings = EditSettings(),  # noqa: B008 (frozen)
    fps: float = 16.0,
    audio: Optional[Audio] = None,
    progress: ProgressFn = no_progress,
) -> EditResult:
    """`edit` of a source encoded by `encode_source`: sample from its latents, decode, scale back to its size. The
    result's seconds include the encode."""
    return edit_encoded_batch(
        editor,
        source,
        cond,
        [settings.seed],
        negative=negative,
        settings=settings,
        fps=fps,
        audio=audio,
        progress=progress,
    )[0]


@dataclass(frozen=True)
class EditTrunk:
    """The first steps of one seed's edit, run once for candidates that branch off it (`edit_trunk`)."""

    seed: int
    trunk: Trunk


def seed_noise(shape: Sequence[int], seed: int) -> torch.Tensor:
    """The noise `viva edit --seed seed` starts from (CPU generator, so the same on every device); stage judge_data
    draws its outputs' noise here too, so each output is that seed's edit."""
    return torch.randn(tuple(shape), generator=torch.Generator("cpu").manual_seed(int(seed)), dtype=torch.float32)


def _rows_velocity(
    editor: Editor, dit, source: EncodedSource, cond: Conditioning, negative: Optional[Conditioning], cfg: float, k: int
):
    """The velocity of k candidate rows of one edit: one DiT call a step, CFG's negative rows after the k
    conditioned ones."""
    guided = cfg != 1.0
    length = max(editor.max_text_tokens, cond.embeds.shape[1], negative.embeds.shape[1] if guided else 0)
    rows = [pad_tokens(cond.embeds, length)] * k + ([pad_tokens(negative.embeds, length)] * k if guided else [])
    text = torch.cat(rows).to(editor.device, editor.dtype)
    src = source.latents.to(editor.device)

    def velocity(x: torch.Tensor, sigma: float) -> torch.Tensor:
        with torch.no_grad():
            return guided_velocity(dit, x, src, sigma, text, cfg, editor.dtype)

    return velocity


def edit_trunk(
    editor: Editor,
    source: EncodedSource,
    cond: Conditioning,
    shared_steps: int,
    *,
    negative: Optional[Conditioning] = None,
    settings: EditSettings = EditSettings(),  # noqa: B008 (frozen)
    progress: ProgressFn = no_progress,
) -> EditTrunk:
    """The first `shared_steps` steps of `settings.seed`'s edit, for `edit_encoded_batch(trunk=...)`: candidates
    branched off it skip those steps (best-of-N's `shared_steps`; docs/small_models.md, section 34)."""
    settings = settings.resolved(editor.sampling_defaults)
    settings.check()
    if settings.cfg != 1.0 and negative is None:
        negative = unconditional(editor)
    with (
        blame_damaged_weights(editor),
        editor.dit_with_loras() as (dit, _),
        step_cached(dit, editor.step_cache),
    ):
        trunk = shared_trunk(
            _rows_velocity(editor, dit, source, cond, negative, settings.cfg, 1),
            seed_noise(source.latents.shape, settings.seed).to(editor.device),
            source.latents.to(editor.device),
            shared_steps=shared_steps,
            steps=settings.steps,
            shift=settings.shift,
            strength=settings.strength,
            sampler=settings.sampler,
            progress=progress,
        )
    return EditTrunk(int(settings.seed), trunk)


def edit_encoded_batch(
    editor: Editor,
    source: EncodedSource,
    cond: Conditioning,
    seeds: Sequence[int],
    *,
    negative: Optional[Conditioning] = None,
    settings: EditSettings = EditSettings(),  # noqa: B008 (frozen)
    fps: float = 16.0,
    audio: Optional[Audio] = None,
    progress: ProgressFn = no_progress,
    trunk: Optional[EditTrunk] = None,
) -> list[EditResult]:
    """One edit per seed (`settings.seed` is ignored), sampled together: one DiT call per step for all of them
    (more throughput where one edit leaves the device idle; activations grow with the count), then decoded one at a
    time (the decode's peak stays one video's). Each seed's noise is what `edit_encoded` draws for it, so each
    result is that seed's edit up to kernel rounding. Every result's seconds are the whole batch's. With `trunk`
    (`edit_trunk`, same settings) each candidate starts where the trunk stopped: the trunk's seed continues it, the
    others restart from its clean prediction with their own noise (`sampling.branch_starts`); they are then
    branches, not `viva edit --seed` edits."""
    if not seeds:
        raise InputError("edit_encoded_batch needs at least one seed.")
    settings = settings.resolved(editor.sampling_defaults)
    settings.check()
    t0 = time.perf_counter()
    if settings.cfg != 1.0 and negative is None:
        negative = unconditional(editor)
    with blame_damaged_weights(editor):
        noise = torch.cat([seed_noise(source.latents.shape, s) for s in seeds]).to(editor.device)
        resume = None
        if trunk is not None:
            continues = torch.tensor([int(s) == trunk.seed for s in seeds])
            resume = (trunk.trunk.step, branch_starts(trunk.trunk, noise, continues))
        with (
            editor.dit_with_loras() as (dit, lora_reports),
            step_cached(dit, editor.step_cache) as cached,
        ):
            latents = sample(
                _rows_velocity(editor, dit, source, cond, negative, settings.cfg, len(seeds)),
                noise,
                source.latents.to(editor.device),
                steps=settings.steps,
                shift=settings.shift,
                strength=settings.strength,
                sampler=settings.sampler,
                progress=progress,
                resume=resume,
            )
        videos = []
        for z in latents.split(1):
            out = decode_latents(editor, z)
            if not torch.isfinite(out).all():
                raise NonFiniteError(
                    "the VAE decoded NaN/Inf frames; nothing was saved. Decode in fp32: load the editor with dtype "
                    "fp32 (the VAE follows it) or EditorOptions(vae_dtype='fp32')."
                )
            videos.append(unconform_frames(out, source.conform))
    seconds = source.seconds + time.perf_counter() - t0
    notes = guidance_notes(editor.loras, settings.cfg)  # one stack, one CFG: the same notes for every seed
    return [
        EditResult(
            out,
            fps,
            trim_audio(audio, out.shape[0] / fps),
            source.conform,
            lora_reports,
            int(seed),
            seconds,
            step_cache=cached,
            notes=notes,
        )
        for out, seed in zip(videos, seeds)
    ]
