"""Our models under ComfyUI's model management: adapter glue between viva_core's `ModelHost` hook and ComfyUI.

Every part (the editor's DiT, VAE and UMT5, a VLM, a token refiner) is held by a `comfy.model_patcher.ModelPatcher`,
so `comfy.model_management.load_models_gpu` puts it on the GPU right before it runs (offloading other models when
memory is short), ComfyUI offloads it when another model needs the memory, and "Unload models" (POST /free) frees
it, as for native models. LoRAs become ModelPatcher weight patches built by ComfyUI's own LoRA code
(`comfy.lora.load_lora`, what its LoraLoader uses), on a clone of the DiT's patcher; ComfyUI restores the original
weights (bit-exact backups) when the model unloads or another clone of it loads. README (Nodes: "Memory, LoRAs,
previews, interrupt") says what was measured.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
from typing import Iterator, Optional, Sequence

import comfy.latent_formats
import comfy.lora
import comfy.model_management as mm
import comfy.model_patcher
import latent_preview
import torch

from ..viva_core.editor import BLOCK_OFFLOAD_MODES, Editor
from ..viva_core.errors import InputError
from ..viva_core.lora import FP8_DTYPES, LoraSpec, read_lora
from ..viva_core.preview import preview_rgb_factors
from ..viva_core.train.adapters import remove_lora

PATCHER_ATTR = "_viva_patcher"  # the base ModelPatcher of a part, kept on the part itself (dies with it)
LORA_CLONES_KEPT = 8  # patched DiT clones a host keeps (one per LoRA stack seen), least recently used dropped


class HeldPart(torch.nn.Module):
    """What a ModelPatcher holds: one of our parts as its only child, `part`.

    ComfyUI writes `device` and its bookkeeping attributes (`model_loaded_weight_memory`, ...) onto the model it
    manages; diffusers and transformers models refuse `device` (a read-only property there), so the part is
    wrapped. Patch keys are therefore `part.<module>.weight`."""

    def __init__(self, part: torch.nn.Module, device: torch.device) -> None:
        super().__init__()
        self.part = part
        self.device = device


_HELD_CLASSES: dict[str, type] = {}


def _held_class(part: torch.nn.Module) -> type:
    """A HeldPart subclass named after the part (`VivaWanTransformer3DModel`), since ComfyUI's log names what it
    loads by class ("Requested to load VivaWanTransformer3DModel")."""
    name = "Viva" + type(part).__name__
    if name not in _HELD_CLASSES:
        _HELD_CLASSES[name] = type(name, (HeldPart,), {"__doc__": f"{type(part).__name__} held for ComfyUI."})
    return _HELD_CLASSES[name]


def patcher_for(
    part: torch.nn.Module, load_device: torch.device, offload_device: torch.device
) -> comfy.model_patcher.ModelPatcher:
    """The part's base ModelPatcher, made on first use; the part must be on `offload_device` then."""
    patcher = getattr(part, PATCHER_ATTR, None)
    if patcher is None:
        patcher = comfy.model_patcher.ModelPatcher(_held_class(part)(part, offload_device), load_device, offload_device)
        object.__setattr__(part, PATCHER_ATTR, patcher)  # a plain attribute, not a submodule or buffer
    return patcher


def load_whole(patcher: comfy.model_patcher.ModelPatcher) -> None:
    """Load a part onto its device whole, through ComfyUI's registry. Whole, because ComfyUI streams the weights of
    a partially loaded model only through its own layer classes (comfy.ops); ours would meet CPU weights. Under
    --novram ComfyUI still asks for a partial load, so the rest is loaded at once after it."""
    mm.load_models_gpu([patcher], force_full_load=True)
    if patcher.loaded_size() < patcher.model_size():
        patcher.partially_load(patcher.load_device, extra_memory=patcher.model_size() + 1)


def lora_patches(spec: LoraSpec) -> dict:
    """One LoRA file as ComfyUI weight patches for a held DiT: our reader (every key format, alpha rules) gives the
    layers; ComfyUI's `comfy.lora.load_lora` turns them into its LoRA adapters keyed `part.<module>.weight`."""
    layers, _, _ = read_lora(spec.path)
    sd: dict[str, torch.Tensor] = {}
    for name, layer in layers.items():
        sd[f"{name}.lora_up.weight"], sd[f"{name}.lora_down.weight"] = layer.up, layer.down
        if layer.alpha is not None:
            sd[f"{name}.alpha"] = torch.tensor(float(layer.alpha))
    return comfy.lora.load_lora(sd, {name: f"part.{name}.weight" for name in layers}, log_missing=False)


def _lora_key(loras: Sequence[LoraSpec]) -> tuple:
    """A LoRA stack's identity, file contents included (a retrained file of the same name is new patches)."""
    key = []
    for s in loras:
        if s.strength != 0:
            st = os.stat(s.path)
            key.append((s.path, st.st_mtime_ns, st.st_size, float(s.strength)))
    return tuple(key)


class ComfyHost:
    """viva_core's ModelHost backed by ComfyUI's model management, for one loaded editor or VLM (and the refiners
    used with it). `dit` is the editor's DiT, the one part that takes LoRAs."""

    def __init__(
        self,
        load_device: torch.device,
        offload_device: torch.device,
        dit: Optional[torch.nn.Module] = None,
        dit_load_device: Optional[torch.device] = None,
    ) -> None:
        self.load_device, self.offload_device = load_device, offload_device
        self.dit, self.dit_load_device = dit, dit_load_device or load_device
        self._clones: collections.OrderedDict[tuple, comfy.model_patcher.ModelPatcher] = collections.OrderedDict()

    def base_patcher(self, part: torch.nn.Module) -> comfy.model_patcher.ModelPatcher:
        device = self.dit_load_device if part is self.dit else self.load_device
        return patcher_for(part, device, self.offload_device)

    def patcher(self, part: torch.nn.Module, loras: Sequence[LoraSpec] = ()) -> comfy.model_patcher.ModelPatcher:
        """The patcher that runs `part`: for the DiT with LoRAs a clone carrying them as patches (cached)."""
        base = self.base_patcher(part)
        key = _lora_key(loras) if part is self.dit else ()
        if not key:
            return base
        clone = self._clones.pop(key, None)
        if clone is None:
            clone = base.clone()
            for spec in loras:
                if spec.strength != 0:
                    clone.add_patches(lora_patches(spec), float(spec.strength))
        self._clones[key] = clone
        while len(self._clones) > LORA_CLONES_KEPT:
            self._clones.popitem(last=False)
        return clone

    def load(self, part: torch.nn.Module, loras: Sequence[LoraSpec] = ()) -> bool:
        """Load `part` through ComfyUI. LoRAs on fp8-stored DiT weights are left to the core's unmerged side path
        (lora.applied_loras): ComfyUI would round W + dW back to fp8 and lose a small LoRA."""
        if part is self.dit and loras and _has_fp8_weights(part):
            load_whole(self.base_patcher(part))
            return False
        load_whole(self.patcher(part, loras))
        return True


def _has_fp8_weights(module: torch.nn.Module) -> bool:
    return any(p.dtype in FP8_DTYPES for p in module.parameters())


def editor_host(editor: Editor) -> ComfyHost:
    """The host of a freshly loaded editor (viva_core.editor.load_editor's `host`). With block offload the DiT's
    blocks are streamed by diffusers, so ComfyUI keeps the DiT on the CPU (it still patches LoRAs and unloads)."""
    block = editor.options.offload in BLOCK_OFFLOAD_MODES and editor.device.type == "cuda"
    offload = mm.unet_offload_device()
    return ComfyHost(editor.device, offload, dit=editor.transformer, dit_load_device=offload if block else None)


@contextlib.contextmanager
def lent_for_training(editor: Editor) -> Iterator[Editor]:
    """The graph's loaded editor for a training run instead of a second copy. ComfyUI first unloads every model
    (ours leave the GPU with their LoRA patches undone); the trainer then gets the same modules on the device, out of
    ComfyUI's registry (nothing else runs while a prompt trains). After the run, also after an error, the DiT
    loses the trainer's LoRA layers and the parts go back to the offload device, where the host loads them from."""
    o = editor.options
    if editor.loras:
        raise InputError(
            "loaded_editor: connect VIVA Load Editor directly, not through a LoRA loader (training "
            "starts from the base weights)."
        )
    if o.fp8_storage or o.offload in BLOCK_OFFLOAD_MODES or o.compile != "off":
        raise InputError(
            "loaded_editor: training needs the editor loaded with fp8_storage off, offload none or "
            f"model, compile off (it has fp8_storage {o.fp8_storage}, offload {o.offload}, "
            f"compile {o.compile}); load it so, or disconnect loaded_editor."
        )
    mm.unload_all_models()
    mm.soft_empty_cache()
    parts = [p for p in (editor.transformer, editor.vae, editor.text_encoder) if p is not None]
    try:
        for part in parts:
            usable_by_autograd(part)
            part.to(editor.device)
        yield dataclasses.replace(editor, host=None)
    finally:
        remove_lora(editor.transformer)
        for part in parts:
            part.eval().to(mm.unet_offload_device())
        mm.soft_empty_cache()


def usable_by_autograd(module: torch.nn.Module) -> None:
    """ComfyUI runs nodes under torch.inference_mode, so a model loaded by a node holds inference tensors, which
    autograd refuses to save for backward ("Inference tensors cannot be saved for backward"): the training forward
    through the frozen base weights needs them. Each is replaced by a normal copy (same values), one at a time."""
    with torch.inference_mode(False), torch.no_grad():
        for m in module.modules():
            for name, p in list(m.named_parameters(recurse=False)):
                if p.is_inference():
                    setattr(m, name, torch.nn.Parameter(p.clone(), requires_grad=p.requires_grad))
            for name, b in list(m.named_buffers(recurse=False)):
                if b is not None and b.is_inference():
                    m._buffers[name] = b.clone()


def vlm_host() -> ComfyHost:
    return ComfyHost(mm.get_torch_device(), mm.text_encoder_offload_device())


class VivaLatentFormat(comfy.latent_formats.LatentFormat):
    """The latent format of a VAE that ships its own latent -> RGB projection (viva_core.preview: the bundled small
    VAE's vae/latent_rgb.json). Only what the previewer reads: video latents [B, C, T, H, W] of `latent_channels`
    channels, Latent2RGB factors and bias, and no TAESD decoder (so `--preview-method taesd` also falls back to
    Latent2RGB). Our latents are already normalized by the sampler, so process_in/out stay the identity."""

    latent_dimensions = 3

    def __init__(self, factors: list[list[float]], bias: list[float]) -> None:
        self.latent_channels = len(factors)
        self.latent_rgb_factors, self.latent_rgb_factors_bias = factors, bias
        self.taesd_decoder_name = None


def latent_format(editor: Editor) -> Optional[comfy.latent_formats.LatentFormat]:
    """The format whose factors preview the editor's latents: the VAE's own (VivaLatentFormat) when it has them,
    else ComfyUI's for the Wan2.1 (z 16) / Wan2.2 (z 48) VAE spaces, else None."""
    own = preview_rgb_factors(editor)
    if own is not None:
        return VivaLatentFormat(*own)
    fmt = {16: comfy.latent_formats.Wan21, 48: comfy.latent_formats.Wan22}.get(editor.z_dim)
    return fmt() if fmt is not None else None


def previewer(editor: Editor) -> Optional[latent_preview.LatentPreviewer]:
    """ComfyUI's latent previewer for the editor's latents, as its samplers pick it (`--preview-method`; None when
    previews are off or there are no factors for the latent space). The sampler's progress hands it the predicted
    clean latents as [1, z, T', H', W'] (ComfyUI's video layout); Latent2RGB shows the first latent frame."""
    fmt = latent_format(editor)
    return latent_preview.get_previewer(editor.device, fmt) if fmt is not None else None
