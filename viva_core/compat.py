"""The private or version-dependent parts of transformers, diffusers and torch that VIVA uses, in one place.

Library internals (auto-class mapping tables, `_keep_in_fp32_modules`, diffusers' `_native_*` attention names,
`config._attn_implementation`, diffusers' single-file converters) can move or vanish in any release; pyproject.toml
has floors but no upper bounds. Every use goes through this module: each accessor tries the current spelling,
then a public fallback where one exists, and otherwise raises `DependencyError` naming the version needed.
The floors below are those of pyproject.toml (how they were found: docs/dependencies.md).
"""

from __future__ import annotations

import inspect
import logging
from importlib import metadata
from typing import Any, Callable, Optional

import torch

from .errors import VivaError

log = logging.getLogger(__name__)

MIN_TORCH = "2.6"  # torch.distributed.fsdp.fully_shard (FSDP2) public
MIN_TRANSFORMERS = "5.18"  # AutoImageProcessor loads Qwen2-VL's PIL image processor without torchvision
MIN_DIFFUSERS = (
    "0.40"  # set_attention_backend (0.35), UniPC flow-sigma grid as Wan ships it (0.37): docs/dependencies.md
)


class DependencyError(VivaError):
    """An installed library lacks a feature VIVA needs: the message names the package and version to install."""


def installed_version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _needs(package: str, floor: str, what: str) -> DependencyError:
    return DependencyError(
        f"{what} needs {package} >= {floor} (installed: {installed_version(package)}). "
        f'Run: pip install -U "{package}>={floor}"'
    )


# ---------------------------------------------------------------------------------------------- transformers


def image_text_to_text_model_types() -> Optional[frozenset[str]]:
    """The `model_type`s that AutoModelForImageTextToText loads, or None when this transformers does not say
    (callers then skip the up-front check and let loading report the problem)."""
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

        return frozenset(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)
    except ImportError:
        pass
    try:  # the public lazy mapping: config classes -> model classes
        from transformers import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING

        return frozenset(getattr(c, "model_type", None) for c in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING.keys())
    except Exception as e:  # any failure means "unknown": never a crash here
        log.info("transformers does not list its image-text-to-text models (%s); folder check skipped", e)
        return None


def processor_class_for(config: Any) -> type:
    """The multimodal processor class (e.g. Qwen2_5_VLProcessor) that AutoProcessor builds for `config`."""
    try:
        from transformers.models.auto.processing_auto import PROCESSOR_MAPPING

        return PROCESSOR_MAPPING[type(config)]
    except (ImportError, KeyError):
        pass
    import transformers  # fallback by naming convention: Qwen2_5_VLConfig -> Qwen2_5_VLProcessor

    name = type(config).__name__
    cls = getattr(transformers, name[: -len("Config")] + "Processor", None) if name.endswith("Config") else None
    if cls is None:
        raise _needs("transformers", MIN_TRANSFORMERS, f"finding the processor class of {name}")
    return cls


def qwen2_vl_pil_image_processor() -> type:
    """Qwen2VLImageProcessorPil: Qwen2-VL's image processor on PIL/numpy (the default one needs torchvision)."""
    try:
        from transformers import Qwen2VLImageProcessorPil

        return Qwen2VLImageProcessorPil
    except ImportError:
        pass
    try:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        return Qwen2VLImageProcessorPil
    except ImportError:
        raise _needs("transformers", MIN_TRANSFORMERS, "the PIL Qwen2-VL image processor") from None


def attn_implementation(config: Any) -> Optional[str]:
    """The attention implementation a transformers (sub-)config asks for ("sdpa", "eager", ...), or None."""
    return getattr(config, "_attn_implementation", None)


def set_attn_implementation(config: Any, name: str) -> None:
    """Make a transformers (sub-)config's modules use the attention registered as `name` (AttentionInterface).
    Set on the config because the modules read it there at every forward."""
    if not hasattr(config, "_attn_implementation"):
        raise _needs("transformers", MIN_TRANSFORMERS, "choosing the attention implementation of a loaded model")
    config._attn_implementation = name


# ---------------------------------------------------------------------------------------------------- diffusers

# Our attention options -> diffusers' AttentionBackendName values. The SDPA-kernel ones are private (_native_*).
ATTENTION_BACKEND_NAMES = {
    "sdpa": "native",
    "sdpa_cudnn": "_native_cudnn",
    "sdpa_flash": "_native_flash",
    "sdpa_efficient": "_native_efficient",
    "flash": "flash",
    "sage": "sage",
    "flash4": "flash_4_hub",
}
# The FA4 package's import name: its CuTe DSL kernels (Hopper and Blackwell) live under the flash_attn namespace,
# beside (not inside) FA2's flash_attn package.
FLASH_ATTN_4_MODULE = "flash_attn.cute"


def _diffusers_backend_names() -> Optional[frozenset[str]]:
    try:
        from diffusers.models.attention_dispatch import AttentionBackendName
    except ImportError:
        return None
    return frozenset(b.value for b in AttentionBackendName)


def diffusers_attention_backend(option: str) -> str:
    """diffusers' backend name for one of our attention options. When this diffusers no longer knows a private
    `_native_*` kernel name, plain "native" SDPA is used (torch then picks the kernel itself), with a warning."""
    name = ATTENTION_BACKEND_NAMES[option]
    known = _diffusers_backend_names()
    if known is None or name in known:
        return name
    if option.startswith("sdpa_") and "native" in known:
        log.warning(
            "diffusers %s has no attention backend '%s'; using plain SDPA for '%s'",
            installed_version("diffusers"),
            name,
            option,
        )
        return "native"
    raise _needs("diffusers", MIN_DIFFUSERS, f"attention '{option}' (diffusers backend '{name}')")


def set_attention_backend(model: torch.nn.Module, option: str) -> None:
    """Set a diffusers model's attention backend from one of our options (ATTENTION_BACKEND_NAMES' keys)."""
    if not hasattr(model, "set_attention_backend"):
        raise _needs("diffusers", MIN_DIFFUSERS, "choosing the DiT's attention backend")
    if option == "flash4":
        _set_flash_attn_4(model)
        return
    model.set_attention_backend(diffusers_attention_backend(option))


def _flash_attn_4_func() -> Callable:
    """FA4's attention (B, S, H, D) from the locally installed `flash-attn-4` package, as the custom ops
    torch.ops.viva.flash_attn_4 and its backward: dynamo cannot trace FA4's CuTe DSL launcher, and an opaque op keeps a
    compiled block one graph, at inference and in training alike."""
    import importlib

    global _FA4_INTERFACE
    try:  # importing the interface imports the package above it
        _FA4_INTERFACE = importlib.import_module(FLASH_ATTN_4_MODULE + ".interface")
    except Exception as e:  # an ImportError, or the CuTe DSL failing to load its CUDA libraries
        raise DependencyError(
            f"attention 'flash4' needs the flash-attn-4 package (pip install flash-attn-4, or \"flash-attn-4[cu13]\" "
            f"with a CUDA 13 torch) and a Hopper or Blackwell GPU; importing {FLASH_ATTN_4_MODULE} failed: "
            f"{type(e).__name__}: {e}"
        ) from e
    op = _flash_attn_4_op()

    def attention(q, k, v, softmax_scale=None, causal=False):
        if causal:
            raise ValueError("attention 'flash4' is wired for non-causal attention (Wan's) only")
        return op(q, k, v, -1.0 if softmax_scale is None else float(softmax_scale))[0]

    return attention


# FA4's module holding _flash_attn_fwd / _flash_attn_bwd (what its own autograd function calls; 4.0.0b40's
# signatures), and the ops registered once a process around them
_FA4_INTERFACE: Any = None
_FA4_OP: Optional[Callable] = None


def _fa4_scale(scale: float) -> Optional[float]:
    return None if scale < 0 else scale  # ops take no Optional float: -1 stands for FA4's default 1/sqrt(d)


def _flash_attn_4_op() -> Callable:
    """torch.ops.viva.flash_attn_4 (q, k, v, scale) -> (out, lse), differentiable in q, k, v through
    torch.ops.viva.flash_attn_4_backward; both with fake kernels, so torch.compile sees their shapes."""
    global _FA4_OP
    if _FA4_OP is not None:
        return _FA4_OP

    @torch.library.custom_op("viva::flash_attn_4", mutates_args=())
    def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        out, lse = _FA4_INTERFACE._flash_attn_fwd(q, k, v, softmax_scale=_fa4_scale(scale), return_lse=True)[:2]
        return out, lse

    @forward.register_fake
    def _(q, k, v, scale):
        batch, tokens, heads = q.shape[:3]
        return q.new_empty(q.shape[:-1] + v.shape[-1:]), q.new_empty((batch, heads, tokens), dtype=torch.float32)

    @torch.library.custom_op("viva::flash_attn_4_backward", mutates_args=())
    def backward_op(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        out: torch.Tensor,
        grad_out: torch.Tensor,
        lse: torch.Tensor,
        scale: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dq, dk, dv = _FA4_INTERFACE._flash_attn_bwd(q, k, v, out, grad_out, lse, _fa4_scale(scale))[:3]
        return dq, dk, dv

    @backward_op.register_fake
    def _(q, k, v, out, grad_out, lse, scale):
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)

    def setup_context(ctx, inputs, output):
        q, k, v, scale = inputs
        ctx.save_for_backward(q, k, v, *output)
        ctx.scale = scale

    def backward(ctx, grad_out, grad_lse):  # the lse is an internal output: its gradient is never used
        q, k, v, out, lse = ctx.saved_tensors
        return (*backward_op(q, k, v, out, grad_out.contiguous(), lse, ctx.scale), None)

    forward.register_autograd(backward, setup_context=setup_context)
    _FA4_OP = forward
    return forward


def _set_flash_attn_4(model: torch.nn.Module) -> None:
    """diffusers reaches FA4 only as a kernel fetched from the Hub (`flash_4_hub`, through the `kernels` package,
    remote code); its dispatch function calls the registered `kernel_fn`, so the installed package's function is
    registered there and each attention processor pointed at that backend, as `set_attention_backend` does after
    its `kernels` check."""
    try:
        from diffusers.models.attention_dispatch import (
            _HUB_KERNELS_REGISTRY,
            AttentionBackendName,
            _AttentionBackendRegistry,
        )

        backend = AttentionBackendName(ATTENTION_BACKEND_NAMES["flash4"])
        config = _HUB_KERNELS_REGISTRY[backend]
    except (ImportError, ValueError, KeyError, AttributeError):
        raise _needs("diffusers", "0.42", "attention 'flash4' (diffusers backend 'flash_4_hub')") from None
    config.kernel_fn = _flash_attn_4_func()
    for module in model.modules():
        processor = getattr(module, "processor", None)
        if processor is not None and hasattr(processor, "_attention_backend"):
            processor._attention_backend = backend
    _AttentionBackendRegistry.set_active_backend(backend)


# Wan's own list (diffusers 0.35): used when a diffusers release drops the private class attribute.
_WAN_KEEP_IN_FP32 = ("time_embedder", "scale_shift_table", "norm1", "norm2", "norm3")


def keep_in_fp32_modules(model: torch.nn.Module) -> frozenset[str]:
    """Names of the sub-modules diffusers keeps in fp32 whatever the load dtype (`_keep_in_fp32_modules`)."""
    names = getattr(model, "_keep_in_fp32_modules", None)
    if names is None:
        names = _WAN_KEEP_IN_FP32 if type(model).__name__ == "WanTransformer3DModel" else ()
    return frozenset(names)


def wan_single_file_converter(part: str) -> Callable[[dict], dict]:
    """diffusers' converter from an original / ComfyUI Wan state dict to diffusers keys; part: "transformer" or
    "vae" (diffusers.loaders.single_file_utils, an internal module)."""
    try:
        from diffusers.loaders import single_file_utils
    except ImportError:
        raise _needs("diffusers", MIN_DIFFUSERS, "loading single-file Wan weights") from None
    fn = getattr(single_file_utils, f"convert_wan_{part}_to_diffusers", None)
    if fn is None:
        raise _needs("diffusers", MIN_DIFFUSERS, f"converting a single-file Wan {part}")
    return fn


def invalidate_hook_registries(model: torch.nn.Module) -> None:
    """Make diffusers rebuild its list of the hook registries under `model` (`HookRegistry._get_child_registries`
    caches it at the first `cache_context`). diffusers >= 0.42 does this itself when a cache is enabled or disabled
    (`invalidate_child_registries_cache`); 0.40 and 0.41 keep the stale list, so hooks added to modules that had no
    registry when the list was built (a step cache after a LucyEditPipeline run, say) would never get the cache
    context ("No context is set")."""
    from diffusers.hooks import HookRegistry

    registry = HookRegistry.check_if_exists_or_initialize(model)
    if hasattr(registry, "invalidate_child_registries_cache"):
        registry.invalidate_child_registries_cache()
        return
    for module in model.modules():  # the same on 0.40 / 0.41: every registry's cached list dropped
        if hasattr(module, "_diffusers_hook"):
            module._diffusers_hook._child_registries_cache = None


# -------------------------------------------------------------------------------------------------------- torch


def fully_shard() -> Callable:
    """torch's FSDP2 `fully_shard` (public in torch.distributed.fsdp since torch 2.6)."""
    try:
        from torch.distributed.fsdp import fully_shard as fn
    except ImportError:
        raise _needs("torch", MIN_TORCH, 'FSDP training (optim.parallel = "fsdp")') from None
    return fn


def qwen2_vl_position_ids(model: torch.nn.Module, inputs) -> Optional[torch.Tensor]:
    """For a Qwen2-VL / Qwen2.5-VL model: the M-RoPE position ids [3, B, L] its forward computes when given none,
    computed from host copies of the ids, image grids and attention mask, on the device of the ids. transformers
    loops in Python over every image grid of the batch (1,536 in a judge training step), which on a GPU is a run of
    tiny device operations and syncs (docs/small_models.md, section 31). None where this transformers has no
    `compute_3d_position_ids` taking these inputs: the forward then computes them itself."""
    inner = getattr(model, "model", None)
    compute = getattr(inner, "compute_3d_position_ids", None)
    if compute is None or getattr(model.config, "model_type", None) not in ("qwen2_vl", "qwen2_5_vl"):
        return None
    params = inspect.signature(compute).parameters
    if not {"input_ids", "image_grid_thw", "attention_mask"} <= params.keys():
        return None
    host = {
        k: inputs[k].cpu()
        for k in ("input_ids", "image_grid_thw", "attention_mask", "mm_token_type_ids")
        if k in inputs
    }
    wanted = {**host, "video_grid_thw": None, "inputs_embeds": None, "cache": None, "past_key_values": None}
    positions = compute(**{k: v for k, v in wanted.items() if k in params})
    return None if positions is None else positions.to(inputs["input_ids"].device)


def qwen2_vl_vision(model: torch.nn.Module) -> Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    """For a Qwen2-VL / Qwen2.5-VL model: pixel_values, image_grid_thw -> the merged image embeddings [tokens, H]
    the language model receives (what its forward scatters into the image-token positions); None for other
    models (Qwen3-VL adds deepstack features, so its images cannot be fed as plain input embeddings)."""
    inner = getattr(model, "model", None)
    visual = getattr(inner, "visual", None)
    if getattr(model.config, "model_type", None) not in ("qwen2_vl", "qwen2_5_vl") or visual is None:
        return None

    def embed(pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        from .vision_attention import vision_indices  # imported here: vision_attention imports this module

        out = visual(pixel_values.type(visual.dtype), grid_thw=grid_thw, **vision_indices(visual, grid_thw))
        return getattr(out, "pooler_output", out)  # transformers >= 5.x returns a ModelOutput, older a tensor

    return embed
