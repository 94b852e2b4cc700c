"""The DiT video editor: Wan transformer + Wan VAE (+ UMT5 text encoder), loaded from local files only.

Two on-disk layouts are read:
- a diffusers folder (``transformer/``, ``vae/`` [, ``text_encoder/``, ``tokenizer/``]), e.g. Lucy-Edit-Dev or a
  Wan2.1/2.2 diffusers checkout;
- single files in ComfyUI's folders: the DiT in original Wan / ComfyUI keys (``models/diffusion_models``), the
  Wan2.1 VAE (``models/vae``); the text encoder then comes from a transformers folder or, in ComfyUI, from the
  built-in CLIP Text Encode node's CONDITIONING.

The source video conditions the DiT by channel concat, so an editor has ``in_channels == 2 * z_dim``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import re
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch

from .compat import FLASH_ATTN_4_MODULE, keep_in_fp32_modules, set_attention_backend, wan_single_file_converter
from .errors import InputError, ModelLoadError, NonFiniteError
from .lora import LoraKeyReport, LoraSpec, applied_loras, check_lora_fits, install_fp8_lora_hooks
from .runtime import ModelHost, bf16_is_fast, parse_device, parse_dtype
from .safe_io import load_safetensors, read_json_object, read_metadata_json
from .step_cache import StepCache, check_step_cache

log = logging.getLogger(__name__)

OFFLOAD_MODES = ("none", "model", "block", "block_prefetch")
BLOCK_OFFLOAD_MODES = ("block", "block_prefetch")  # the DiT streamed block by block from host memory
ATTENTION_BACKENDS = ("sdpa", "sdpa_cudnn", "sdpa_flash", "sdpa_efficient", "flash", "sage", "flash4")
# forward-only kernels: SageAttention has no backward (diffusers raises in it only under context parallelism; a plain
# call returns an output without a gradient path, so a LoRA on q, k, v would silently not train)
INFERENCE_ONLY_ATTENTION = ("sage",)
COMPILE_MODES = ("off", "blocks", "full")
WAN_HEAD_DIM = 128  # every released Wan DiT (1.3B, 5B, 14B) uses 128-dim heads; weights do not record it
SINGLE_FILE_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "model.")


@dataclass(frozen=True)
class EditorOptions:
    """How the editor runs; every field maps to one loader input of the ComfyUI node."""

    dtype: str = "bf16"  # Wan must run in bf16, not fp16 (fp16 overflows in its FFN)
    device: str = "auto"
    # none | model (whole parts to CPU between uses) | block (DiT blocks streamed) | block_prefetch (streamed ahead)
    offload: str = "none"
    attention: str = "sdpa"
    compile: str = "off"
    fp8_storage: bool = False  # store DiT weights in float8_e4m3fn, compute in `dtype`
    vae_tiling: bool = False
    vae_dtype: str = "auto"  # auto: bf16 on a GPU or AMX CPU unless the DiT runs in fp32, else fp32 (vae_dtype_for)
    allow_t2v: bool = False  # accept a plain T2V DiT by zero-initialising the extra input channels (for SFT)


@dataclass
class Conditioning:
    """Cross-attention tokens for the DiT, [1, L, text_dim], plus how they were made (shown to users)."""

    embeds: torch.Tensor
    description: str = ""

    def __post_init__(self) -> None:
        if self.embeds.ndim == 2:
            self.embeds = self.embeds.unsqueeze(0)
        if self.embeds.ndim != 3 or self.embeds.shape[0] != 1:
            raise InputError(f"conditioning must be [1, L, D] tokens, got shape {tuple(self.embeds.shape)}.")

    def concat(self, other: Conditioning) -> Conditioning:
        """Text tokens followed by instructor tokens (VIVA conditions the DiT on both)."""
        if other.embeds.shape[-1] != self.embeds.shape[-1]:
            raise InputError(
                f"cannot join conditionings of width {self.embeds.shape[-1]} and {other.embeds.shape[-1]}: "
                "the token refiner's output size must equal the DiT's text_dim."
            )
        emb = torch.cat([self.embeds, other.embeds.to(self.embeds)], dim=1)
        return Conditioning(emb, " + ".join(d for d in (self.description, other.description) if d))


@dataclass
class Editor:
    """The loaded parts and options. Immutable in spirit: `with_lora` returns a new Editor sharing the modules."""

    transformer: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: Optional[torch.nn.Module]
    tokenizer: object
    options: EditorOptions
    name: str
    device: torch.device
    dtype: torch.dtype
    loras: tuple[LoraSpec, ...] = ()
    step_cache: Optional[StepCache] = None  # reuse of DiT work between steps (viva_core.step_cache); None: off
    max_text_tokens: int = 512
    notes: list[str] = field(default_factory=list)
    native_size: Optional[tuple[int, int]] = None  # (H, W) a small model was trained at; sources are fit into it
    host: Optional[ModelHost] = None  # places the parts when an app manages memory (ComfyUI); None: `options` do
    files: dict[str, str] = field(default_factory=dict)  # part -> the folder or file it was read from (for errors)
    # shift / sampler of the folder's scheduler/scheduler_config.json: what an edit uses when its settings leave
    # them None (EditSettings.resolved); empty for single files and folders without one
    sampling_defaults: dict[str, object] = field(default_factory=dict)
    text_encoder_released: bool = False  # release_text_encoder() dropped it: encode_text / CFG's negative now fail
    deferred_placement: bool = False  # load_editor(encode_first=True): DiT and VAE wait on the CPU (_finish_placement)

    # ---- geometry -------------------------------------------------------------------------------------------
    @property
    def z_dim(self) -> int:
        return int(self.vae.config.z_dim)

    @property
    def text_dim(self) -> int:
        return int(self.transformer.config.text_dim)

    @property
    def temporal_factor(self) -> int:
        return int(getattr(self.vae.config, "scale_factor_temporal", None) or 4)

    @property
    def spatial_factor(self) -> int:
        return int(getattr(self.vae.config, "scale_factor_spatial", None) or 8)

    @property
    def spatial_multiple(self) -> int:
        """Frame sides must be multiples of VAE stride x DiT patch."""
        return self.spatial_factor * int(self.transformer.config.patch_size[1])

    def with_lora(self, path: str, strength: float) -> Editor:
        """A new Editor with one more LoRA in its stack; a file that does not fit this DiT fails here."""
        if strength != 0:
            check_lora_fits(path, self.transformer)
        return dataclasses.replace(self, loras=self.loras + (LoraSpec(str(path), float(strength)),))

    def with_step_cache(self, cache: Optional[StepCache]) -> Editor:
        """A new Editor that samples with `cache` (None: without one), sharing the modules; a combination that does
        not work with this editor's options fails here."""
        check_step_cache(cache, self.transformer)
        return dataclasses.replace(self, step_cache=cache)

    def nonfinite_weights(self) -> list[str]:
        """'part: tensor' for every weight holding NaN/Inf. A pass over all weights, so it runs only after a model
        produced NaN/Inf, to tell a damaged file from an overflow (a load-time scan would cost every user seconds)."""
        bad = []
        for part, module in (("transformer", self.transformer), ("vae", self.vae), ("text_encoder", self.text_encoder)):
            if module is None:
                continue
            for name, t in [*module.named_parameters(), *module.named_buffers()]:
                if t.is_floating_point() and not t.is_meta and not torch.isfinite(t.detach().float()).all():
                    bad.append(f"{self.files.get(part, part)}: {name}")
        return bad

    def raise_if_damaged(self, cause: Exception) -> None:
        """After a model produced NaN/Inf (`cause`): when weights hold NaN/Inf, a NonFiniteError naming the files
        (damaged files, not an overflow); otherwise nothing, and `cause` stands."""
        bad = self.nonfinite_weights()
        if bad:
            raise NonFiniteError(
                f"{len(bad)} weight tensor(s) of the editor hold NaN/Inf (e.g. {'; '.join(bad[:3])}); "
                "the model files are damaged or were saved from a diverged training run. Replace them "
                "(download or export them again); nothing was saved."
            ) from cause

    def describe(self) -> str:
        cfg = self.transformer.config
        parts = [
            f"{self.name}: Wan DiT {cfg.num_layers} layers, dim {cfg.num_attention_heads * cfg.attention_head_dim}, "
            f"in {cfg.in_channels}/out {cfg.out_channels}, VAE z_dim {self.z_dim} (x{self.temporal_factor} time, "
            f"x{self.spatial_factor} space), {self.dtype} on {self.device}, offload {self.options.offload}, "
            f"attention {self.options.attention}, compile {self.options.compile}"
        ]
        parts += [f"LoRA {Path(s.path).name} @ {s.strength:g}" for s in self.loras]
        if self.step_cache is not None:
            parts.append(f"step cache {self.step_cache.label()}")
        return "; ".join(parts + self.notes)

    # ---- placement ------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def on_device(self, module: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """With model offload, a part lives on the CPU and visits the GPU only while it is used. A hosted part is
        loaded by the host and left where it is after (the host moves it when memory is needed)."""
        if module is not self.text_encoder:
            self._finish_placement()
        if self.host is not None:
            self.host.load(module)
            yield module
            return
        if self.options.offload == "none" or self.device.type == "cpu" or getattr(module, "_viva_block_offload", False):
            yield module
            return
        module.to(self.device)
        try:
            yield module
        finally:
            module.to("cpu")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    @contextlib.contextmanager
    def dit_with_loras(self) -> Iterator[tuple[torch.nn.Module, list[LoraKeyReport]]]:
        """The DiT ready to run with the LoRA stack applied, and the key report of each LoRA. A host that patches
        LoRAs (ComfyUI: weight patches it undoes when the model unloads or another clone loads) applies them;
        otherwise they are merged here for the `with` block and the weights restored bit-exactly after it."""
        self._finish_placement()
        if self.host is not None:
            reports = [check_lora_fits(s.path, self.transformer) for s in self.loras if s.strength != 0]
            if self.host.load(self.transformer, self.loras):
                yield self.transformer, reports
                return
        with applied_loras(self.transformer, self.loras) as reports, self.on_device(self.transformer) as dit:
            yield dit, reports

    def _finish_placement(self) -> None:
        """Put the DiT and VAE that `load_editor(encode_first=True)` kept on the CPU onto the device, as `_place`
        would have at load (the same one host->device copy, only later); a no-op once done."""
        if not self.deferred_placement:
            return
        self.deferred_placement = False
        self.vae.to(self.device)
        self.transformer.to(self.device)
        compile_dit(self.transformer, self.options.compile)

    def release_text_encoder(self) -> None:
        """Drop the text encoder once every prompt, and CFG's negative, is encoded; then place the DiT and VAE if
        `load_editor(encode_first=True)` kept them off the device.

        Why: UMT5-XXL is 10.6 GiB of Lucy-Edit's 25.9 GiB peak and idle after encoding. Dropping it costs nothing,
        whereas moving it to the CPU after use (or to the GPU for each use) costs a 10.6 GiB copy per edit. One-shot
        callers (`viva edit`, which encodes once, then edits one or N seeds) load with `encode_first` and release:
        text encoder and DiT are never on the device together, with no extra copy. Callers that encode new prompts
        keep the encoder (the default), and ComfyUI's model management moves it out when memory is short, so
        a hosted editor refuses this. Memory is freed once no Editor from `with_lora` still holds the encoder."""
        if self.host is not None:
            raise InputError(
                f"{self.name}: a hosted editor's parts belong to the app's model management (ComfyUI unloads the "
                "text encoder when memory is needed); do not release them."
            )
        if self.text_encoder is not None:
            encoder = weakref.ref(self.text_encoder)
            self.text_encoder = None
            self.text_encoder_released = True
            if encoder() is not None:  # not freed by the drop: in reference cycles, or held by a with_lora Editor
                gc.collect()  # only then: a full collection costs 0.1-0.3 s CPU once diffusers and torch are loaded
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        self._finish_placement()

    # ---- text -----------------------------------------------------------------------------------------------
    def encode_text(self, prompt: str) -> Conditioning:
        """UMT5 tokens of `prompt`, unpadded (padding to `max_text_tokens` happens once, in the sampler)."""
        if self.text_encoder_released:
            raise InputError(
                f"{self.name}: the text encoder was released (Editor.release_text_encoder) to free its memory, so "
                f"{prompt!r} cannot be encoded. Encode every prompt, and the negative for CFG, before releasing it "
                "(pass the negative to edit(negative=...)), or load the editor again."
            )
        if self.text_encoder is None or self.tokenizer is None:
            raise ModelLoadError(
                f"{self.name}: this editor has no text encoder. Load it from a diffusers folder with text_encoder/ and "
                "tokenizer/, pass a UMT5 folder as the text encoder, or (in ComfyUI) connect a CONDITIONING from "
                "CLIP Text Encode with the Wan UMT5 text encoder."
            )
        tok = self.tokenizer(
            [prompt],
            padding="max_length",
            max_length=self.max_text_tokens,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        unknown = unknown_words(self.tokenizer, prompt)
        if unknown:
            log.warning(
                "%s: the text encoder does not know %s (each becomes <unk>, so the edit cannot follow it); "
                "this model knows %d words.",
                self.name,
                ", ".join(repr(w) for w in unknown),
                len(self.tokenizer),
            )
        n = int(tok.attention_mask.sum())
        with self.on_device(self.text_encoder) as te:
            dev = next(te.parameters()).device
            out = te(tok.input_ids.to(dev), tok.attention_mask.to(dev)).last_hidden_state
        embeds = out[:, :n].float().cpu()
        if not torch.isfinite(embeds).all():  # here, not in the sampler: the encoder may be released by then
            err = NonFiniteError(
                f"{self.name}: the text encoder produced NaN/Inf for {prompt!r}; run it in bf16 or fp32 (fp16 "
                "overflows in UMT5)."
            )
            self.raise_if_damaged(err)
            raise err
        return Conditioning(embeds, f"text: {prompt!r}")


def unknown_words(tokenizer, text: str) -> list[str]:
    """Words of `text` the tokenizer can only map to its unknown token (the bundled word-level tokenizer knows the
    synthetic world's vocabulary only; sentencepiece UMT5 knows nearly everything), in order, once each."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None or unk not in tokenizer(text, add_special_tokens=False).input_ids:
        return []
    words = dict.fromkeys(w.strip(".,;:!?\"'()") for w in text.split())
    return [w for w in words if w and unk in tokenizer(w, add_special_tokens=False).input_ids]


# ---- loading --------------------------------------------------------------------------------------------------


def load_editor(
    folder: str | None = None,
    *,
    transformer_file: str | None = None,
    vae_file: str | None = None,
    text_encoder_folder: str | None = None,
    options: EditorOptions = EditorOptions(),
    host: Optional[Callable[[Editor], ModelHost]] = None,
    encode_first: bool = False,
) -> Editor:
    """Load an editor from a diffusers folder, or from single files (+ an optional UMT5 folder). `host` builds the
    editor's ModelHost (ComfyUI's model management); hosted parts stay on the CPU here until the host loads them.
    `encode_first` (one-shot callers, e.g. `viva edit`): with offload none only the text encoder goes onto the device;
    the DiT and VAE follow when `Editor.release_text_encoder()` drops it (or at their first use), so the two largest
    parts never share the device."""
    _check_options(options)
    device = parse_device(options.device)
    dtype = parse_dtype(options.dtype, device)
    vae_dtype = vae_dtype_for(options.vae_dtype, dtype, device)
    if folder is not None:
        root = Path(folder)
        if not root.is_dir():
            raise ModelLoadError(
                f"{root}: editor folder not found. Give a diffusers folder with transformer/ and vae/."
            )
        transformer = _load_diffusers_part(root, "transformer", dtype)
        vae = _load_diffusers_part(root, "vae", vae_dtype)
        te_root = Path(text_encoder_folder) if text_encoder_folder else root
        name = root.name
        files = {"transformer": str(root / "transformer"), "vae": str(root / "vae")}
    elif transformer_file is not None:
        if vae_file is None:
            raise ModelLoadError(
                f"{transformer_file}: a single-file DiT needs its VAE file too (models/vae, e.g. "
                "wan_2.1_vae.safetensors)."
            )
        transformer = load_transformer_file(transformer_file, dtype)
        vae = load_vae_file(vae_file, vae_dtype)
        te_root = Path(text_encoder_folder) if text_encoder_folder else None
        name = Path(transformer_file).stem
        files = {"transformer": str(transformer_file), "vae": str(vae_file)}
    else:
        raise InputError("load_editor needs a diffusers folder or a transformer file.")

    notes: list[str] = []
    transformer = _check_editor_channels(transformer, vae, name, options.allow_t2v, notes)
    text_encoder, tokenizer = _load_text_encoder(te_root, dtype) if te_root is not None else (None, None)
    editor = Editor(
        transformer.eval().requires_grad_(False),
        vae.eval().requires_grad_(False),
        text_encoder,
        tokenizer,
        options,
        name,
        device,
        dtype,
        notes=notes,
        files={**files, **({"text_encoder": str(_text_encoder_dir(te_root))} if te_root is not None else {})},
    )
    if folder is not None:
        _apply_editor_info(editor, Path(folder))
        editor.sampling_defaults = scheduler_defaults(Path(folder))
        if editor.sampling_defaults:
            editor.notes.append(
                "sampling defaults from scheduler/"
                + SCHEDULER_CONFIG
                + ": "
                + ", ".join(
                    f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in editor.sampling_defaults.items()
                )
            )
    if host is not None:
        editor.host = host(editor)
    _place(editor, encode_first)
    return editor


def vae_dtype_for(name: str, dit_dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The VAE's dtype. "auto" is bf16 where bf16 runs fast (a GPU, a CPU with AMX) unless the DiT runs in fp32: at
    the Lucy-Edit shape a bf16 Wan2.2 VAE decodes the same latents at 52.8 dB PSNR against fp32, 1.6x faster and with
    5.9 GiB less peak memory (bench/RESULTS.md; ComfyUI runs Wan VAEs in bf16 too); with AMX on 2 CPU cores the
    bundled VAE decodes README command 1's clip in 0.27 s, not 0.62. fp32 on other CPUs (bf16 convolutions are slow
    there) and with an fp32 DiT, so that dtype fp32 keeps the whole edit in fp32."""
    if name == "auto":
        return torch.bfloat16 if bf16_is_fast(device) and dit_dtype != torch.float32 else torch.float32
    return parse_dtype(name, device)


def _check_options(o: EditorOptions) -> None:
    for value, allowed, what in (
        (o.offload, OFFLOAD_MODES, "offload"),
        (o.attention, ATTENTION_BACKENDS, "attention"),
        (o.compile, COMPILE_MODES, "compile"),
    ):
        if value not in allowed:
            raise InputError(f"{what} '{value}' is not one of {allowed}.")
    if o.fp8_storage and o.compile == "blocks":  # dynamo: "Attempted to use torch.nn.Parameter() constructor"
        raise InputError(
            "compile 'blocks' cannot trace fp8 weight storage (diffusers casts the fp8 weights inside "
            "each block's forward, which a whole-graph compile of the block rejects): use compile 'full' "
            "with fp8 storage, or turn fp8 storage off."
        )


def _load_diffusers_part(root: Path, sub: str, dtype: torch.dtype) -> torch.nn.Module:
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    cls = {"transformer": WanTransformer3DModel, "vae": AutoencoderKLWan}[sub]
    part = root / sub
    if not (part / "config.json").is_file():
        raise ModelLoadError(
            f"{root}: missing {sub}/config.json. An editor folder needs transformer/ and vae/ "
            "subfolders in diffusers format (as in a Wan2.1/2.2 or Lucy-Edit diffusers checkout)."
        )
    cfg = read_json_object(part / "config.json", f"{sub} config")
    if cfg.get("_class_name") not in (None, cls.__name__):
        raise ModelLoadError(
            f"{part}: is a {cfg.get('_class_name')}, expected {cls.__name__}. This folder is not a "
            "Wan-architecture editor."
        )
    weights = list(part.glob("*.safetensors"))
    if not weights:
        pickles = [p.name for p in part.iterdir() if p.suffix in (".bin", ".pt", ".ckpt", ".pth")]
        why = f" (found {pickles}: pickle weights are refused; convert them to safetensors)" if pickles else ""
        raise ModelLoadError(f"{part}: no *.safetensors weights{why}.")
    try:
        model = cls.from_pretrained(
            str(root), subfolder=sub, torch_dtype=dtype, use_safetensors=True, local_files_only=True
        )
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise ModelLoadError(
            f"{part}: cannot load {cls.__name__} ({e}). The folder is incomplete or its weights do "
            "not match its config.json."
        ) from e
    missing = [name for name, p in model.named_parameters() if p.is_meta]  # diffusers only warns, then moving fails
    if missing:
        raise ModelLoadError(
            f"{part}: the weights do not match its config.json: {len(missing)} parameters have no "
            f"weights (e.g. {', '.join(missing[:3])}). Restore the folder from the model's download."
        )
    return model


def _strip_prefix(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in SINGLE_FILE_PREFIXES:
        if any(k.startswith(prefix + "blocks.") for k in sd):
            return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    return sd


def _dequantize_scaled_fp8(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ComfyUI 'scaled fp8' files store W/scale in fp8 plus `<name>.scale_weight`; undo that."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k.endswith((".scale_weight", ".scale_input")) or k == "scaled_fp8":
            continue
        scale = sd.get(k[: -len(".weight")] + ".scale_weight") if k.endswith(".weight") else None
        out[k] = v.float() * scale.float() if scale is not None else v
    return out


def infer_transformer_config(sd: dict[str, torch.Tensor], metadata: dict[str, str]) -> dict:
    """Read the WanTransformer3DModel config off diffusers-named weight shapes (heads from metadata or 128-dim)."""
    pe = sd["patch_embedding.weight"]
    inner, in_ch, patch = pe.shape[0], pe.shape[1], tuple(pe.shape[2:])
    layers = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
    stored = read_metadata_json(metadata, "config") or {}
    head_dim = int(stored.get("attention_head_dim", WAN_HEAD_DIM))
    if inner % head_dim:
        raise ModelLoadError(
            f"DiT width {inner} is not a multiple of the head size {head_dim}; store the config in the "
            "file's __metadata__['config'] (attention_head_dim, num_attention_heads)."
        )
    cfg = {
        "patch_size": list(patch),
        "in_channels": in_ch,
        "num_layers": layers,
        "attention_head_dim": head_dim,
        "num_attention_heads": int(stored.get("num_attention_heads", inner // head_dim)),
        "out_channels": sd["proj_out.weight"].shape[0] // (patch[0] * patch[1] * patch[2]),
        "text_dim": sd["condition_embedder.text_embedder.linear_1.weight"].shape[1],
        "freq_dim": sd["condition_embedder.time_embedder.linear_1.weight"].shape[1],
        "ffn_dim": sd["blocks.0.ffn.net.0.proj.weight"].shape[0],
        "cross_attn_norm": "blocks.0.norm2.weight" in sd,
    }
    if "blocks.0.attn2.add_k_proj.weight" in sd:
        cfg["added_kv_proj_dim"] = sd["blocks.0.attn2.add_k_proj.weight"].shape[1]
        cfg["image_dim"] = sd["condition_embedder.image_embedder.norm1.weight"].shape[0]
    if "condition_embedder.image_embedder.pos_embed" in sd:
        cfg["pos_embed_seq_len"] = sd["condition_embedder.image_embedder.pos_embed"].shape[1]
    for key in ("rope_max_seq_len", "eps", "qk_norm"):
        if key in stored:
            cfg[key] = stored[key]
    return cfg


def load_transformer_file(path: str, dtype: torch.dtype) -> torch.nn.Module:
    """Single-file Wan DiT in original / ComfyUI keys (optionally fp8 or scaled fp8) -> diffusers model."""
    from diffusers import WanTransformer3DModel

    sd, metadata = load_safetensors(path, "DiT weights")
    sd = _dequantize_scaled_fp8(_strip_prefix(sd))
    if "head.head.weight" not in sd or "patch_embedding.weight" not in sd:
        raise ModelLoadError(
            f"{path}: not a Wan DiT checkpoint (no head.head / patch_embedding keys; first keys: "
            f"{sorted(sd)[:3]}). Put a Wan2.1/2.2 diffusion model file in models/diffusion_models."
        )
    sd = wan_single_file_converter("transformer")(sd)
    cfg = infer_transformer_config(sd, metadata)
    from accelerate import init_empty_weights

    with init_empty_weights():  # parameters on meta, buffers (RoPE tables) real
        model = WanTransformer3DModel.from_config(cfg)
    keep_fp32 = keep_in_fp32_modules(model)
    typed = {k: v.to(torch.float32 if keep_fp32 & set(k.split(".")) else dtype) for k, v in sd.items()}
    try:
        model.load_state_dict(typed, strict=True, assign=True)
    except RuntimeError as e:
        raise ModelLoadError(f"{path}: weights do not fit the inferred Wan config {cfg} ({str(e)[:400]}).") from e
    return model


def load_vae_file(path: str, dtype: torch.dtype) -> torch.nn.Module:
    """Single-file Wan2.1 VAE (ComfyUI's wan_2.1_vae.safetensors layout) -> diffusers AutoencoderKLWan."""
    from diffusers import AutoencoderKLWan

    sd, _ = load_safetensors(path, "VAE weights")
    if "decoder.middle.0.residual.0.gamma" not in sd:
        raise ModelLoadError(f"{path}: not a Wan VAE checkpoint in original keys (first keys: {sorted(sd)[:3]}).")
    if sd["encoder.conv1.weight"].shape[1] != 3:
        raise ModelLoadError(
            f"{path}: looks like a Wan2.2 VAE; its single-file layout is not supported. Use the "
            "vae/ folder of a Wan2.2 diffusers checkout (or Lucy-Edit-Dev) instead."
        )
    # Wan2.1 layout (dim_mult 1,2,4,4; 2 res blocks), the only one diffusers' converter maps; widths are read off
    cfg = {"base_dim": sd["encoder.conv1.weight"].shape[0], "z_dim": sd["conv1.weight"].shape[0] // 2}
    vae = AutoencoderKLWan(**cfg)
    missing, unexpected = vae.load_state_dict(wan_single_file_converter("vae")(sd), strict=False)
    if missing or unexpected:
        raise ModelLoadError(
            f"{path}: VAE weights do not match the Wan2.1 VAE layout ({len(missing)} missing, "
            f"{len(unexpected)} unexpected keys, e.g. {(missing or unexpected)[:3]})."
        )
    return vae if dtype == torch.float32 else vae.to(dtype)


def _text_encoder_dir(root: Path) -> Path:
    return root / "text_encoder" if (root / "text_encoder").is_dir() else root


def _load_text_encoder(root: Path, dtype: torch.dtype) -> tuple[Optional[torch.nn.Module], object]:
    """UMT5 encoder + tokenizer from `root/text_encoder` + `root/tokenizer`, or a transformers folder itself."""
    from transformers import AutoTokenizer, UMT5EncoderModel

    te_dir = _text_encoder_dir(root)
    tok_dir = root / "tokenizer" if (root / "tokenizer").is_dir() else root
    if not (te_dir / "config.json").is_file():
        return None, None  # an editor folder without a text encoder (e.g. conditioning comes from ComfyUI)
    if not any(te_dir.glob("*.safetensors")):
        raise ModelLoadError(f"{te_dir}: no *.safetensors weights for the text encoder (pickle weights are refused).")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
        encoder = UMT5EncoderModel.from_pretrained(
            str(te_dir), dtype=dtype, use_safetensors=True, local_files_only=True
        )
    except (OSError, ValueError, KeyError) as e:
        raise ModelLoadError(
            f"{te_dir}: cannot load the UMT5 text encoder / tokenizer ({e}). It needs config.json, "
            "*.safetensors and a tokenizer (tokenizer/ beside it or in the same folder)."
        ) from e
    return encoder.eval().requires_grad_(False), tokenizer


EDITOR_INFO_FILE = "viva_editor.json"  # written by `viva pretrain editor`: how the DiT was trained


def _apply_editor_info(editor: Editor, root: Path) -> None:
    """Text padding length and native frame size of a project-trained editor (Wan folders have no such file)."""
    path = root / EDITOR_INFO_FILE
    if not path.is_file():
        return
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        editor.max_text_tokens = int(info.get("max_text_tokens", editor.max_text_tokens))
        size = info.get("native_size")
        editor.native_size = (int(size[0]), int(size[1])) if size else None
    except (OSError, ValueError, TypeError, IndexError) as e:
        raise ModelLoadError(f"{path}: unreadable editor info ({e}). Restore the file from the model release.") from e


SCHEDULER_CONFIG = "scheduler_config.json"  # in scheduler/ of a diffusers folder (Lucy-Edit, Wan2.1/2.2 ship one)
SCHEDULER_SAMPLERS = {"UniPCMultistepScheduler": "unipc", "FlowMatchEulerDiscreteScheduler": "euler"}


def scheduler_defaults(root: Path) -> dict[str, object]:
    """{"shift", "sampler"} as far as `root/scheduler/scheduler_config.json` names them: the sampler from its
    _class_name (UniPCMultistepScheduler -> unipc, FlowMatchEulerDiscreteScheduler -> euler), the shift from UniPC's
    flow_shift (with use_flow_sigmas, as Wan ships it) or FlowMatch's shift (unless use_dynamic_shifting). Other
    schedulers and keys are ignored; no file gives {}. A broken file or shift is a ModelLoadError naming it."""
    path = root / "scheduler" / SCHEDULER_CONFIG
    if not path.is_file():
        return {}
    try:
        config = read_json_object(path, "scheduler config")
    except ModelLoadError as e:
        raise ModelLoadError(f"{e} Or delete {path} to sample with VIVA's defaults (shift, sampler).") from None
    sampler = SCHEDULER_SAMPLERS.get(str(config.get("_class_name")))
    if sampler is None:
        log.info(
            "%s: scheduler %s is not one VIVA reads (%s); using the default shift and sampler.",
            path,
            config.get("_class_name"),
            ", ".join(SCHEDULER_SAMPLERS),
        )
        return {}
    key = {"unipc": "flow_shift", "euler": "shift"}[sampler]
    uses_shift = config.get("use_flow_sigmas") is True if sampler == "unipc" else not config.get("use_dynamic_shifting")
    out: dict[str, object] = {"sampler": sampler}
    if uses_shift and key in config:
        shift = config[key]
        if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not 0 < shift < float("inf"):
            raise ModelLoadError(
                f"{path}: {key} must be a number > 0, got {shift!r}. Fix the value (Wan ships 3.0 "
                "for 480p, 5.0 for 720p) or delete the file to use VIVA's default."
            )
        out["shift"] = float(shift)
    return out


def _check_editor_channels(
    transformer: torch.nn.Module, vae: torch.nn.Module, name: str, allow_t2v: bool, notes: list[str]
) -> torch.nn.Module:
    z, cin, cout = int(vae.config.z_dim), int(transformer.config.in_channels), int(transformer.config.out_channels)
    if cout != z:
        raise ModelLoadError(
            f"{name}: the DiT predicts {cout} latent channels but the VAE has {z}; they are from "
            "different model families (Wan2.1 VAE: 16, Wan2.2 VAE: 48)."
        )
    if cin == 2 * z:
        return transformer
    if cin == z and allow_t2v:
        notes.append(f"T2V base: added {z} zero-initialised source channels (train them with SFT before use)")
        return expand_input_channels(transformer, z)
    if cin == z:
        raise ModelLoadError(
            f"{name}: this DiT takes {cin} input channels = the VAE's z_dim, so it is a plain "
            f"text-to-video model, not an editor (an editor takes {2 * z}: noise + source latents). "
            "Load an editing checkpoint (e.g. Lucy-Edit-Dev), or opt in to zero-initialised source "
            "channels (allow_t2v) to fine-tune it with SFT."
        )
    raise ModelLoadError(
        f"{name}: the DiT takes {cin} input channels; an editor for this VAE takes {2 * z}. "
        "Image-to-video or VACE checkpoints are not editors."
    )


def expand_input_channels(transformer: torch.nn.Module, extra: int) -> torch.nn.Module:
    """Grow patch_embedding by `extra` zero input channels: outputs are unchanged until those weights are trained."""
    old = transformer.patch_embedding
    new = torch.nn.Conv3d(
        old.in_channels + extra,
        old.out_channels,
        old.kernel_size,
        old.stride,
        dtype=old.weight.dtype,
        device=old.weight.device,
    )
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels].copy_(old.weight)
        new.bias.copy_(old.bias)
    transformer.patch_embedding = new
    transformer.register_to_config(in_channels=old.in_channels + extra)
    return transformer


def available_attention_backends() -> list[str]:
    """Attention options usable here: the SDPA family always; flash / sage / flash4 only if their packages are
    installed (flash4 on a CUDA GPU: FA4's kernels are Hopper / Blackwell only)."""
    found = ["sdpa"]
    if torch.cuda.is_available():
        found += ["sdpa_cudnn", "sdpa_flash", "sdpa_efficient"]
    found += [b for b, mod in (("flash", "flash_attn"), ("sage", "sageattention")) if _installed(mod)]
    if torch.cuda.is_available() and _installed(FLASH_ATTN_4_MODULE):
        found.append("flash4")
    return found


def _installed(module: str) -> bool:
    """Whether a module is installed, importing none of it. A top-level name must be a real module or package: FA4
    alone leaves `flash_attn` a bare namespace (no FA2); a dotted name is looked for in its parent's folders."""
    import importlib.util

    top, _, rest = module.partition(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):  # a broken install, or a module object without a spec in sys.modules
        return False
    if spec is None:
        return False
    if not rest:
        return spec.origin is not None
    return any((Path(p) / rest.replace(".", "/")).is_dir() for p in spec.submodule_search_locations or ())


@contextlib.contextmanager
def _quiet(logger_name: str):
    """Drop one library logger's warnings for the duration (its level restored after)."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def configure_dit(t: torch.nn.Module, o: EditorOptions, compute_dtype: torch.dtype) -> None:
    """Attention backend and fp8 weight storage: the DiT options that do not depend on placement."""
    if o.attention not in available_attention_backends():
        raise InputError(
            f"attention '{o.attention}' is not usable here (available: "
            f"{available_attention_backends()}); install its package or pick sdpa."
        )
    # Always set it: diffusers also switches a process-wide default, which a model left unset would inherit
    # from the last editor loaded with another backend (seen on the GPU: flex leaking into the next editor).
    with _quiet("diffusers.models.modeling_utils"):  # its "experimental feature" warning on every load
        set_attention_backend(t, o.attention)  # diffusers' names for them: viva_core.compat
    if o.fp8_storage:
        if not hasattr(torch, "float8_e4m3fn"):
            raise InputError("fp8 weight storage needs torch >= 2.1 with float8 types.")
        t.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=compute_dtype)
        install_fp8_lora_hooks(t)  # LoRAs on fp8 weights run unmerged (lora.applied_loras); before compile


def compile_dit(t: torch.nn.Module, mode: str) -> None:
    """'blocks' compiles the repeated transformer block once (short compile); 'full' the whole DiT, in place so
    module names (LoRA targets) stay the same.

    'blocks' compiles each repeated block's `forward` (the blocks diffusers' `compile_repeated_blocks` picks, one graph
    for all of them), not the module's call as `compile_repeated_blocks` does: hooks that wrap a block's forward later
    then call the compiled forward instead of being traced into it (the step cache's hooks: dynamo cannot trace them
    with fullgraph)."""
    if mode != "off" and torch.cuda.is_available() and not _has_triton():
        raise InputError(
            f"compile '{mode}' on a CUDA machine needs Triton, which is not installed: `pip install triton` "
            "(`triton-windows` on Windows), or use compile off."
        )
    if mode == "blocks":
        names = set(getattr(t, "_repeated_blocks", None) or ())
        blocks = [m for m in t.modules() if type(m).__name__ in names]
        if not blocks:
            raise InputError(
                f"compile 'blocks' needs a DiT that names its repeated blocks; {type(t).__name__} does not."
            )
        for block in blocks:
            block.forward = torch.compile(block.forward, fullgraph=True)
    elif mode == "full":
        t.compile()


def _has_triton() -> bool:
    """Whether torch.compile can build GPU kernels here (inductor's own check; its private home may move)."""
    try:
        from torch.utils._triton import has_triton
    except ImportError:
        return True  # unknown: let torch.compile say what it lacks
    return has_triton()


def uncompile_dit(t: torch.nn.Module) -> None:
    """Undo `compile_dit` (benchmarks compare modes on one DiT)."""
    for m in t.modules():
        if hasattr(m.__dict__.get("forward"), "_torchdynamo_orig_callable"):  # torch.compile's wrapper, not a hook's
            del m.forward
        if getattr(m, "_compiled_call_impl", None) is not None:
            m._compiled_call_impl = None


# Block offload copies each DiT block to the GPU when it is called. "block": synchronously, from pageable host memory;
# "block_prefetch": the next block on a side stream from pinned host memory while the current one computes (diffusers'
# `use_stream`), which pins the whole DiT in host RAM and holds more on the GPU. At the Wan-14B shape (480x832x81, H100,
# bench/RESULTS.md): resident 22.7 s in 42.0 GiB, block 69.2 s in 13.6 GiB, block_prefetch 32.7 s in 23.1 GiB.


def _place(editor: Editor, encode_first: bool = False) -> None:
    """Apply the options once, at load time: DiT options, placement / offload (a host places the parts itself,
    except for block offload, which streams DiT blocks), then compile. With `encode_first` the DiT and VAE of an
    editor kept on the device stay on the CPU until `Editor._finish_placement` (see `load_editor`)."""
    o, t = editor.options, editor.transformer
    configure_dit(t, o, editor.dtype)
    if o.vae_tiling:
        editor.vae.enable_tiling()
    keep_on_device = (o.offload == "none" or editor.device.type == "cpu") and editor.host is None
    target = editor.device if keep_on_device else torch.device("cpu")
    if encode_first and keep_on_device and editor.text_encoder is not None:
        editor.text_encoder.to(target)
        editor.vae.to("cpu")
        t.to("cpu")
        editor.deferred_placement = True
        return
    editor.vae.to(target)
    if editor.text_encoder is not None:
        editor.text_encoder.to(target)
    if o.offload in BLOCK_OFFLOAD_MODES and editor.device.type == "cuda":
        from diffusers.hooks import apply_group_offloading

        apply_group_offloading(
            t,
            onload_device=editor.device,
            offload_device=torch.device("cpu"),
            offload_type="block_level",
            num_blocks_per_group=1,
            **({"use_stream": True, "record_stream": True} if o.offload == "block_prefetch" else {}),
        )
        t._viva_block_offload = True
    else:
        t.to(target)
    compile_dit(t, o.compile)
