"""GPU memory each real model needs (issue 14 item 8): random weights at the real shapes, built directly on the GPU
(bf16 weights, the VAE in fp32: the editor's default `vae_dtype` until it became bf16 on GPUs; the release-text rows
take the default), run through this repo's own code paths, peak GPU memory measured per run.

Models (the configs below copy the config.json of the repo named beside each):
  lucy     Lucy-Edit-Dev: Wan2.2-TI2V-5B DiT with in 96 / out 48 channels, Wan2.2 VAE (z 48, 16x space), UMT5-XXL
  wan1.3b  Wan2.1-T2V-1.3B-shaped editor: DiT in 32 / out 16, Wan2.1 VAE (z 16, 8x space), the same UMT5-XXL
  qwen7b / qwen3b  Qwen2.5-VL-7B / -3B-Instruct, as the judge

Measurements (`--only a,b,...`; default: lucy, lucy-offload-model, lucy-release-text, wan1.3b, judge-7b, judge-3b):
  lucy, wan1.3b                 one full edit, `offload=none`: DiT, VAE and text encoder all resident on the GPU
  lucy-release-text, wan1.3b-release-text   what `viva edit` runs (issue 13 target 3): `offload=none` loaded with
                                `encode_first`, the VAE in the default `vae_dtype` (bf16 on a GPU); the prompt and
                                the negative are encoded with only UMT5 on the GPU, `Editor.release_text_encoder()`
                                drops it and places the DiT and VAE, then the edit runs with the negative given
  lucy-offload-model, wan1.3b-offload-model   `offload=model`: each part visits the GPU only while it runs
  lucy-offload-block, wan1.3b-offload-block   `offload=block`: DiT blocks streamed from the CPU, VAE / UMT5 visit
  wan14b-release-text, wan14b-offload-block    the Wan2.1-14B shape (28.6 GB of bf16 DiT), resident and block-offloaded
                                (run them in this order: the block run leaves its hooks on the DiT)
  wan14b-offload-block-prefetch  `offload=block_prefetch`: the next block copied on a side stream from pinned host
                                memory while the current one runs
  judge-7b, judge-3b            viva_core.judge.Judge(...).score of one (source, edit) pair, defaults (4 frames of
                                each, max_side 448, the four questions as one batch)
For each `offload=none` edit a derived row gives the peak without the text encoder on the GPU (conditioning from
ComfyUI's CLIP Text Encode, or UMT5 run elsewhere): the run's peak outside the text phase minus the UMT5 weights (the
allocations are otherwise the same, so that is exact for `peak_alloc`).

An edit is what the CLI and the Edit node run: `Editor.encode_text(prompt)` + `viva_core.pipeline.edit` (which
encodes the empty prompt as CFG's negative), at 480x832, 81 frames, CFG 5 (the default), UniPC, 2 steps. The peak
does not depend on the step count: every step is the same DiT call on tensors of the same shapes, and UniPC keeps
two latent-sized tensors (6 MiB here). Peaks per phase (text encoder, VAE encode, sampling, VAE decode) are printed
too. The editor is assembled from the in-memory parts exactly as `load_editor` assembles the loaded ones (channel
check, `Editor(...)`, `_place`), and the judge's VLM as `load_vlm` wraps a loaded model; `--via-folder` instead
saves each model as a folder under --tmp and runs the real `load_editor` / `load_vlm` (slower: ~22 GB written for
Lucy). The tokenizers are small stand-ins (no download); UMT5 always sees 512 padded tokens, and the Qwen prompt
tokenizes to somewhat more text tokens than Qwen's own tokenizer would (the ~1,150 image tokens dominate).

Prints one JSON line per measurement (model, what, resolution, frames, peak_alloc_gib, peak_reserved_gib,
seconds, ...) as it goes, then a markdown table. `--shape tiny` runs the same code paths on tiny configs on the CPU
(memory n/a): the test of this script (tests/test_real_memory.py).

    PYTHONPATH=. python bench/real_memory.py                      # on the GPU, ~3 min
    PYTHONPATH=. python bench/real_memory.py --only lucy,judge-7b
    PYTHONPATH=. python bench/real_memory.py --shape tiny
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import shutil
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

from bench_dit import WAN_1_3B  # noqa: E402
from tiny_editor import TEXT_DIM as TINY_TEXT_DIM  # noqa: E402
from tiny_editor import TINY_UMT5, tiny_tokenizer  # noqa: E402
from tiny_vlm import TINY_TEXT, TINY_VISION  # noqa: E402

GIB = 2**30

# ---- real shapes ---------------------------------------------------------------------------------------------
# decart-ai/Lucy-Edit-Dev transformer/config.json: the Wan-AI/Wan2.2-TI2V-5B-Diffusers DiT with in_channels 96
# (noise + source latents) instead of 48.
LUCY_DIT = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=24,
    attention_head_dim=128,
    in_channels=96,
    out_channels=48,
    text_dim=4096,
    freq_dim=256,
    ffn_dim=14336,
    num_layers=30,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    rope_max_seq_len=1024,
)
# Wan-AI/Wan2.1-T2V-14B-Diffusers transformer/config.json as an editor: the 1.3B editor shape (in 32 / out 16) at the
# 14B's width (40 heads x 128 = 5120), FFN and depth; its other fields are diffusers' defaults, as in both configs.
WAN_14B = dict(WAN_1_3B, num_attention_heads=40, ffn_dim=13824, num_layers=40)
# decart-ai/Lucy-Edit-Dev vae/config.json = Wan-AI/Wan2.2-TI2V-5B-Diffusers vae/config.json (the Wan2.2 VAE). The
# latents' mean/std are placeholders (48 zeros / ones): they scale values, not memory.
WAN22_VAE = dict(
    base_dim=160,
    decoder_base_dim=256,
    z_dim=48,
    dim_mult=[1, 2, 4, 4],
    num_res_blocks=2,
    attn_scales=[],
    temperal_downsample=[False, True, True],
    is_residual=True,
    in_channels=12,
    out_channels=12,
    patch_size=2,
    scale_factor_spatial=16,
    scale_factor_temporal=4,
    latents_mean=[0.0] * 48,
    latents_std=[1.0] * 48,
)
# Wan-AI/Wan2.1-T2V-1.3B-Diffusers vae/config.json: diffusers' AutoencoderKLWan defaults are exactly it.
WAN21_VAE: dict = {}
# Wan-AI/Wan2.1-T2V-1.3B-Diffusers and Wan2.2-TI2V-5B-Diffusers text_encoder/config.json (google/umt5-xxl's encoder).
UMT5_XXL = dict(
    vocab_size=256384,
    d_model=4096,
    d_kv=64,
    d_ff=10240,
    num_layers=24,
    num_heads=64,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    feed_forward_proj="gated-gelu",
    tie_word_embeddings=False,
)
# Qwen/Qwen2.5-VL-7B-Instruct config.json.
QWEN_7B = dict(
    text=dict(
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        max_position_embeddings=128000,
        rms_norm_eps=1e-6,
        rope_parameters=dict(rope_type="default", rope_theta=1e6, mrope_section=[16, 24, 24]),
    ),
    vision=dict(
        depth=32,
        hidden_size=1280,
        intermediate_size=3420,
        num_heads=16,
        out_hidden_size=3584,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        fullatt_block_indexes=[7, 15, 23, 31],
        tokens_per_second=2,
    ),
    tie_word_embeddings=False,
)
# Qwen/Qwen2.5-VL-3B-Instruct config.json (same vision tower, projected to 2048; tied embeddings).
QWEN_3B = dict(
    text=dict(
        vocab_size=151936,
        hidden_size=2048,
        intermediate_size=11008,
        num_hidden_layers=36,
        num_attention_heads=16,
        num_key_value_heads=2,
        max_position_embeddings=128000,
        rms_norm_eps=1e-6,
        rope_parameters=dict(rope_type="default", rope_theta=1e6, mrope_section=[16, 24, 24]),
    ),
    vision=dict(QWEN_7B["vision"], out_hidden_size=2048),
    tie_word_embeddings=True,
)
# Qwen/Qwen2.5-VL-*-Instruct preprocessor_config.json (the judge's max_side 448 keeps images far below max_pixels).
QWEN_PIXELS = dict(min_pixels=3136, max_pixels=12845056)

# ---- tiny shapes (the CPU check): the sizes of tests/tiny_editor.py and tests/tiny_vlm.py -------------------------
TINY_DIT = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=16,
    in_channels=32,
    out_channels=16,
    text_dim=TINY_TEXT_DIM,
    freq_dim=32,
    ffn_dim=64,
    num_layers=2,
    rope_max_seq_len=64,
)
TINY_VAE = dict(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True])
TINY_QWEN = dict(
    text=dict(TINY_TEXT),
    vision=dict(TINY_VISION),
    tie_word_embeddings=False,
)

SHAPES = {
    "real": {
        "lucy": dict(
            label="Lucy-Edit-Dev (Wan2.2-5B DiT, Wan2.2 VAE, UMT5-XXL)", dit=LUCY_DIT, vae=WAN22_VAE, te=UMT5_XXL
        ),
        "wan1.3b": dict(
            label="Wan2.1-1.3B editor (in 32/out 16, Wan2.1 VAE, UMT5-XXL)", dit=WAN_1_3B, vae=WAN21_VAE, te=UMT5_XXL
        ),
        "wan14b": dict(
            label="Wan2.1-14B-shaped editor (in 32/out 16, Wan2.1 VAE, UMT5-XXL)",
            dit=WAN_14B,
            vae=WAN21_VAE,
            te=UMT5_XXL,
        ),
        "qwen7b": dict(label="Qwen2.5-VL-7B-Instruct", vlm=QWEN_7B),
        "qwen3b": dict(label="Qwen2.5-VL-3B-Instruct", vlm=QWEN_3B),
        "video": (81, 480, 832),
    },
    "tiny": {
        "lucy": dict(
            label="tiny Lucy-shaped (in 96/out 48, Wan2.2-style VAE)",
            dit=dict(TINY_DIT, in_channels=96, out_channels=48),
            vae=dict(
                TINY_VAE,
                base_dim=16,
                z_dim=48,
                is_residual=True,
                in_channels=12,
                out_channels=12,
                patch_size=2,
                scale_factor_spatial=16,
                latents_mean=[0.0] * 48,
                latents_std=[1.0] * 48,
            ),
            te=TINY_UMT5,
        ),
        "wan1.3b": dict(label="tiny Wan2.1-shaped", dit=TINY_DIT, vae=TINY_VAE, te=TINY_UMT5),
        "wan14b": dict(label="tiny Wan2.1-shaped (14B's stand-in)", dit=TINY_DIT, vae=TINY_VAE, te=TINY_UMT5),
        "qwen7b": dict(label="tiny Qwen2.5-VL", vlm=TINY_QWEN),
        "qwen3b": dict(label="tiny Qwen2.5-VL (tied)", vlm=dict(TINY_QWEN, tie_word_embeddings=True)),
        "video": (5, 32, 32),
    },
}


@dataclass(frozen=True)
class Measurement:
    name: str
    model: str  # key of SHAPES[shape]
    what: str  # "edit" | "judge"
    offload: str = "none"
    release_text: bool = False  # the `viva edit` flow: load with encode_first, encode, release the text encoder
    vae_dtype: str = "fp32"  # the rows before the bf16 default keep the fp32 VAE they were measured with


MEASUREMENTS = {
    m.name: m
    for m in (
        Measurement("lucy", "lucy", "edit"),
        Measurement("lucy-offload-model", "lucy", "edit", "model"),
        Measurement("lucy-release-text", "lucy", "edit", release_text=True, vae_dtype="auto"),
        Measurement(
            "lucy-offload-block", "lucy", "edit", "block"
        ),  # last of its model: the block hooks stay on the DiT
        Measurement("wan1.3b", "wan1.3b", "edit"),
        Measurement("wan1.3b-offload-model", "wan1.3b", "edit", "model"),
        Measurement("wan1.3b-release-text", "wan1.3b", "edit", release_text=True, vae_dtype="auto"),
        Measurement("wan1.3b-offload-block", "wan1.3b", "edit", "block"),
        # issue 13 target 3: the 14B shape within 24 GiB with block offload, its time against the resident edit
        Measurement("wan14b-release-text", "wan14b", "edit", release_text=True, vae_dtype="auto"),
        Measurement("wan14b-offload-block", "wan14b", "edit", "block", vae_dtype="auto"),
        Measurement("wan14b-offload-block-prefetch", "wan14b", "edit", "block_prefetch", vae_dtype="auto"),
        Measurement("judge-7b", "qwen7b", "judge"),
        Measurement("judge-3b", "qwen3b", "judge"),
    )
}
DEFAULT_ONLY = "lucy,lucy-offload-model,lucy-release-text,wan1.3b,judge-7b,judge-3b"
PROMPT = "make the ball red"  # words the stand-in UMT5 tokenizer knows
INSTRUCTION = "Make the ball red."


# ---- building models on the device --------------------------------------------------------------------------------


def build_dit(cfg: dict, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The Wan DiT built on `device` (fp32 init there, then cast), dtypes as `from_pretrained(torch_dtype=dtype)`
    leaves them: diffusers' `_keep_in_fp32_modules` (time embedder, norms, scale-shift tables) stay fp32."""
    from diffusers import WanTransformer3DModel

    with torch.device(device):
        model = WanTransformer3DModel(**cfg)
    keep = set(model._keep_in_fp32_modules or ())
    for name, p in model.named_parameters():
        p.data = p.data.to(torch.float32 if keep & set(name.split(".")) else dtype)
    return model.eval().requires_grad_(False)


def build_vae(cfg: dict, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    from diffusers import AutoencoderKLWan

    with torch.device(device):
        vae = AutoencoderKLWan(**cfg)
    return (vae if dtype == torch.float32 else vae.to(dtype)).eval().requires_grad_(False)


def build_text_encoder(cfg: dict, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import UMT5Config, UMT5EncoderModel

    with torch.device(device):
        model = UMT5EncoderModel._from_config(UMT5Config(**cfg), dtype=dtype)
    return model.eval().requires_grad_(False)


def qwen_tokenizer():
    """The byte-level BPE stand-in of tests/tiny_vlm.py with Qwen's special tokens and chat template."""
    from tiny_vlm import _build_tokenizer

    return _build_tokenizer(512)


def build_vlm_model(spec: dict, tokenizer, device: torch.device, dtype: torch.dtype):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = {
        t: tokenizer.convert_tokens_to_ids(t)
        for t in ("<|endoftext|>", "<|im_end|>", "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
    }
    config = Qwen2_5_VLConfig(
        text_config=dict(
            spec["text"],
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(spec["vision"]),
        tie_word_embeddings=spec["tie_word_embeddings"],
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype)
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    return model.eval().requires_grad_(False)


def write_vlm_files(folder: Path, model, tokenizer) -> Path:
    """Everything of a VLM folder but the weights: config, tokenizer + chat template, image preprocessor."""
    try:  # as tests/tiny_vlm.py writes it (no torchvision needed)
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    except ImportError:  # a transformers without the PIL backends
        from transformers import Qwen2VLImageProcessor as Qwen2VLImageProcessorPil

    from viva_core.train.pretrain import save_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(folder)
    save_tokenizer(tokenizer, folder)
    Qwen2VLImageProcessorPil(**QWEN_PIXELS).save_pretrained(folder)
    return folder


def vlm_in_memory(model, folder: Path, device: torch.device, dtype: torch.dtype):
    """What `viva_core.vlm.load_vlm` does with the model `from_pretrained` returned, on this model."""
    from viva_core.vision_attention import use_packed_vision_attention
    from viva_core.vlm import VLM, _load_processor

    model.requires_grad_(False)
    model.eval().to(device)
    use_packed_vision_attention(model)
    return VLM(model=model, processor=_load_processor(folder), path=str(folder), device=device, dtype=dtype)


def editor_in_memory(parts: dict, options, name: str, encode_first: bool = False):
    """What `viva_core.editor.load_editor` does with the parts it loaded (channel check, Editor, placement). With
    offload or `encode_first` the parts start on the CPU, as `from_pretrained` leaves them (else `encode_first`
    would find the DiT already on the GPU). A VAE of another dtype than `options.vae_dtype` asks for is a cast copy
    (the parts are shared by the runs)."""
    import copy

    from viva_core.editor import Editor, _check_editor_channels, _place, vae_dtype_for
    from viva_core.runtime import parse_device, parse_dtype

    if options.offload != "none" or encode_first:
        for key in ("dit", "vae", "te"):
            parts[key].to("cpu")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    device = parse_device(options.device)
    dtype = parse_dtype(options.dtype, device)
    vae_dtype = vae_dtype_for(options.vae_dtype, dtype, device)
    vae = parts["vae"]
    if next(vae.parameters()).dtype != vae_dtype:
        vae = copy.deepcopy(vae).to(vae_dtype)
    notes: list[str] = []
    dit = _check_editor_channels(parts["dit"], vae, name, options.allow_t2v, notes)
    editor = Editor(dit, vae, parts["te"], parts["tokenizer"], options, name, device, dtype, notes=notes)
    _place(editor, encode_first)
    return editor


def save_editor_folder(parts: dict, folder: Path) -> Path:
    parts["dit"].save_pretrained(folder / "transformer")
    parts["vae"].save_pretrained(folder / "vae")
    parts["te"].save_pretrained(folder / "text_encoder")
    parts["tokenizer"].save_pretrained(folder / "tokenizer")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "LucyEditPipeline"}))
    return folder


def nbytes(module: Optional[torch.nn.Module]) -> int:
    if module is None:
        return 0
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


# ---- measuring -------------------------------------------------------------------------------------------------


class Peaks:
    """Peak allocated / reserved bytes over one run, and the peak of each phase: the peak counters are reset at
    every phase edge, so the run's peak is the max over the pieces. On the CPU everything stays None."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.alloc = self.reserved = 0
        self.phases: dict[str, int] = {}

    def cut(self) -> int:
        if not self.cuda:
            return 0
        torch.cuda.synchronize()
        a, r = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
        torch.cuda.reset_peak_memory_stats()
        self.alloc, self.reserved = max(self.alloc, a), max(self.reserved, r)
        return a

    @contextlib.contextmanager
    def phase(self, name: str):
        self.cut()
        try:
            yield
        finally:
            self.phases[name] = max(self.phases.get(name, 0), self.cut())


class DeviceUsed(threading.Thread):
    """Polls torch.cuda.mem_get_info every 10 ms: the peak of what the whole process holds on the device (CUDA
    context, allocator cache, libraries' workspaces), i.e. what nvidia-smi shows."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        dev = torch.cuda.current_device()
        while not self._stop_event.is_set():
            free, total = torch.cuda.mem_get_info(dev)
            self.peak = max(self.peak, total - free)
            time.sleep(0.01)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        free, total = torch.cuda.mem_get_info()
        return max(self.peak, total - free)


_ACTIVE: list[Peaks] = []


@contextlib.contextmanager
def phase_hooks():
    """Wrap the edit's phases (module globals `viva_core.pipeline.edit` calls, and Editor.encode_text) so that each
    records its peak in the active Peaks; behaviour is unchanged, and the originals come back on exit."""
    import viva_core.editor as editor_mod
    import viva_core.pipeline as pipeline

    def wrap(fn: Callable, phase: str) -> Callable:
        def inner(*a, **k):
            if not _ACTIVE:
                return fn(*a, **k)
            with _ACTIVE[-1].phase(phase):
                return fn(*a, **k)

        return inner

    saved = [
        (editor_mod.Editor, "release_text_encoder", "release"),  # drop UMT5, place the DiT and VAE (encode_first)
        (pipeline, "encode_frames", "vae_encode"),
        (pipeline, "sample", "sampling"),
        (pipeline, "decode_latents", "vae_decode"),
        (editor_mod.Editor, "encode_text", "text_encoder"),
    ]
    originals = [getattr(owner, attr) for owner, attr, _ in saved]
    for (owner, attr, phase), fn in zip(saved, originals):
        setattr(owner, attr, wrap(fn, phase))
    try:
        yield
    finally:
        for (owner, attr, _), fn in zip(saved, originals):
            setattr(owner, attr, fn)


@dataclass
class Row:
    measurement: str
    model: str
    what: str
    resolution: str
    frames: int
    peak_alloc_gib: Optional[float] = None
    peak_reserved_gib: Optional[float] = None
    device_used_peak_gib: Optional[float] = None  # mem_get_info view (includes the CUDA context)
    resident_before_gib: Optional[float] = None  # allocated when the run started (weights placed on the GPU)
    weights_gib: dict = field(default_factory=dict)  # bytes of each part, wherever it sits
    phases_gib: dict = field(default_factory=dict)
    seconds: float = 0.0
    load_seconds: float = 0.0
    note: str = ""


def gib(x: Optional[int]) -> Optional[float]:
    return None if x is None else round(x / GIB, 2)


def without_text_encoder(row: Row, te_gib: float) -> Row:
    """The peak of an `offload=none` edit had its conditioning come from elsewhere: the largest phase peak outside
    the text encoder's, less the UMT5 weights that were resident through all of them."""
    rest = max(v for k, v in row.phases_gib.items() if k != "text_encoder")
    return Row(
        row.measurement + " (no UMT5 on GPU)",
        row.model,
        "edit, offload=none, conditioning given (derived: peak outside the text phase - UMT5 weights)",
        row.resolution,
        row.frames,
        peak_alloc_gib=round(rest - te_gib, 2),
        weights_gib=dict(row.weights_gib, te=0.0),
    )


def measure(row: Row, fn: Callable[[], object], cuda: bool) -> Row:
    from viva_core.errors import NonFiniteError

    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        row.resident_before_gib = gib(torch.cuda.memory_allocated())
        poll = DeviceUsed()
        poll.start()
    peaks = Peaks(cuda)
    _ACTIVE.append(peaks)
    t0 = time.perf_counter()
    try:
        fn()
    except NonFiniteError as e:  # random weights; the peak was reached before the check (phase peaks show where)
        row.note = f"non-finite output with random weights (peak still measured): {str(e)[:120]}"
    except torch.cuda.OutOfMemoryError as e:
        row.note = f"OUT OF MEMORY: {str(e)[:200]}"
    finally:
        _ACTIVE.pop()
        peaks.cut()
        row.seconds = round(time.perf_counter() - t0, 1)
        row.phases_gib = {k: gib(v) if cuda else None for k, v in peaks.phases.items()}
        if cuda:
            row.device_used_peak_gib = gib(poll.stop())
            row.peak_alloc_gib, row.peak_reserved_gib = gib(peaks.alloc), gib(peaks.reserved)
    print(json.dumps(row.__dict__), flush=True)
    return row


# ---- the runs ------------------------------------------------------------------------------------------------


class Runner:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.shape = SHAPES[args.shape]
        self.cuda = args.shape == "real"
        self.device = torch.device("cuda" if self.cuda else "cpu")
        self.dtype_name = "bf16" if self.cuda else "fp32"
        self.dtype = torch.bfloat16 if self.cuda else torch.float32
        self.frames_n, self.height, self.width = (
            args.frames or self.shape["video"][0],
            args.height or self.shape["video"][1],
            args.width or self.shape["video"][2],
        )
        self.tmp = Path(args.tmp) if args.tmp else Path(tempfile.mkdtemp(prefix="viva_real_memory_"))
        self.parts: dict[str, dict] = {}
        self.te_cache: dict[str, torch.nn.Module] = {}
        self.folders: dict[str, Path] = {}
        self.rows: list[Row] = []
        g = torch.Generator().manual_seed(0)
        self.video = torch.rand(self.frames_n, self.height, self.width, 3, generator=g)

    def row(self, m: Measurement) -> Row:
        from viva_core.editor import vae_dtype_for

        vae = str(vae_dtype_for(m.vae_dtype, self.dtype, self.device)).removeprefix("torch.")
        edit = f", offload={m.offload}, VAE {vae}" + (
            ", encode first + release text encoder (the `viva edit` flow)" if m.release_text else ""
        )
        return Row(
            m.name,
            self.shape[m.model]["label"],
            f"{m.what}" + (edit if m.what == "edit" else ", 1 pair, 4+4 frames"),
            f"{self.height}x{self.width}",
            self.frames_n,
        )

    def build(self, what: str, fn: Callable[[], object]):
        t0 = time.perf_counter()
        out = fn()
        if self.cuda:
            torch.cuda.synchronize()
        print(
            json.dumps(
                {
                    "built": what,
                    "seconds": round(time.perf_counter() - t0, 1),
                    "gib": gib(nbytes(out) if isinstance(out, torch.nn.Module) else None),
                }
            ),
            flush=True,
        )
        return out

    def text_encoder(self, model: str) -> torch.nn.Module:
        spec = self.shape[model]
        key = json.dumps(spec["te"], sort_keys=True)
        if key not in self.te_cache:  # Lucy and Wan2.1 share UMT5-XXL: built once (again after a release run)
            self.te_cache[key] = self.build(
                "UMT5 text encoder", lambda: build_text_encoder(spec["te"], self.device, self.dtype)
            )
        return self.te_cache[key]

    def drop_text_encoder(self) -> None:
        """Forget the built text encoder(s), so that an editor's release_text_encoder frees the last reference."""
        self.te_cache.clear()
        for parts in self.parts.values():
            parts.pop("te", None)

    def editor_parts(self, model: str) -> dict:
        """The parts (built once per model, reused by its runs), with their sizes; with --via-folder only the
        folder they were saved to and their sizes (the built copies are dropped: load_editor loads its own)."""
        if model in self.parts and "te" not in self.parts[model] and not self.args.via_folder:
            self.parts[model]["te"] = self.text_encoder(model)  # a release run dropped it
        if model not in self.parts:
            spec = self.shape[model]
            te = self.text_encoder(model)
            parts = dict(
                dit=self.build(f"{model} DiT", lambda: build_dit(spec["dit"], self.device, self.dtype)),
                vae=self.build(f"{model} VAE", lambda: build_vae(spec["vae"], self.device, torch.float32)),
                te=te,
                tokenizer=tiny_tokenizer(),
            )
            sizes = {k: gib(nbytes(parts[k])) for k in ("dit", "vae", "te")}
            if self.args.via_folder:
                self.folders[model] = self.build(f"{model} folder", lambda: save_editor_folder(parts, self.tmp / model))
                parts = {}
                self.te_cache.clear()
                gc.collect()
                if self.cuda:
                    torch.cuda.empty_cache()
            self.parts[model] = dict(parts, sizes=sizes)
        return self.parts[model]

    def run_edit(self, m: Measurement) -> Row:
        from viva_core.conditioning import negative_conditioning
        from viva_core.editor import BLOCK_OFFLOAD_MODES, Conditioning, EditorOptions, load_editor
        from viva_core.pipeline import edit
        from viva_core.settings import EditSettings

        parts = self.editor_parts(m.model)
        options = EditorOptions(
            dtype=self.dtype_name, device=str(self.device), offload=m.offload, vae_dtype=m.vae_dtype
        )
        row = self.row(m)
        row.weights_gib = parts["sizes"]
        if m.offload in BLOCK_OFFLOAD_MODES and "dit" in parts:  # built on the GPU; block offload streams it from the
            parts["dit"].to("cpu")  # host, where load_editor leaves a block-offloaded DiT
            gc.collect()
            if self.cuda:
                torch.cuda.empty_cache()
        t0 = time.perf_counter()
        if self.args.via_folder:
            editor = load_editor(str(self.folders[m.model]), options=options, encode_first=m.release_text)
        else:
            editor = editor_in_memory(dict(parts), options, m.model, encode_first=m.release_text)
        if m.release_text:
            self.drop_text_encoder()
            parts = None
            te_alive = weakref.ref(editor.text_encoder)
        row.load_seconds = round(time.perf_counter() - t0, 1)
        settings = EditSettings(steps=self.args.steps, seed=0)  # CFG, shift, sampler: the defaults

        def one_edit():
            cond = (
                editor.encode_text(PROMPT)
                if editor.text_encoder is not None
                else Conditioning(torch.zeros(1, 8, editor.text_dim), "zeros")
            )
            negative = None
            if m.release_text:  # as cli.cmd_edit: the negative before the release, then the edit without UMT5
                negative = negative_conditioning(editor, "")
                editor.release_text_encoder()
                gc.collect()
                assert te_alive() is None, "something still holds the text encoder: its release freed nothing"
            out = edit(editor, self.video, cond, negative=negative, settings=settings, fps=16.0)
            assert out.frames.shape == self.video.shape, (out.frames.shape, self.video.shape)

        measure(row, one_edit, self.cuda)
        self.rows.append(row)
        if m.offload == "none" and not m.release_text and row.peak_alloc_gib is not None and not row.note:
            derived = without_text_encoder(row, row.weights_gib["te"])
            print(json.dumps(derived.__dict__), flush=True)
            self.rows.append(derived)
        editor = None  # frees it before the next run (one_edit's cell is this variable)
        if m.offload == "block":  # group offloading hooks stay on the DiT: build it again if it is needed again
            self.parts.pop(m.model, None)
        return row

    def run_judge(self, m: Measurement) -> Row:
        from viva_core.judge import Judge
        from viva_core.vlm import load_vlm

        spec = self.shape[m.model]
        tokenizer = qwen_tokenizer()
        model = self.build(f"{m.model} VLM", lambda: build_vlm_model(spec["vlm"], tokenizer, self.device, self.dtype))
        folder = write_vlm_files(self.tmp / m.model, model, tokenizer)
        row = self.row(m)
        row.weights_gib = {"vlm": gib(nbytes(model))}
        t0 = time.perf_counter()
        if self.args.via_folder:
            self.build(f"{m.model} folder", lambda: model.save_pretrained(folder))
            del model
            gc.collect()
            if self.cuda:
                torch.cuda.empty_cache()
            vlm = load_vlm(folder, dtype=self.dtype_name, device=str(self.device))
        else:
            vlm = vlm_in_memory(model, folder, self.device, self.dtype)
            del model
        row.load_seconds = round(time.perf_counter() - t0, 1)
        judge = Judge(vlm)
        edited = self.video.flip(-1)
        result: dict = {}
        measure(row, lambda: result.update(r=judge.score(self.video, edited, INSTRUCTION, num_frames=4)), self.cuda)
        if "r" in result:
            assert set(result["r"].scores) == {"EA", "PC", "GN", "GR"}
        self.rows.append(row)
        judge = vlm = None
        return row

    def free(self, keep_models: set[str]) -> None:
        for model in [k for k in self.parts if k not in keep_models]:
            del self.parts[model]
        if not any(self.shape[k].get("te") for k in keep_models):
            self.te_cache.clear()
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()

    def run(self, names: list[str]) -> list[Row]:
        todo = [MEASUREMENTS[n] for n in MEASUREMENTS if n in names]  # the fixed order: parts are reused, then freed
        with phase_hooks():
            for i, m in enumerate(todo):
                self.free({t.model for t in todo[i:] if t.what == "edit"})
                (self.run_edit if m.what == "edit" else self.run_judge)(m)
        self.free(set())
        return self.rows


def table(rows: list[Row], cuda: bool, device: str) -> str:
    def f(x):
        return "n/a" if x is None else f"{x:.1f}"

    lines = [
        f"GPU: {device}; bf16 weights (the VAE's dtype in `what`); peak over one whole run; `resident` = allocated "
        "when it started (weights already on the GPU)."
        if cuda
        else "CPU check (--shape tiny): memory n/a.",
        "",
        "| measurement | model | what | resolution | frames | weights GiB (DiT / VAE / UMT5 or VLM) | resident "
        "GiB | peak alloc GiB | peak reserved GiB | peak device used GiB | phase peaks GiB (text / enc / "
        "sample / dec) | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        w = " / ".join(f(v) for v in r.weights_gib.values())
        ph = (
            " / ".join(f(r.phases_gib.get(k)) for k in ("text_encoder", "vae_encode", "sampling", "vae_decode"))
            if r.phases_gib
            else ""
        )
        lines.append(
            f"| {r.measurement} | {r.model} | {r.what} | {r.resolution} | {r.frames} | {w} | "
            f"{f(r.resident_before_gib)} | {f(r.peak_alloc_gib)} | {f(r.peak_reserved_gib)} | "
            f"{f(r.device_used_peak_gib)} | {ph} | {r.seconds:.0f} |" + (f" {r.note}" if r.note else "")
        )
    return "\n".join(lines)


def parse(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=sorted(SHAPES), default="real")
    p.add_argument("--only", default=DEFAULT_ONLY, help=f"comma-separated, or 'all'; of {', '.join(MEASUREMENTS)}")
    p.add_argument(
        "--via-folder",
        action="store_true",
        help="save each model as a folder and load it with load_editor / load_vlm (slower)",
    )
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--frames", type=int, default=0, help="0: 81 (tiny: 5)")
    p.add_argument("--height", type=int, default=0, help="0: 480 (tiny: 32)")
    p.add_argument("--width", type=int, default=0, help="0: 832 (tiny: 32)")
    p.add_argument(
        "--tmp",
        default=None,
        help="folder for the processor / model folders (default: a new one in /tmp, removed at the end)",
    )
    args = p.parse_args(argv)
    args.names = chosen(p, args.only, MEASUREMENTS, "measurement(s)", args.shape)
    return args


def chosen(p: argparse.ArgumentParser, value: str, registry: dict, what: str, shape: str) -> list[str]:
    """The names in a comma list ("all": every one) that the registry knows (else a usage error naming them); the
    real shapes need a GPU. Shared with bench_edit.py."""
    names = list(registry) if value == "all" else [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in registry]
    if unknown:
        p.error(f"unknown {what} {unknown}; choose from {list(registry)}")
    if shape == "real" and not torch.cuda.is_available():
        p.error("--shape real needs a CUDA GPU (use --shape tiny for the CPU check)")
    return names


def main(argv: Optional[list[str]] = None) -> list[Row]:
    args = parse(argv)
    runner = Runner(args)
    t0 = time.perf_counter()
    device = torch.cuda.get_device_name() if runner.cuda else "cpu"
    try:
        rows = runner.run(args.names)
    finally:
        if not args.tmp:
            shutil.rmtree(runner.tmp, ignore_errors=True)
    print(f"\n{table(rows, runner.cuda, device)}\n\ntotal {time.perf_counter() - t0:.0f} s", flush=True)
    return rows


if __name__ == "__main__":
    main()
