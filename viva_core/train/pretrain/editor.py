"""Stage `editor` of `viva pretrain`: the DiT editor, text encoder and optional instructor + refiner."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from ...errors import InputError
from ...runtime import ProgressFn, no_progress, parse_device
from .clips import ClipSet, frames_float, load_clip_set, operation_weights
from .config import UMT5_SPECIALS, EditorSection, ScratchConfig
from .loop import _autocast, _loop, _masked_attention, _one_thread, _write_json
from .models import check_vocabulary, new_dit, new_text_encoder, same_files, save_small, write_vlm_folder
from .tokenizers import prompt_texts, save_tokenizer, vocabulary, word_tokenizer
from .vae import encode_clips

log = logging.getLogger(__name__)


class _InstructorData(torch.utils.data.Dataset):
    """Item i: (i, the instructor chat of clip i); collate runs the VLM chat processor in the worker."""

    def __init__(self, clips: ClipSet):
        self.first = clips.source[:, 0]
        self.instructions = [r["instruction"] for r in clips.records]

    def __len__(self) -> int:
        return len(self.instructions)

    def __getitem__(self, i: int):
        from ...instructor import Instructor
        from ...vlm import to_pil_image

        return i, Instructor.messages(self.instructions[i], to_pil_image(frames_float(self.first[i])), None)


def _collate_chats(processor):
    from ...vlm import processor_inputs

    def collate(items):
        return torch.tensor([i for i, _ in items]), processor_inputs(processor, [c for _, c in items])

    return collate


TOKEN_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids")  # per-token processor outputs (left-padded)


def prepare_instructor_inputs(clips: ClipSet, processor, workers: int = 0, chunk: int = 256) -> dict[str, torch.Tensor]:
    """Every clip's instructor chat (its instruction + first frame, fixed per clip) through the VLM chat processor
    once, before training: per-token keys [N, L] left-padded to the longest chat, `pixel_values` [N, P, D],
    `image_grid_thw` [N, 3]. Training then gathers rows on the GPU instead of running the processor every step
    (run every step, the host-side processor bounds the editor stage's speed)."""
    loader = torch.utils.data.DataLoader(
        _InstructorData(clips),
        batch_size=chunk,
        num_workers=workers,
        collate_fn=_collate_chats(processor),
        worker_init_fn=_one_thread,
    )
    parts = [dict(inputs) for _, inputs in loader]
    width = max(p["input_ids"].shape[1] for p in parts)
    pad_id = processor.tokenizer.pad_token_id
    out: dict[str, list[torch.Tensor]] = {}
    for p in parts:
        n = p["input_ids"].shape[0]
        grid = p["image_grid_thw"]
        if not bool((grid == grid[:1]).all()):
            raise InputError("instructor images of different sizes: pretraining needs clips of one size.")
        for key, value in p.items():
            if key in TOKEN_KEYS:
                fill = pad_id if key == "input_ids" else 0
                value = F.pad(value, (width - value.shape[1], 0), value=fill)
            elif key == "pixel_values":
                value = value.reshape(n, -1, value.shape[-1])
            elif value.shape[0] != n:
                raise InputError(
                    f"the VLM processor returned '{key}' of shape {tuple(value.shape)}; pretraining "
                    "knows per-token keys, pixel_values and image_grid_thw."
                )
            out.setdefault(key, []).append(value)
    return {k: torch.cat(v) for k, v in out.items()}


def instructor_rows(prepared: dict[str, torch.Tensor], idx: torch.Tensor) -> dict[str, torch.Tensor]:
    """The processor inputs of clips `idx` as one left-padded batch (what `processor_inputs` gives for them)."""
    rows = {k: v[idx] for k, v in prepared.items()}
    rows["pixel_values"] = rows["pixel_values"].flatten(0, 1)
    return rows


def conditioning_tokens(
    text_hidden: torch.Tensor,
    text_lengths: torch.Tensor,
    extra: Optional[torch.Tensor],
    extra_lengths: Optional[torch.Tensor],
    length: int,
) -> torch.Tensor:
    """Per row: its real text tokens, then its real instructor tokens, zero-padded to `length` — the same
    sequence `Conditioning.concat` + `pad_tokens` give at inference for one sample. `length` must hold the longest
    row (callers check it once, before training); built by gathers, so no host sync."""
    dev, (b, _, d) = text_hidden.device, text_hidden.shape
    tl = text_lengths.to(dev)[:, None]
    pos = torch.arange(length, device=dev)[None].expand(b, -1)
    out = text_hidden.gather(1, pos.clamp(max=text_hidden.shape[1] - 1)[..., None].expand(-1, -1, d))
    out = out * (pos < tl)[..., None]
    if extra is not None:
        el = extra_lengths.to(dev)[:, None]
        j = pos - tl
        part = extra.to(text_hidden.dtype).gather(1, j.clamp(0, extra.shape[1] - 1)[..., None].expand(-1, -1, d))
        out = out + part * ((j >= 0) & (j < el))[..., None]
    return out


def instructor_hidden(vlm, inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """Last hidden states of left-padded chats, re-packed right-padded (zeros after): [B, L, H] and the real
    lengths [B] (a device tensor: no host sync)."""
    return right_packed(last_hidden(vlm, inputs), inputs["attention_mask"])


def frozen_instructor_tokens(
    vlm, chats: dict[str, torch.Tensor], chunk: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every clip's instructor tokens (`instructor_hidden` of its chat) [N, L, H] and lengths [N], computed once in
    chunks: a frozen VLM gives each clip the same tokens at every step, so training gathers them instead of running
    the VLM (the refiner, which trains, still runs every step)."""
    device = chats["input_ids"].device
    hidden, lengths = [], []
    with torch.no_grad(), _autocast(device), _masked_attention(device):
        for lo in range(0, chats["input_ids"].shape[0], chunk):
            idx = torch.arange(lo, min(lo + chunk, chats["input_ids"].shape[0]), device=device)
            h, n = instructor_hidden(vlm, instructor_rows(chats, idx))
            hidden.append(h)
            lengths.append(n)
    return torch.cat(hidden), torch.cat(lengths)


def last_hidden(vlm, inputs) -> torch.Tensor:
    """The VLM's last hidden states [B, L, H] (fp32) of a batch of chats, as the processor padded them."""
    from ...vlm import forward

    return forward(vlm, inputs, output_hidden_states=True).hidden_states[-1].float()


def right_packed(hidden: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded rows [B, L, H] -> right-padded rows (zeros after the real tokens) and the real lengths [B]."""
    lengths = attention_mask.sum(1)
    width = hidden.shape[1]
    j = torch.arange(width, device=hidden.device)[None]
    src = (width - lengths)[:, None] + j  # left padding: the real tokens are the last `length` positions
    packed = hidden.gather(1, src.clamp(max=width - 1)[..., None].expand(-1, -1, hidden.shape[2]))
    return packed * (j < lengths[:, None])[..., None], lengths


def latent_masks(masks: torch.Tensor, latent_shape: tuple[int, int, int], temporal_factor: int) -> torch.Tensor:
    """Clip masks [N,T,H,W] (integers, 1 = edited) -> VIVA's loss weights at latent size [N,1,T',H',W'] in 0..1."""
    from ...data import mask_unit
    from ..losses import latent_mask

    return torch.cat([latent_mask(mask_unit(m), latent_shape, temporal_factor) for m in masks])


@dataclass
class EditorData:
    """Everything the editor stage reads per step, resident on the training device and indexed by clip."""

    source: torch.Tensor  # normalized latents [N, z, T', H', W'] fp32
    target: torch.Tensor
    masks: torch.Tensor  # [N, 1, T', H', W'] 0..1
    grounding: Optional[torch.Tensor]  # [N, image tokens]: edit-mask share of each instructor image token, or None
    text_ids: torch.Tensor  # UMT5 ids [N + 1, max_text_tokens]; row N is the empty prompt (CFG's negative)
    text_mask: torch.Tensor
    chats: Optional[dict[str, torch.Tensor]]  # prepared instructor inputs, or None (text only)
    # a frozen instructor's tokens, computed once (`frozen_instructor_tokens`): [N, L, H] right-packed and [N] lengths
    instructor_tokens: Optional[tuple[torch.Tensor, torch.Tensor]] = None

    @property
    def empty(self) -> int:
        return self.source.shape[0]


def prepare_editor_data(
    clips: ClipSet,
    vae,
    text_tok,
    sec: EditorSection,
    device: torch.device,
    processor=None,
    workers: int = 0,
    merge: int = 0,
) -> EditorData:
    """Encode every clip with the frozen VAE, tokenize every instruction and run the instructor's chat processor,
    once; check that each clip's text + instructor tokens fit `max_text_tokens` (so training pads every row exactly
    as inference pads it). `merge` > 0 (the VLM's spatial merge size) also prepares the grounding targets."""
    source, target = encode_clips(vae, clips.source, device), encode_clips(vae, clips.target, device)
    masks = latent_masks(clips.mask, tuple(source.shape[2:]), int(vae.config.scale_factor_temporal)).to(device)
    texts = [r["instruction"] for r in clips.records] + [""]
    tok = text_tok(texts, padding="max_length", max_length=sec.max_text_tokens, truncation=True, return_tensors="pt")
    lengths = tok.attention_mask[:-1].sum(1)  # per clip: its text tokens (+ its instructor tokens below)
    chats = grounding = None
    if processor is not None:
        chats = prepare_instructor_inputs(clips, processor, workers)
        lengths = lengths + chats["attention_mask"].sum(1)
        grounding = grounding_targets(clips.mask[:, 0], chats["image_grid_thw"][0], merge).to(device) if merge else None
        chats = {k: v.to(device) for k, v in chats.items()}
    longest = int(lengths.max())
    if longest > sec.max_text_tokens:
        raise InputError(
            f"a clip's text + instructor tokens number {longest}, more than editor.max_text_tokens="
            f"{sec.max_text_tokens}; raise it to at least {longest}."
        )
    return EditorData(source, target, masks, grounding, tok.input_ids.to(device), tok.attention_mask.to(device), chats)


def grounding_targets(first_masks: torch.Tensor, grid_thw: torch.Tensor, merge: int) -> torch.Tensor:
    """Edit masks of the instructor's frame [N, H, W] -> the share of each of its image tokens that is edited
    [N, (h / merge) * (w / merge)], in Qwen2.5-VL's token order (merged patches row by row over the resized image;
    the resize keeps the frame's aspect, so pooling the frame's own mask to the token grid lines them up)."""
    from ...data import mask_unit

    rows, cols = int(grid_thw[1]) // merge, int(grid_thw[2]) // merge
    unit = torch.stack([mask_unit(m) for m in first_masks]).float()  # [N, H, W] 0..1
    return F.adaptive_avg_pool2d(unit[:, None], (rows, cols)).flatten(1)


def _continued_editor(folder: Path, vae_dir: Path, words: list[str], max_text_tokens: int):
    """The tokenizer, text encoder and DiT (fp32) of an editor folder this stage wrote, checked to fit the run: the
    same VAE (another one's latents would be noise to this DiT), a text-only editor, the same text length, and a
    tokenizer that knows every training word."""
    from diffusers import WanTransformer3DModel
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, UMT5EncoderModel

    from ...editor import EDITOR_INFO_FILE
    from ...safe_io import read_json_object

    info_file = folder / EDITOR_INFO_FILE
    if not info_file.is_file():
        raise InputError(f"{folder}: no {EDITOR_INFO_FILE}; editor.init takes a folder `viva pretrain editor` wrote.")
    info = read_json_object(info_file, "editor info")
    if info.get("instructor"):
        raise InputError(f"{folder}: trained with the instructor; editor.init continues text-only editors.")
    if int(info.get("max_text_tokens", max_text_tokens)) != max_text_tokens:
        raise InputError(
            f"{folder}: trained with max_text_tokens {info['max_text_tokens']}; set editor.max_text_tokens to it."
        )
    if (folder / "vae").is_dir() and not same_files(folder / "vae", vae_dir):
        raise InputError(
            f"{folder}: trained on another VAE than editor.vae = {vae_dir}; leave editor.vae empty to use the "
            "folder's own."
        )
    vocab = AutoTokenizer.from_pretrained(folder / "tokenizer").get_vocab()
    # Rebuilt, not loaded: the same ids, without the loaded copy's init kwargs in what the run saves.
    tokenizer = word_tokenizer([w for w in sorted(vocab, key=vocab.get) if w not in UMT5_SPECIALS], kind="umt5")
    if tokenizer.get_vocab() != vocab:
        raise InputError(f"{folder / 'tokenizer'}: not a word-level tokenizer of `viva pretrain`; train from scratch.")
    check_vocabulary(tokenizer, words, folder / "tokenizer")
    text_encoder = UMT5EncoderModel.from_pretrained(folder / "text_encoder", torch_dtype=torch.float32)
    dit = WanTransformer3DModel.from_config(WanTransformer3DModel.load_config(folder / "transformer"))
    dit.load_state_dict(load_file(folder / "transformer" / "diffusion_pytorch_model.safetensors"))  # fp32 <- bf16
    return tokenizer, text_encoder, dit


# A Wan block's residual branches end in these projections: zero them and the block adds nothing to its input.
_BLOCK_OUTPUTS = ("attn1.to_out.", "attn2.to_out.", "ffn.net.2.")


def grown_dit(dit, layers: int):
    """`dit` with `layers` more blocks after its last, each a copy of the last with its three residual outputs
    (self-attention, cross-attention, FFN) zeroed: the grown DiT computes exactly what `dit` does, and the old blocks
    keep their names, so LoRAs trained on the old DiT still load. Gradients reach the zeroed projections at once (their
    inputs are the copied block's), and the rest of each new block from the first update on."""
    from diffusers import WanTransformer3DModel

    old = int(dit.config.num_layers)
    grown = WanTransformer3DModel.from_config({**dit.config, "num_layers": old + layers})
    state = dit.state_dict()
    last = dit.blocks[old - 1].state_dict()
    for i in range(old, old + layers):
        for key, value in last.items():
            state[f"blocks.{i}.{key}"] = torch.zeros_like(value) if key.startswith(_BLOCK_OUTPUTS) else value.clone()
    grown.load_state_dict(state)
    return grown


def _instructor_copy(init: Path, folder: Path, words: list[str]) -> Path:
    """A copy of a VLM folder for `editor.instructor_init` (a judge's own files left behind: the editor's instructor
    answers no questions), checked to know every training word."""
    from transformers import AutoTokenizer

    from ...judge import JUDGE_INFO_FILE
    from .judge import GROUND_HEAD_FILE

    if not (init / "config.json").is_file():
        raise InputError(f"{init}: not a VLM folder (no config.json); editor.instructor_init takes one, e.g. a judge.")
    check_vocabulary(AutoTokenizer.from_pretrained(init), words, init)
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(init, folder, ignore=shutil.ignore_patterns(JUDGE_INFO_FILE, GROUND_HEAD_FILE))
    return folder


def train_editor(cfg: ScratchConfig, progress: ProgressFn = no_progress) -> Path:
    from diffusers import AutoencoderKLWan

    from ...editor import EDITOR_INFO_FILE
    from ...pipeline import dit_velocity
    from .. import losses as L

    sec, out, device = cfg.editor, Path(cfg.output_dir), parse_device(cfg.device)
    clips = load_clip_set(cfg.data.manifest, cfg.data.limit)
    vae_dir = Path(sec.vae or Path(sec.init) / "vae")
    if not (vae_dir / "config.json").is_file():
        raise InputError(
            f"{vae_dir}: not a VAE folder (no config.json); set editor.vae to the `vae` folder the vae stage wrote"
            + (", or leave it empty to use editor.init's own" if sec.init else "")
            + "."
        )
    vae = AutoencoderKLWan.from_pretrained(vae_dir, torch_dtype=torch.float32).to(device).eval()

    words = vocabulary(prompt_texts(clips.records))
    torch.manual_seed(cfg.seed)
    if sec.init:
        text_tok, text_encoder, dit = _continued_editor(Path(sec.init), vae_dir, words, sec.max_text_tokens)
    else:
        text_tok = word_tokenizer(words, kind="umt5")
        text_encoder, dit = new_text_encoder(sec, len(text_tok)), new_dit(sec, int(vae.config.z_dim))
    if sec.grow_layers:
        dit = grown_dit(dit, sec.grow_layers)
    text_encoder, dit = text_encoder.to(device).train(), dit.to(device).train()
    params = list(text_encoder.parameters()) + list(dit.parameters())
    vlm = refiner = None
    if sec.instructor:
        from ...instructor import RefinerConfig, TokenRefiner
        from ...vlm import load_vlm

        if sec.instructor_init:
            folder = _instructor_copy(Path(sec.instructor_init), out / "instructor", words)
        else:
            folder = write_vlm_folder(out / "instructor", word_tokenizer(words, kind="qwen"), sec.vlm, cfg.seed)
        vlm = load_vlm(folder, dtype="fp32", device=device)
        vlm.model.train(not sec.instructor_frozen).requires_grad_(not sec.instructor_frozen)
        refiner = (
            TokenRefiner(
                RefinerConfig(
                    in_dim=vlm.hidden_size,
                    out_dim=sec.text_dim,
                    hidden_dim=sec.refiner_hidden,
                    depth=sec.refiner_depth,
                    heads=sec.refiner_heads,
                )
            )
            .to(device)
            .train()
        )
        if sec.init:  # a text-only editor gains the instructor: its tokens start as the padding it already reads
            torch.nn.init.zeros_(refiner.proj_out.weight)
            torch.nn.init.zeros_(refiner.proj_out.bias)
        params += ([] if sec.instructor_frozen else list(vlm.model.parameters())) + list(refiner.parameters())
    grounding_head = None
    if vlm is not None and sec.grounding_weight > 0:
        grounding_head = torch.nn.Linear(vlm.hidden_size, 1).to(device)  # training-only probe: not saved
        params += list(grounding_head.parameters())
    merge = int(vlm.model.config.vision_config.spatial_merge_size) if grounding_head is not None else 0
    data = prepare_editor_data(
        clips, vae, text_tok, sec, device, vlm.processor if vlm else None, cfg.optim.workers, merge
    )
    del vae
    if vlm is not None and sec.instructor_frozen and grounding_head is None:
        data.instructor_tokens = frozen_instructor_tokens(vlm, data.chats)
    model = torch.compile(dit) if cfg.optim.compile else dit

    gen = torch.Generator(device).manual_seed(cfg.seed)  # every draw on the training device: no host round trips
    n, batch = len(clips), cfg.optim.batch_size
    weights = operation_weights(clips.records, cfg.data.balance).float().to(device) if cfg.data.balance else None

    def step(i: int) -> dict:
        if weights is None:
            idx = torch.randint(n, (batch,), generator=gen, device=device)
        else:
            idx = torch.multinomial(weights, batch, replacement=True, generator=gen)
        drop = torch.rand(batch, generator=gen, device=device) < sec.cond_dropout
        text_row = torch.where(drop, torch.full_like(idx, data.empty), idx)
        ids, mask = data.text_ids[text_row], data.text_mask[text_row]
        with _autocast(device):
            text_hidden = text_encoder(ids, mask).last_hidden_state.float()
            extra = extra_len = ground = None
            if vlm is not None:
                if data.instructor_tokens is not None:  # a frozen instructor's, computed once
                    hidden, lengths = data.instructor_tokens[0][idx], data.instructor_tokens[1][idx]
                else:
                    rows = instructor_rows(data.chats, idx)
                    with _masked_attention(device), torch.set_grad_enabled(not sec.instructor_frozen):
                        raw = last_hidden(vlm, rows)
                    hidden, lengths = right_packed(raw, rows["attention_mask"])
                    if grounding_head is not None:  # every chat has the same number of image tokens
                        image = rows["input_ids"] == vlm.model.config.image_token_id
                        logits = grounding_head(raw[image].view(batch, -1, raw.shape[-1])).squeeze(-1).float()
                        ground = F.binary_cross_entropy_with_logits(logits, data.grounding[idx])
                pad = torch.arange(hidden.shape[1], device=device)[None] >= lengths[:, None]
                extra = refiner(hidden, pad).float()
                extra_len = torch.where(drop, torch.zeros_like(lengths), lengths)
            cond = conditioning_tokens(text_hidden, mask.sum(1), extra, extra_len, sec.max_text_tokens)
            sigma = L.sample_sigmas(batch, gen, shift=sec.sigma_shift)
            x0 = data.target[idx]
            noise = torch.randn(x0.shape, generator=gen, device=device)
            x_t, v_target = L.flow_matching_pair(x0, noise, sigma)
            v = dit_velocity(model, x_t, data.source[idx], sigma, cond)
        loss = L.masked_fm_loss(v, v_target, data.masks[idx], sec.mask_weight)
        plain = L.masked_fm_loss(v.detach(), v_target, None, 0.0)
        if ground is None:
            return {"loss": loss, "loss_fm": plain}
        return {"loss": loss + sec.grounding_weight * ground, "loss_fm": plain, "loss_grounding": ground.detach()}

    summary = _loop(cfg, params, step, out, progress, "editor (DiT + UMT5" + (" + instructor)" if vlm else ")"))
    summary["clips_per_second"] = summary["steps_done"] * batch / summary["seconds"]
    editor_dir = out / "editor"
    save_small(dit.eval(), editor_dir / "transformer")
    save_small(text_encoder.eval(), editor_dir / "text_encoder")
    save_tokenizer(text_tok, editor_dir / "tokenizer")
    shutil.copytree(vae_dir, editor_dir / "vae", dirs_exist_ok=True)
    _write_json(
        editor_dir / EDITOR_INFO_FILE,
        {
            "max_text_tokens": sec.max_text_tokens,
            "native_size": list(clips.source.shape[2:4]),
            "frames": int(clips.source.shape[1]),
            "trained_by": "viva pretrain editor",
            "instructor": bool(vlm),
            "mask_weight": sec.mask_weight,
        },
    )
    if vlm is not None:
        from ...instructor import save_refiner

        save_small(vlm.model.eval(), out / "instructor")
        save_refiner(out / "refiner.safetensors", refiner.eval(), {"trained_by": "viva pretrain editor"})
    _write_json(out / "editor_summary.json", {"config": dataclasses.asdict(cfg), "result": summary})
    log.info("editor: %s", summary)
    return editor_dir
