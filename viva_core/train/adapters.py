"""Trainable parts: a PEFT LoRA on the Wan DiT (diffusers' PeftAdapterMixin), and its export to the
ComfyUI-native file format that `viva_core.lora` reads back."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator, Optional

import torch

from ..errors import InputError
from ..lora import LoraLayer, read_lora, save_lora
from .config import LORA_TARGETS, LoraConfig

ADAPTER = "default"


def add_lora(transformer: torch.nn.Module, cfg: LoraConfig, *, seed: int = 0) -> list[torch.nn.Parameter]:
    """Inject a trainable LoRA (PEFT) into the DiT's block linears; returns the trainable parameters.

    PEFT initialises lora_B to zero, so the model is unchanged until the first update. Raises when the targets
    match nothing: an empty parameter list would train nothing silently."""
    from peft import LoraConfig as PeftLoraConfig

    transformer.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer.add_adapter(PeftLoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, init_lora_weights=True,
                                               target_modules=LORA_TARGETS[cfg.targets]), adapter_name=ADAPTER)
    params = [p for n, p in transformer.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
        p.data = p.data.float()  # LoRA weights train in fp32 whatever the base dtype
    if not params:
        raise InputError(f"LoRA targets {LORA_TARGETS[cfg.targets]} matched no module of the DiT.")
    if cfg.init_from:
        load_lora_into_adapter(transformer, cfg.init_from)
    return params


def _peft_modules(transformer: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Module]]:
    for name, module in transformer.named_modules():
        if hasattr(module, "lora_A") and ADAPTER in getattr(module, "lora_A", {}):
            yield name.replace(".base_layer", ""), module


def export_lora(transformer: torch.nn.Module) -> dict[str, LoraLayer]:
    """The adapter as {diffusers module name: LoraLayer} (fp32 copies), ready for `save_lora`."""
    layers = {}
    for name, m in _peft_modules(transformer):
        layers[name] = LoraLayer(m.lora_A[ADAPTER].weight.detach().float().cpu().clone(),
                                 m.lora_B[ADAPTER].weight.detach().float().cpu().clone(),
                                 float(m.lora_alpha[ADAPTER]))
    return layers


def load_lora_into_adapter(transformer: torch.nn.Module, path: str) -> None:
    """Continue training from a LoRA file: copy its A/B into the adapter (rank must match; alpha rescales B)."""
    layers, _, _ = read_lora(path)
    modules = dict(_peft_modules(transformer))
    missing = [n for n in layers if n not in modules]
    if missing:
        raise InputError(f"{path}: {len(missing)} LoRA modules are not trained targets here (e.g. {missing[:3]}); "
                         "pick lora.targets to match the file.")
    with torch.no_grad():
        for name, layer in layers.items():
            m = modules[name]
            if layer.rank != m.lora_A[ADAPTER].weight.shape[0]:
                raise InputError(f"{path}: {name} has rank {layer.rank}, the config asks for "
                                 f"{m.lora_A[ADAPTER].weight.shape[0]}; set lora.rank to {layer.rank}.")
            own_scale = float(m.lora_alpha[ADAPTER]) / layer.rank
            file_scale = (layer.alpha if layer.alpha is not None else layer.rank) / layer.rank
            m.lora_A[ADAPTER].weight.copy_(layer.down)
            m.lora_B[ADAPTER].weight.copy_(layer.up * (file_scale / own_scale))


def save_trained_lora(transformer: torch.nn.Module, path: str | Path, metadata: dict) -> Path:
    return save_lora(path, export_lora(transformer), metadata=metadata)


@contextlib.contextmanager
def adapter_disabled(transformer: torch.nn.Module) -> Iterator[None]:
    """The reference policy of Edit-GRPO's KL term: the same DiT with the LoRA switched off."""
    transformer.disable_adapters()
    try:
        yield
    finally:
        transformer.enable_adapters()


def trainable_state(transformer: torch.nn.Module, refiner: Optional[torch.nn.Module]) -> dict[str, torch.Tensor]:
    """Everything training changes (LoRA, opt-in source channels, refiner), by stable names, for checkpoints."""
    state = {f"dit.{n}": p.detach().cpu().clone() for n, p in transformer.named_parameters() if p.requires_grad}
    if refiner is not None:
        state.update({f"refiner.{k}": v.detach().cpu().clone() for k, v in refiner.state_dict().items()})
    return state


def load_trainable_state(transformer: torch.nn.Module, refiner: Optional[torch.nn.Module],
                         state: dict[str, torch.Tensor]) -> None:
    params = dict(transformer.named_parameters())
    refiner_state = refiner.state_dict() if refiner is not None else {}
    with torch.no_grad():
        for key, value in state.items():
            section, _, name = key.partition(".")
            target = params.get(name) if section == "dit" else refiner_state.get(name)
            if target is None:
                raise InputError(f"checkpoint entry '{key}' has no place in this model; was it made with another "
                                 "config (lora.rank, lora.targets, model.train_refiner)?")
            target.copy_(value)
