"""Trainable parts: a PEFT LoRA on the Wan DiT (diffusers' PeftAdapterMixin), and its export to the
ComfyUI-native file format that `viva_core.lora` reads back."""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Sequence

import torch

from ..errors import InputError
from ..lora import LoraLayer, lora_delta, read_lora
from .config import LORA_TARGETS, LoraConfig

ADAPTER = "default"


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A whole tensor from a possibly FSDP2-sharded one (a collective: every rank must call it)."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def shard_like(value: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """`value` laid out like `param` (a DTensor under FSDP2, else the same tensor on param's device)."""
    if hasattr(param, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(value.to(param.dtype), param.device_mesh, param.placements)
    return value.to(param.device, param.dtype)


def add_lora(transformer: torch.nn.Module, cfg: LoraConfig, *, seed: int = 0) -> list[torch.nn.Parameter]:
    """Inject a trainable LoRA (PEFT) into the DiT's block linears; returns the trainable parameters.

    PEFT initialises lora_B to zero, so the model is unchanged until the first update. Raises when the targets
    match nothing: an empty parameter list would train nothing silently."""
    from peft import LoraConfig as PeftLoraConfig

    transformer.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer.add_adapter(
            PeftLoraConfig(
                r=cfg.rank, lora_alpha=cfg.alpha, init_lora_weights=True, target_modules=LORA_TARGETS[cfg.targets]
            ),
            adapter_name=ADAPTER,
        )
    params = [p for n, p in transformer.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
        p.data = p.data.float()  # LoRA weights train in fp32 whatever the base dtype
    if not params:
        raise InputError(f"LoRA targets {LORA_TARGETS[cfg.targets]} matched no module of the DiT.")
    if cfg.init_from:
        load_lora_into_adapter(transformer, cfg.init_from)
    return params


def remove_lora(transformer: torch.nn.Module) -> None:
    """Undo `add_lora` (and the trainer's `model.compile` and `optim.gradient_checkpointing`): every PEFT layer is
    replaced by its base layer (the original module and Parameters), so a DiT that is used on after training
    (ComfyUI's loaded editor, which training takes uncompiled) is the model it was before."""
    from ..editor import uncompile_dit

    uncompile_dit(transformer)
    if getattr(transformer, "gradient_checkpointing", False):
        transformer.disable_gradient_checkpointing()
    if getattr(transformer, "peft_config", None):
        transformer.unload_lora()
    transformer.requires_grad_(False)


def _peft_modules(transformer: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Module]]:
    for name, module in transformer.named_modules():
        if hasattr(module, "lora_A") and ADAPTER in getattr(module, "lora_A", {}):
            yield name.replace(".base_layer", ""), module


def export_lora(transformer: torch.nn.Module) -> dict[str, LoraLayer]:
    """The adapter as {diffusers module name: LoraLayer} (fp32 copies), ready for `save_lora`."""
    layers = {}
    for name, m in _peft_modules(transformer):
        layers[name] = LoraLayer(
            full_tensor(m.lora_A[ADAPTER].weight.detach()).float().cpu().clone(),
            full_tensor(m.lora_B[ADAPTER].weight.detach()).float().cpu().clone(),
            float(m.lora_alpha[ADAPTER]),
        )
    return layers


def load_lora_into_adapter(transformer: torch.nn.Module, path: str) -> None:
    """Continue training from a LoRA file: copy its A/B into the adapter (rank must match; alpha rescales B)."""
    layers, _, _ = read_lora(path)
    modules = dict(_peft_modules(transformer))
    missing = [n for n in layers if n not in modules]
    if missing:
        raise InputError(
            f"{path}: {len(missing)} LoRA modules are not trained targets here (e.g. {missing[:3]}); "
            "pick lora.targets to match the file."
        )
    with torch.no_grad():
        for name, layer in layers.items():
            m = modules[name]
            if layer.rank != m.lora_A[ADAPTER].weight.shape[0]:
                raise InputError(
                    f"{path}: {name} has rank {layer.rank}, the config asks for "
                    f"{m.lora_A[ADAPTER].weight.shape[0]}; set lora.rank to {layer.rank}."
                )
            own_scale = float(m.lora_alpha[ADAPTER]) / layer.rank
            file_scale = (layer.alpha if layer.alpha is not None else layer.rank) / layer.rank
            m.lora_A[ADAPTER].weight.copy_(shard_like(layer.down, m.lora_A[ADAPTER].weight))
            m.lora_B[ADAPTER].weight.copy_(shard_like(layer.up * (file_scale / own_scale), m.lora_B[ADAPTER].weight))


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """optimizer.state_dict() with FSDP2-sharded moments gathered to whole CPU tensors (collective)."""
    sd = optimizer.state_dict()  # its per-parameter dicts are the optimizer's own: build new ones
    sd["state"] = {
        i: {k: full_tensor(v).cpu() if isinstance(v, torch.Tensor) else v for k, v in st.items()}
        for i, st in sd["state"].items()
    }
    return sd


def load_optimizer_state(optimizer: torch.optim.Optimizer, sd: dict) -> None:
    """Inverse of full_optimizer_state: whole moments are re-sharded like their parameters."""
    optimizer.load_state_dict(sd)
    for p, st in optimizer.state.items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor) and v.shape == p.shape and k != "step":
                st[k] = shard_like(v, p)


@contextlib.contextmanager
def adapter_disabled(transformer: torch.nn.Module) -> Iterator[None]:
    """The reference policy of Edit-GRPO's KL term: the same DiT with the LoRA switched off."""
    transformer.disable_adapters()
    try:
        yield
    finally:
        transformer.enable_adapters()


@contextlib.contextmanager
def lora_cast(params: Sequence[torch.nn.Parameter], dtype: torch.dtype) -> Iterator[None]:
    """The LoRA's weights in `dtype` for a no-grad block (Edit-GRPO's rollouts), its fp32 masters put back unchanged
    after. PEFT casts each adapted linear's input to the LoRA's dtype, so fp32 LoRA weights run the side path in
    fp32 on a bf16 DiT. Raises under autograd: the update must train the masters. Gradients the masters hold are set
    aside meanwhile (a bf16 weight with an fp32 gradient is refused by torch.compile's blocks, `model.compile`)."""
    if torch.is_grad_enabled():
        raise RuntimeError("lora_cast is for no-grad rollouts; the update trains the fp32 masters.")
    masters, grads = [p.data for p in params], [p.grad for p in params]
    try:
        for p in params:
            p.grad = None
            p.data = p.data.to(dtype)
        yield
    finally:
        for p, master, grad in zip(params, masters, grads):
            p.data = master
            p.grad = grad


@contextlib.contextmanager
def lora_merged(transformer: torch.nn.Module) -> Iterator[None]:
    """The LoRA merged into the DiT's weights for a no-grad block (Edit-GRPO's rollouts at a plain DiT's speed: no
    side path), PEFT's adapters switched off meanwhile. Each adapted weight becomes W + (alpha / rank) B @ A, summed
    in fp32 and cast once to W's dtype (`viva_core.lora.lora_delta`, as the LoRA loader merges), after a clone of W that
    is copied back on exit, also on an exception: the update trains on bit-identical weights. Costs a copy of the
    adapted weights (~1.1 GB in bf16 at the Wan-1.3B shape) and, in bf16, the rounding of the merged sum, which the
    first PPO pass sees as a ratio off 1 (bench/bench_train.py measures it)."""
    if torch.is_grad_enabled():
        raise RuntimeError("lora_merged is for no-grad rollouts; the update trains the LoRA's own weights.")
    modules = [m for _, m in _peft_modules(transformer)]
    backups: list[torch.Tensor] = []
    try:
        for m in modules:
            weight = m.base_layer.weight
            backups.append(weight.detach().clone())
            layer = LoraLayer(m.lora_A[ADAPTER].weight, m.lora_B[ADAPTER].weight, float(m.lora_alpha[ADAPTER]))
            weight.copy_((weight.float() + lora_delta(layer, 1.0, device=weight.device)).to(weight.dtype))
        transformer.disable_adapters()
        yield
    finally:
        transformer.enable_adapters()
        for m, backup in zip(modules, backups):
            m.base_layer.weight.copy_(backup)


class _LinearInInputDtype(torch.nn.Linear):
    """A LoRA factor whose fp32 weight (the master an optimizer steps) is cast to its input's dtype on the way in,
    differentiably: the matmul runs in the activations' dtype and the gradient lands on the master in fp32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return torch.nn.functional.linear(x, self.weight.to(x.dtype), bias)


def lora_side_path_in_model_dtype(model: torch.nn.Module) -> int:
    """lora.compute_dtype "model": every PEFT LoRA layer of `model` runs its side path in the activations' dtype (bf16
    in a bf16 DiT) instead of casting its input up to the fp32 LoRA weights, forward and backward: what the rollouts
    compute under `lora_cast`, bit for bit, so training and rollouts agree and the first PPO ratio is exactly 1. The
    weights stay the same fp32 Parameters (names, state dicts, checkpoints, the optimizer unchanged); a class swap of
    the factors, done once, so compiled blocks see one module type. Returns the number of layers switched."""
    switched = 0
    for module in model.modules():
        factors = getattr(module, "lora_A", None)
        if not isinstance(factors, torch.nn.ModuleDict):
            continue
        module.cast_input_dtype_enabled = False  # PEFT's cast of the input to the LoRA weights' dtype
        for name in factors:
            for factor in (module.lora_A[name], module.lora_B[name]):
                if type(factor) is not torch.nn.Linear:
                    raise InputError(f"lora.compute_dtype 'model' needs plain linear LoRA factors, not {type(factor)}.")
                factor.__class__ = _LinearInInputDtype
        switched += 1
    return switched


def trainable_state(transformer: torch.nn.Module, refiner: Optional[torch.nn.Module]) -> dict[str, torch.Tensor]:
    """Everything training changes (LoRA, opt-in source channels, refiner), by stable names, for checkpoints."""
    state = {
        f"dit.{n}": full_tensor(p.detach()).cpu().clone() for n, p in transformer.named_parameters() if p.requires_grad
    }
    if refiner is not None:
        state.update({f"refiner.{k}": v.detach().cpu().clone() for k, v in refiner.state_dict().items()})
    return state


def load_trainable_state(
    transformer: torch.nn.Module, refiner: Optional[torch.nn.Module], state: dict[str, torch.Tensor]
) -> None:
    params = dict(transformer.named_parameters())
    refiner_state = refiner.state_dict() if refiner is not None else {}
    with torch.no_grad():
        for key, value in state.items():
            section, _, name = key.partition(".")
            target = params.get(name) if section == "dit" else refiner_state.get(name)
            if target is None:
                raise InputError(
                    f"checkpoint entry '{key}' has no place in this model; was it made with another "
                    "config (lora.rank, lora.targets, model.train_refiner)?"
                )
            target.copy_(shard_like(value, target))
