"""LoRA files for the Wan DiT: read any common format, report how its keys match, merge, restore, write.

The DiT is diffusers' ``WanTransformer3DModel``; inside the library every LoRA layer is keyed by the
diffusers module name (``blocks.0.attn1.to_q``). Files come in four key styles (``format`` below):

=========  ======================================================================  ===========================
format     example key                                                             written by
=========  ======================================================================  ===========================
comfyui    ``diffusion_model.blocks.0.self_attn.q.lora_A.weight`` (+ ``.alpha``;   ComfyUI, original Wan
           ``lora_down``/``lora_up`` too; the prefix may be missing)               trainers, **save_lora**
kohya      ``lora_unet_blocks_0_self_attn_q.lora_down.weight`` (+ ``.alpha``;      musubi-tuner, kohya
           ``lycoris_`` prefix too)
diffusers  ``transformer.blocks.0.attn1.to_q.lora_A.weight`` (prefix optional)     diffusers
peft       ``base_model.model.blocks.0.attn1.to_q.lora_A.default.weight``          PEFT ``state_dict()``
=========  ======================================================================  ===========================

The scale of a layer is ``alpha / rank`` where the file gives alpha (a ``.alpha`` tensor; for diffusers and
PEFT files also ``lora_alpha`` / ``alpha_pattern`` from diffusers' ``lora_adapter_metadata`` or a PEFT
``adapter_config.json`` beside the file). Without alpha the scale is 1, which is what ComfyUI does (and what
PEFT does when ``lora_alpha == r``).

Original Wan names and diffusers names are related by ONE table, ``WAN_NAME_TABLE``, used for reading
(comfyui, kohya) and writing (``save_lora``); it agrees with diffusers' own converters
(``_convert_non_diffusers_wan_lora_to_diffusers``, ``convert_wan_transformer_to_diffusers``).
Kohya names are the original names with ``.`` -> ``_`` behind ``lora_unet_``; they are resolved by matching
the whole name against the table (so ``cross_attn_k`` and ``cross_attn_k_img`` never get confused), never
by guessing where the dots were. Behind the other prefixes a name is read as original when the table knows
it and as diffusers otherwise (the two name sets do not overlap). Keys of other kinds (``.diff``, ``.diff_b``,
DoRA scales, half pairs, LoKr/LoHa) are never applied and are listed by ``key_report``.

Applying: ``applied_loras`` merges a LoRA stack into the ``nn.Linear`` weights for the duration of a
``with`` block (delta in fp32, added to an fp32 copy of the weight, cast back) and copies the backed-up
originals back on exit, so the model is bit-identical afterwards, also after an exception. Layers whose
weights are stored in fp8 (``fp8_storage``) are not merged: they get an unmerged side path
``y += (x @ A^T) @ B^T`` in the compute dtype (see ``applied_loras`` for why).

Writing: ``save_lora`` writes the ComfyUI-native format, which ComfyUI loads directly and diffusers loads
through its Wan converter (tested with ``WanPipeline.lora_state_dict`` + ``load_lora_adapter``).
"""

from __future__ import annotations

import collections
import functools
import json
import math
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch

from .errors import InputError, LoraError, ModelLoadError
from .safe_io import check_safetensors_path, load_safetensors, read_json_object, save_safetensors_atomic

__all__ = [
    "WAN_NAME_TABLE",
    "LoraSpec",
    "LoraLayer",
    "LoraKeyReport",
    "wan_to_diffusers",
    "diffusers_to_wan",
    "lora_target_names",
    "read_lora",
    "key_report",
    "lora_delta",
    "applied_loras",
    "save_lora",
    "install_fp8_lora_hooks",
]

FILE_FORMAT = "viva-lora-v1"

# ---------------------------------------------------------------------------------------------------------
# The one name table: (original Wan / ComfyUI module, diffusers WanTransformer3DModel module); {i} = block.
# Source: diffusers loaders/single_file_utils.py convert_wan_transformer_to_diffusers and
# loaders/lora_conversion_utils.py _convert_non_diffusers_wan_lora_to_diffusers (0.42.1).
# Only nn.Linear modules: patch_embedding (Conv3d) and norms are not LoRA targets here.
# ---------------------------------------------------------------------------------------------------------
WAN_NAME_TABLE: tuple[tuple[str, str], ...] = (
    ("blocks.{i}.self_attn.q", "blocks.{i}.attn1.to_q"),
    ("blocks.{i}.self_attn.k", "blocks.{i}.attn1.to_k"),
    ("blocks.{i}.self_attn.v", "blocks.{i}.attn1.to_v"),
    ("blocks.{i}.self_attn.o", "blocks.{i}.attn1.to_out.0"),
    ("blocks.{i}.cross_attn.q", "blocks.{i}.attn2.to_q"),
    ("blocks.{i}.cross_attn.k", "blocks.{i}.attn2.to_k"),
    ("blocks.{i}.cross_attn.v", "blocks.{i}.attn2.to_v"),
    ("blocks.{i}.cross_attn.o", "blocks.{i}.attn2.to_out.0"),
    ("blocks.{i}.cross_attn.k_img", "blocks.{i}.attn2.add_k_proj"),  # I2V / FLF2V
    ("blocks.{i}.cross_attn.v_img", "blocks.{i}.attn2.add_v_proj"),
    ("blocks.{i}.ffn.0", "blocks.{i}.ffn.net.0.proj"),
    ("blocks.{i}.ffn.2", "blocks.{i}.ffn.net.2"),
    ("text_embedding.0", "condition_embedder.text_embedder.linear_1"),
    ("text_embedding.2", "condition_embedder.text_embedder.linear_2"),
    ("time_embedding.0", "condition_embedder.time_embedder.linear_1"),
    ("time_embedding.2", "condition_embedder.time_embedder.linear_2"),
    ("time_projection.1", "condition_embedder.time_proj"),
    ("head.head", "proj_out"),
    ("img_emb.proj.1", "condition_embedder.image_embedder.ff.net.0.proj"),  # I2V image MLP
    ("img_emb.proj.3", "condition_embedder.image_embedder.ff.net.2"),
)


def _template_regex(template: str, sep: str = ".") -> re.Pattern[str]:
    text = re.escape(template.replace(".", sep)).replace(re.escape("{i}"), r"(\d+)")
    return re.compile(rf"^{text}$")


_TO_DIFFUSERS = [(_template_regex(o), d) for o, d in WAN_NAME_TABLE]
_TO_WAN = [(_template_regex(d), o) for o, d in WAN_NAME_TABLE]
_FROM_KOHYA = [(_template_regex(o, "_"), o) for o, _ in WAN_NAME_TABLE]


def _translate(name: str, rules: list[tuple[re.Pattern[str], str]]) -> str | None:
    for pattern, target in rules:
        m = pattern.match(name)
        if m:
            return target.replace("{i}", m.group(1)) if m.groups() else target
    return None


def wan_to_diffusers(name: str) -> str | None:
    """Original Wan module name (``blocks.3.self_attn.q``) -> diffusers name (``blocks.3.attn1.to_q``)."""
    return _translate(name, _TO_DIFFUSERS)


def diffusers_to_wan(name: str) -> str | None:
    """diffusers module name -> original Wan module name, or None when the table has no equivalent."""
    return _translate(name, _TO_WAN)


def _kohya_to_wan(name: str) -> str | None:
    """``blocks_0_cross_attn_k_img`` (behind ``lora_unet_``) -> ``blocks.0.cross_attn.k_img``; whole-name match."""
    return _translate(name, _FROM_KOHYA)


# ---------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoraSpec:
    """One entry of an editor's LoRA stack."""

    path: str
    strength: float = 1.0

    def __post_init__(self) -> None:
        if not math.isfinite(float(self.strength)):
            raise InputError(f"{self.path}: LoRA strength must be a finite number (got {self.strength}).")


@dataclass
class LoraLayer:
    """One low-rank update ``up @ down`` of a Linear weight ``[out, in]``; tensors from the cache are read-only."""

    down: torch.Tensor  # [r, in]   (lora_A / lora_down)
    up: torch.Tensor  # [out, r]  (lora_B / lora_up)
    alpha: float | None = None  # None -> scale 1 (ComfyUI's rule)

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        """alpha / rank, or 1 without alpha (alpha taken as the rank, ComfyUI's rule)."""
        return 1.0 if self.alpha is None else self.alpha / self.rank


@dataclass
class LoraKeyReport:
    """How the keys of one LoRA file match one model. ``matched`` are diffusers module names; ``unmatched``
    are names as written in the file (module names of LoRA layers the model lacks, and whole keys of other
    kinds such as ``.diff``, ``.diff_b``, DoRA scales); ``shape_mismatch`` entries say expected vs got."""

    path: str
    format: str
    matched: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)
    shape_mismatch: list[str] = field(default_factory=list)
    rank: int | None = None  # None: mixed ranks or no layer
    alpha: float | None = None  # None: no alpha in the file (scale 1) or mixed alphas (see notes)
    modules: int = 0  # LoRA layers (down+up pairs) in the file
    notes: list[str] = field(default_factory=list)

    def summary(self, max_names: int = 4) -> str:
        """One line, e.g. ``style.safetensors: comfyui format, 120/120 modules matched, rank 32, alpha 32``."""
        parts = [f"{Path(self.path).name}: {self.format} format", f"{len(self.matched)}/{self.modules} modules matched"]
        if self.rank is not None:
            parts.append(f"rank {self.rank}")
        if self.alpha is not None:
            parts.append(f"alpha {self.alpha:g}")
        parts.extend(self.notes)
        line = ", ".join(parts)
        if self.shape_mismatch:
            line += "; wrong shape: " + _compact(self.shape_mismatch, max_names)
        if self.unmatched:
            line += "; not applied: " + _compact(self.unmatched, max_names)
        return line


def _compact(names: Sequence[str], n: int) -> str:
    shown = ", ".join(names[:n])
    return shown + (f" (+{len(names) - n} more)" if len(names) > n else "")


# ---------------------------------------------------------------------------------------------------------
# Model side
# ---------------------------------------------------------------------------------------------------------
def _clean_module_name(name: str) -> str:
    """Drop wrappers from a module path: torch.compile's ``_orig_mod.``, PEFT's ``base_model.model.`` and
    ``.base_layer`` (a PEFT-wrapped Linear keeps its weight there)."""
    name = name.replace("_orig_mod.", "")
    name = name.removeprefix("base_model.model.")
    return name.replace(".base_layer", "")


def _linear_modules(transformer: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    """Every LoRA-able module (``nn.Linear``) of the model by its clean diffusers name."""
    return {_clean_module_name(n): m for n, m in transformer.named_modules() if isinstance(m, torch.nn.Linear)}


def lora_target_names(transformer: torch.nn.Module, *, blocks_only: bool = True) -> list[str]:
    """diffusers names of the model's Linear modules, in model order; by default only those in ``blocks``
    (attention q/k/v/o, I2V image k/v, FFN) — the usual training targets."""
    names = list(_linear_modules(transformer))
    return [n for n in names if n.startswith("blocks.")] if blocks_only else names


# ---------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------
_PART = {
    "lora_A": "down",
    "lora_down": "down",
    "lora.down": "down",
    "lora_linear_layer.down": "down",
    "lora_B": "up",
    "lora_up": "up",
    "lora.up": "up",
    "lora_linear_layer.up": "up",
}
_LORA_KEY = re.compile(
    r"^(?P<module>.+?)\.(?P<part>lora_A|lora_B|lora_down|lora_up|lora\.down|lora\.up|"
    r"lora_linear_layer\.down|lora_linear_layer\.up)(?:\.(?P<adapter>[^.]+))?\.weight$"
)
_ALPHA_KEY = re.compile(r"^(?P<module>.+)\.alpha$")
_DORA_KEY = re.compile(r"^(?P<module>.+?)\.(?:dora_scale|lora_magnitude_vector)(?:\..+)?$")


def _resolve(module: str, has_adapter: bool) -> tuple[str, str | None]:
    """File module name -> (format, diffusers name; None for a kohya name with no Wan equivalent).

    The format follows the prefix. Behind any prefix but kohya's, a name is read as an original Wan name
    when the table knows it (DiffSynth-style ``blocks.0.self_attn.q``, ComfyUI's ``transformer.<original>``)
    and as a diffusers name otherwise; the two name sets do not overlap, so this never guesses.
    """
    for prefix in ("lora_unet_", "lycoris_"):
        if module.startswith(prefix):
            orig = _kohya_to_wan(module[len(prefix) :])
            return "kohya", (wan_to_diffusers(orig) if orig else None)
    fmt, rest = "", module
    for prefix, kind in (
        ("model.diffusion_model.", "comfyui"),
        ("diffusion_model.", "comfyui"),
        ("base_model.model.", "peft"),
        ("transformer.", "diffusers"),
    ):
        if module.startswith(prefix):
            fmt, rest = kind, module[len(prefix) :]
            break
    if fmt == "peft":
        rest = rest.removeprefix("transformer.")
    if has_adapter:
        fmt = "peft"
    as_wan = wan_to_diffusers(rest)
    if not fmt:
        fmt = "comfyui" if as_wan is not None else "diffusers"
    return fmt, (as_wan if as_wan is not None else rest)


@dataclass
class _LoraFile:
    layers: dict[str, LoraLayer]  # diffusers name -> layer
    source: dict[str, str]  # diffusers name -> module name as written in the file
    unresolved: list[str]  # file module names of complete layers: kohya names the table lacks, duplicates
    other_keys: list[str]  # keys that are not LoRA down/up/alpha (diff, diff_b, DoRA, half pairs, ...)
    format: str
    metadata: dict[str, str]


def _alpha_config(path: Path, metadata: dict[str, str]) -> tuple[float | None, dict[str, float], bool]:
    """(lora_alpha, alpha_pattern, use_rslora) from diffusers' ``lora_adapter_metadata`` or a PEFT
    adapter_config.json beside the file."""
    cfg: dict = {}
    raw = metadata.get("lora_adapter_metadata")
    if raw:  # a broken entry would silently drop alpha (scale 1): refuse it instead
        try:
            parsed = json.loads(raw)
        except json.JSONDecodeError as e:
            raise LoraError(f"{path}: its 'lora_adapter_metadata' is not JSON ({e}); re-save the LoRA.") from None
        if not isinstance(parsed, dict):
            raise LoraError(f"{path}: its 'lora_adapter_metadata' must be a JSON object; re-save the LoRA.")
        cfg = {k.removeprefix("transformer."): v for k, v in parsed.items()}
    elif (path.parent / "adapter_config.json").is_file():
        cfg = read_json_object(path.parent / "adapter_config.json", "PEFT adapter_config.json")
    alpha = cfg.get("lora_alpha")
    pattern = cfg.get("alpha_pattern") or {}
    return (
        float(alpha) if isinstance(alpha, (int, float)) else None,
        {str(k): float(v) for k, v in pattern.items() if isinstance(v, (int, float))},
        bool(cfg.get("use_rslora", False)),
    )


def _pattern_alpha(name: str, pattern: dict[str, float]) -> float | None:
    for key, value in pattern.items():  # PEFT's rule: the pattern matches a suffix of the module path
        try:
            if re.match(rf"(.*\.)?({key})$", name):
                return value
        except re.error:
            continue
    return None


def _parse(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> _LoraFile:
    groups: dict[str, dict[str, torch.Tensor]] = collections.defaultdict(dict)
    group_keys: dict[str, list[str]] = collections.defaultdict(list)
    adapters: dict[str, str] = {}  # module -> PEFT adapter name (".lora_A.default.weight")
    dora: set[str] = set()
    other: list[str] = []
    for key, t in tensors.items():
        if m := _LORA_KEY.match(key):
            groups[m["module"]][_PART[m["part"]]] = t
            if m["adapter"]:
                adapters[m["module"]] = m["adapter"]
        elif m := _ALPHA_KEY.match(key):
            groups[m["module"]]["alpha"] = t
        else:
            if m := _DORA_KEY.match(key):
                dora.add(m["module"])
            other.append(key)
            continue
        group_keys[m["module"]].append(key)
    if len(set(adapters.values())) > 1:
        raise LoraError(
            f"{path}: holds several PEFT adapters ({', '.join(sorted(set(adapters.values())))}); "
            "save each adapter to its own file."
        )

    cfg_alpha, cfg_pattern, rslora = _alpha_config(path, metadata)
    layers: dict[str, LoraLayer] = {}
    source: dict[str, str] = {}
    unresolved: list[str] = []
    formats: collections.Counter[str] = collections.Counter()
    for module, parts in sorted(groups.items()):
        if "down" not in parts or "up" not in parts or module in dora:
            # half a pair, a lone alpha, or DoRA (applying only B@A would be wrong): report, never apply
            other.extend(group_keys[module])
            continue
        fmt, name = _resolve(module, module in adapters)
        formats[fmt] += 1
        if name is None or name in layers:
            unresolved.append(module)
            continue
        alpha: float | None = None
        if "alpha" in parts:
            if parts["alpha"].numel() != 1:
                other.append(f"{module}.alpha")
            else:
                alpha = float(parts["alpha"].float().reshape(-1)[0])
        elif fmt in ("diffusers", "peft"):
            alpha = _pattern_alpha(name, cfg_pattern)
            alpha = cfg_alpha if alpha is None else alpha
            if alpha is not None and rslora:  # rsLoRA scales by alpha/sqrt(r): same as alpha*sqrt(r) over r
                alpha *= math.sqrt(parts["down"].shape[0])
        layers[name] = LoraLayer(down=parts["down"], up=parts["up"], alpha=alpha)
        source[name] = module
    fmt = formats.most_common(1)[0][0] if formats else "unknown"
    return _LoraFile(layers, source, unresolved, sorted(set(other)), fmt, metadata)


@functools.lru_cache(maxsize=8)
def _read_cached(path: str, mtime_ns: int, size: int) -> _LoraFile:
    try:
        tensors, metadata = load_safetensors(path, what="LoRA")
    except ModelLoadError as e:
        raise LoraError(str(e)) from e
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:  # it would edit with NaN deltas (or silently nothing where the DiT's norms absorb them)
        raise LoraError(
            f"{path}: {len(bad)} tensor(s) hold NaN/Inf (e.g. {', '.join(bad[:3])}); the file is damaged or "
            "its training diverged. Use an earlier checkpoint of it."
        )
    empty = [k for k, v in tensors.items() if v.numel() == 0]
    if empty:
        raise LoraError(
            f"{path}: {len(empty)} tensor(s) are empty (rank 0, e.g. {', '.join(empty[:3])}); this is not "
            "a usable LoRA."
        )
    return _parse(Path(path), tensors, metadata)


def _load(path: str | os.PathLike) -> _LoraFile:
    try:
        p = check_safetensors_path(path, what="LoRA")
    except ModelLoadError as e:  # pickle (.pt, .ckpt, ...) refused, missing file, other suffix
        raise LoraError(str(e)) from e
    st = p.stat()
    return _read_cached(str(p.resolve()), st.st_mtime_ns, st.st_size)


def read_lora(path: str | os.PathLike) -> tuple[dict[str, LoraLayer], str, dict[str, str]]:
    """Read a LoRA .safetensors file of any supported format.

    Returns (layers keyed by diffusers module name, format, safetensors __metadata__). Keys that are not
    LoRA layers are left out here; ``key_report`` lists them. Cached by (path, mtime, size): the tensors are
    shared, do not modify them in place. Pickle files and unreadable files raise LoraError.
    """
    f = _load(path)
    return dict(f.layers), f.format, dict(f.metadata)


def _metadata_number(path: str | os.PathLike, key: str) -> float | None:
    """A finite number the trainer JSON-encoded into the LoRA's metadata under `key`, or None."""
    raw = _load(path).metadata.get(key)
    try:
        value = json.loads(raw) if raw is not None else None
    except json.JSONDecodeError:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def trained_cfg(path: str | os.PathLike) -> float | None:
    """The CFG scale an Edit-GRPO LoRA's rollouts were sampled at (``rollout_cfg`` in the metadata viva_core's
    trainer writes), or None when the file does not say."""
    return _metadata_number(path, "rollout_cfg")


def sampling_cfg(path: str | os.PathLike) -> float | None:
    """The CFG an Edit-GRPO LoRA's edits should sample at, when it binds one: its rollouts' (`trained_cfg`) if it
    learned without a KL anchor to its base; None if it had one (``kl_beta`` > 0 in its metadata) or says nothing.
    Why: unanchored, grpo_v13 moved the conditioned velocity so far that CFG 5 on top overshoots (its gain is at
    CFG 1); anchored, grpo_v14 moved it a little, and its edits are best at the base's CFG 5 (held-out EA 0.357
    against 0.301 at CFG 1, preservation held; docs/small_models.md, sections 61 and 63)."""
    anchor = _metadata_number(path, "kl_beta")
    return None if anchor is not None and anchor > 0 else trained_cfg(path)


def stack_cfg(specs: Sequence[LoraSpec]) -> float | None:
    """The guidance the stack's Edit-GRPO LoRAs bind (`sampling_cfg`), when those that bind one agree (None
    otherwise): what `viva edit --lora` samples at without --cfg."""
    found = {sampling_cfg(s.path) for s in specs if s.strength != 0} - {None}
    return found.pop() if len(found) == 1 else None


def guidance_notes(specs: Sequence[LoraSpec], cfg: float) -> list[str]:
    """One note for each LoRA of the stack that binds another guidance scale than `cfg` (`sampling_cfg`). Why:
    Edit-GRPO on unguided rollouts without a KL anchor moves the conditioned velocity itself, so CFG on top of it
    overshoots; grpo_v13 at CFG 5 lost 0.08 preservation and 0.10 realism against its base, and at CFG 1 beat the
    base at CFG 5 by 13% in edit accuracy (docs/small_models.md, section 61)."""
    notes = []
    for spec in specs:
        trained = sampling_cfg(spec.path) if spec.strength != 0 else None
        if trained is not None and not math.isclose(trained, cfg):
            notes.append(
                f"{Path(spec.path).name}: this Edit-GRPO LoRA learned from rollouts sampled at CFG {trained:g} "
                f"without a KL anchor (its metadata), and this edit samples at CFG {cfg:g} (on the bundled editor, "
                f"such a LoRA overshoots at CFG 5: preservation and realism fall). Set cfg to {trained:g} for its "
                "edits."
            )
    return notes


# ---------------------------------------------------------------------------------------------------------
# Matching
# ---------------------------------------------------------------------------------------------------------
def _shape_problem(layer: LoraLayer, weight: torch.Tensor) -> str | None:
    down, up = layer.down, layer.up
    if (
        down.ndim == 2
        and up.ndim == 2
        and weight.ndim == 2
        and up.shape[1] == down.shape[0]
        and (up.shape[0], down.shape[1]) == tuple(weight.shape)
    ):
        return None
    return f"model weight {list(weight.shape)}, LoRA up {list(up.shape)} @ down {list(down.shape)}"


def _report(path: str | os.PathLike, f: _LoraFile, targets: dict[str, torch.nn.Linear]) -> LoraKeyReport:
    rep = LoraKeyReport(path=str(path), format=f.format, modules=len(f.layers) + len(f.unresolved))
    for name, layer in f.layers.items():
        if name not in targets:
            rep.unmatched.append(f.source[name])
        elif (problem := _shape_problem(layer, targets[name].weight)) is not None:
            rep.shape_mismatch.append(f"{name}: {problem}")
        else:
            rep.matched.append(name)
    rep.unmatched.extend(f.unresolved)
    rep.unmatched.extend(f.other_keys)
    ranks = {layer.rank for layer in f.layers.values()}
    alphas = {layer.alpha for layer in f.layers.values()}
    if len(ranks) == 1:
        rep.rank = ranks.pop()
    elif ranks:
        rep.notes.append(f"ranks {min(ranks)}-{max(ranks)}")
    if len(alphas) == 1:
        rep.alpha = alphas.pop()
        if rep.alpha is None and f.layers:
            rep.notes.append("no alpha (scale 1)")
    elif alphas:
        rep.notes.append("mixed alphas" + (" (some missing: scale 1)" if None in alphas else ""))
    return rep


def key_report(path: str | os.PathLike, transformer: torch.nn.Module) -> LoraKeyReport:
    """How the keys of the LoRA file at ``path`` match ``transformer`` (nothing is applied)."""
    return _report(path, _load(path), _linear_modules(transformer))


def check_lora_fits(path: str | os.PathLike, transformer: torch.nn.Module) -> LoraKeyReport:
    """The key report, or LoraError when the file matches no module or has wrong shapes: callers use it to
    fail where the user picked the file, not later inside the sampler."""
    return _checked_report(path, _load(path), _linear_modules(transformer))


def _checked_report(path: str | os.PathLike, f: _LoraFile, targets: dict[str, torch.nn.Linear]) -> LoraKeyReport:
    rep = _report(path, f, targets)
    if rep.shape_mismatch:
        raise LoraError(
            f"{path}: {len(rep.shape_mismatch)} of its modules have the wrong shape for this model: "
            f"{_compact(rep.shape_mismatch, 3)}. It is probably for another size or variant of the model "
            "(e.g. Wan 14B vs 1.3B/5B); pick a LoRA trained for this one."
        )
    if not rep.matched:
        raise LoraError(
            f"{path}: matches none of the model's {len(targets)} LoRA-able modules; it is probably for "
            f"another model (format {f.format}, first keys {_first_keys(f)}). Remove it from the LoRA stack "
            "or pick a LoRA trained for Wan."
        )
    return rep


# ---------------------------------------------------------------------------------------------------------
# Applying
# ---------------------------------------------------------------------------------------------------------
def lora_delta(layer: LoraLayer, strength: float, *, device: torch.device | str | None = None) -> torch.Tensor:
    """``strength * (alpha / rank) * up @ down`` in fp32 (on ``device``, default: the layer's).

    Without alpha the scale is ``strength`` alone (alpha taken as the rank), as in ComfyUI."""
    up = layer.up.to(device=device, dtype=torch.float32)
    down = layer.down.to(device=device, dtype=torch.float32)
    return (up @ down).mul_(strength * layer.scale)


def _first_keys(f: _LoraFile, n: int = 3) -> str:
    keys = list(f.source.values()) + f.unresolved + f.other_keys
    return ", ".join(keys[:n]) if keys else "no tensors"


FP8_DTYPES: tuple[torch.dtype, ...] = tuple(
    getattr(torch, n)
    for n in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")
    if hasattr(torch, n)
)
_SIDE_ATTR = "_viva_lora_side"  # the _SidePath of a Linear while a LoRA is applied to it unmerged
_HOOK_ATTR = "_viva_lora_hook"  # set on Linears that carry the permanent side-path hook


class _SidePath:
    """The unmerged LoRA stack of one Linear: ``down`` [R, in] (each spec's strength·alpha/rank folded in)
    and ``up`` [out, R], the specs concatenated along R so a stack costs two matmuls. fp32 masters; copies
    in the compute dtype/device are made on first use (the model may move to the GPU after applying)."""

    def __init__(self, down: torch.Tensor, up: torch.Tensor) -> None:
        self.down, self.up = down, up
        self._cast: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def weights(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = (device, dtype)
        if key not in self._cast:
            self._cast[key] = (self.down.to(device=device, dtype=dtype), self.up.to(device=device, dtype=dtype))
        return self._cast[key]


def _side_hook(module: torch.nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> torch.Tensor | None:
    """Forward hook: add the module's unmerged LoRA, computed in the output's (compute) dtype; no-op without."""
    side: _SidePath | None = getattr(module, _SIDE_ATTR, None)
    if side is None:
        return None
    x = args[0] if args else kwargs["input"]
    down, up = side.weights(output.device, output.dtype)
    return output + torch.nn.functional.linear(torch.nn.functional.linear(x.to(output.dtype), down), up)


def _is_fp8(weight: torch.Tensor) -> bool:
    return weight.dtype in FP8_DTYPES


def install_fp8_lora_hooks(transformer: torch.nn.Module) -> int:
    """Give every fp8-stored Linear the (idle) side-path hook now, so it exists before ``torch.compile``
    traces the model (dynamo does not guard on hooks added after tracing, so a fullgraph-compiled block could
    skip them). Returns how many Linears have it; idempotent. ``applied_loras`` adds a temporary hook where
    this was not called."""
    n = 0
    for module in _linear_modules(transformer).values():
        if _is_fp8(module.weight):
            if not getattr(module, _HOOK_ATTR, False):
                module.register_forward_hook(_side_hook, with_kwargs=True)
                setattr(module, _HOOK_ATTR, True)
            n += 1
    return n


def _side_path(items: list[tuple[LoraLayer, float]], device: torch.device, outer: _SidePath | None) -> _SidePath:
    """The stack of ``items`` on top of ``outer`` (the side path of an enclosing ``applied_loras``, if any)."""
    downs, ups = ([outer.down], [outer.up]) if outer is not None else ([], [])
    for layer, strength in items:
        downs.append(layer.down.to(device=device, dtype=torch.float32) * (strength * layer.scale))
        ups.append(layer.up.to(device=device, dtype=torch.float32))
    return _SidePath(torch.cat([d.to(device) for d in downs], 0), torch.cat([u.to(device) for u in ups], 1))


@contextmanager
def applied_loras(
    transformer: torch.nn.Module, specs: Sequence[LoraSpec], *, backup_device: torch.device | str | None = None
) -> Iterator[list[LoraKeyReport]]:
    """Apply the LoRA stack to the model's Linear layers inside the ``with`` block; restore them exactly.

    Specs with strength 0 are skipped (their files are not read). Every file is checked before any weight
    changes: a file that matches no module, or any matched module with a wrong shape, raises LoraError.
    Layers the model lacks are skipped and listed in the reports (yielded, one per applied spec).

    Merged (weights in fp32/bf16/fp16): per module the deltas of all specs are summed in fp32, added to an
    fp32 copy of the weight, and cast back to the weight's dtype. The original weights are cloned first (on
    ``backup_device``, default the weight's device) and copied back on exit, also on an exception, so the
    restore is bit-exact.

    Unmerged (weights stored in fp8): the layer's output gets ``(x @ A^T) @ B^T`` (scales folded into A)
    from a forward hook, in the compute dtype; the fp8 weight is never written, so the restore is trivially
    exact and needs no backup. Why not merge: fp8 e4m3 has 3 mantissa bits (a step of 6-12% of a weight),
    so a delta of ~1% of the weights' std is rounded away by a plain cast (cosine of the LoRA's effect vs
    fp32: 0.21 on a width-1024 DiT, bench/fp8_lora.py; 0.77 on the test DiT) and drowned in the per-weight
    noise of a stochastic rounding, which is right only on average (0.46-0.66 over 5 seeds on the test DiT).
    The side path is exact up to the compute dtype (cosine 0.9999999992 with fp32 compute; with bf16 compute
    0.855, the same as a bf16 model's merged LoRA, 0.856: bf16 itself limits a 1% effect) and costs r·(in+out)
    multiply-adds per token against the layer's in·out (1.25% for r=32 at Wan 14B's width 5120), with no
    merge pass and no weight backup (apply+restore 0.12 s vs 1.34 s for the merge at width 1024 on CPU).
    """
    active = [s for s in specs if s.strength != 0]
    targets = _linear_modules(transformer) if active else {}
    plan: dict[str, list[tuple[LoraLayer, float]]] = collections.defaultdict(list)
    reports: list[LoraKeyReport] = []
    for spec in active:
        f = _load(spec.path)
        rep = _checked_report(spec.path, f, targets)
        for name in rep.matched:
            plan[name].append((f.layers[name], float(spec.strength)))
        reports.append(rep)

    backups: dict[str, torch.Tensor] = {}
    sides: list[tuple[torch.nn.Module, _SidePath | None]] = []  # (module, the side path it had before)
    handles: list[torch.utils.hooks.RemovableHandle] = []
    try:
        with torch.no_grad():
            for name, items in plan.items():
                module = targets[name]
                weight = module.weight
                if _is_fp8(weight):
                    outer = getattr(module, _SIDE_ATTR, None)
                    sides.append((module, outer))
                    setattr(module, _SIDE_ATTR, _side_path(items, weight.device, outer))
                    if outer is None and not getattr(module, _HOOK_ATTR, False):  # else a hook is there already
                        handles.append(module.register_forward_hook(_side_hook, with_kwargs=True))
                    continue
                backups[name] = weight.detach().to(device=backup_device, copy=True)
                delta = lora_delta(items[0][0], items[0][1], device=weight.device)
                for layer, strength in items[1:]:
                    delta += lora_delta(layer, strength, device=weight.device)
                weight.copy_((weight.float() + delta).to(weight.dtype))
        yield reports
    finally:
        for handle in reversed(handles):
            handle.remove()
        for module, outer in sides:
            if outer is not None:
                setattr(module, _SIDE_ATTR, outer)
            elif hasattr(module, _SIDE_ATTR):
                delattr(module, _SIDE_ATTR)
        with torch.no_grad():
            for name, original in backups.items():
                targets[name].weight.copy_(original)


# ---------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------
def save_lora(
    path: str | os.PathLike, layers: dict[str, LoraLayer], *, metadata: dict[str, object] | None = None
) -> Path:
    """Write ``layers`` (diffusers names) as a ComfyUI-native LoRA file and return its path.

    Keys: ``diffusion_model.<original Wan module>.lora_A.weight`` (down), ``.lora_B.weight`` (up) and, for
    modules in ``blocks``, ``.alpha`` (0-dim fp32; a layer without alpha is written with alpha = rank, the
    same scale 1). Embedding/head layers (``text_embedding``, ``time_projection``, ``head.head``, ...) get no
    ``.alpha``: their scale alpha/rank is folded into lora_A, because diffusers' Wan LoRA converter rejects
    ``.alpha`` outside blocks; ComfyUI and diffusers then both apply scale 1, so the delta is unchanged.
    ``metadata`` values that are not str are JSON-encoded; ``viva_format`` is set to ``viva-lora-v1`` (``format``
    stays "pt", the safetensors convention).
    The write is atomic (temporary file in the same folder, then ``os.replace``).
    """
    p = Path(path)
    if p.suffix.lower() != ".safetensors":
        raise LoraError(f"{p}: LoRA files are written as .safetensors (got '{p.suffix or 'no suffix'}').")
    if not layers:
        raise LoraError(f"{p}: no LoRA layers to save.")
    tensors: dict[str, torch.Tensor] = {}
    for name in sorted(layers):
        layer = layers[name]
        orig = diffusers_to_wan(_clean_module_name(name))
        if orig is None:
            raise LoraError(
                f"{p}: module '{name}' has no original-Wan name, so ComfyUI could not load it. "
                "Train LoRA only on attention, FFN, embedding or head Linear layers."
            )
        if layer.down.ndim != 2 or layer.up.ndim != 2 or layer.up.shape[1] != layer.down.shape[0]:
            raise LoraError(
                f"{p}: layer '{name}' has inconsistent shapes: up {list(layer.up.shape)}, "
                f"down {list(layer.down.shape)} (expected [out, r] and [r, in])."
            )
        key = f"diffusion_model.{orig}"
        down = layer.down.detach().to("cpu")
        alpha = float(layer.rank if layer.alpha is None else layer.alpha)
        if orig.startswith("blocks."):
            tensors[f"{key}.alpha"] = torch.tensor(alpha, dtype=torch.float32)
        elif layer.scale != 1.0:
            # diffusers' Wan converter reads .alpha only inside blocks and refuses the file when an embedding
            # or head layer has one; without it ComfyUI and diffusers both use scale 1, so fold alpha/r in.
            down = (down.float() * layer.scale).to(down.dtype)
        tensors[f"{key}.lora_A.weight"] = down.contiguous()
        tensors[f"{key}.lora_B.weight"] = layer.up.detach().to("cpu").contiguous()

    meta: dict[str, str] = {}
    for k, v in (metadata or {}).items():
        try:
            meta[str(k)] = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
        except (TypeError, ValueError) as e:
            raise LoraError(f"{p}: metadata '{k}' cannot be stored as JSON ({e}).") from e
    meta["format"] = "pt"
    meta["viva_format"] = FILE_FORMAT

    return save_safetensors_atomic(p, tensors, meta)
