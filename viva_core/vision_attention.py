"""One attention call for all images of a batch in Qwen2.5-VL's vision tower.

With SDPA, transformers' Qwen2.5-VL vision attention runs one attention call per image (per `cu_seqlens` chunk).
A judge step of 32 items x 4 questions x 12 images made 1,536 calls per layer, and the trainer ran at 4.4 s a
step on an H200 (docs/small_models.md, section 8). Images of one size have chunks of one length, so they stack
into a batch: this module registers a packed-sequence attention ("flash"-named, so transformers passes it
`cu_seqlens`) that does that, falling back to one call per chunk for mixed sizes. Exactness against SDPA:
tests/test_vlm.py.
"""

from __future__ import annotations

import logging
import sys

import torch
import torch.nn.functional as F

from .compat import DependencyError, attn_implementation, set_attn_implementation

log = logging.getLogger(__name__)

NAME = "flash_viva_packed_sdpa"  # must contain "flash": that is how transformers decides to pass cu_seqlens


def packed_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    cu_seq_lens_q: torch.Tensor | None = None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **_: object,
) -> tuple[torch.Tensor, None]:
    """query/key/value [1, heads, S, D] holding the packed chunks of `cu_seq_lens_q` -> ([1, S, heads, D], None):
    attention within each chunk only (no mask crosses images), as transformers' per-chunk loop computes it."""
    if query.shape[0] != 1 or cu_seq_lens_q is None or attention_mask is not None:
        raise ValueError(f"{NAME} serves only packed vision attention (batch 1, cu_seqlens, no mask).")
    lengths = (cu_seq_lens_q[1:] - cu_seq_lens_q[:-1]).tolist()
    heads, total, dim = query.shape[1], query.shape[2], query.shape[3]
    if len(set(lengths)) == 1:  # equal chunks: one batched call
        n, length = len(lengths), lengths[0]
        q, k, v = (t[0].view(heads, n, length, dim).transpose(0, 1) for t in (query, key, value))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scaling)  # [n, heads, L, D]
        return out.permute(0, 2, 1, 3).reshape(1, total, heads, dim), None
    parts = [
        F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scaling)
        for q, k, v in zip(*(torch.split(t, lengths, dim=2) for t in (query, key, value)))
    ]
    return torch.cat(parts, dim=2).transpose(1, 2), None


def use_packed_vision_attention(model: torch.nn.Module) -> bool:
    """Switch a Qwen2.5-VL-family model's vision tower from SDPA to `packed_sdpa`; True when switched. Other
    models, other attention implementations (eager, real flash-attention) and transformers without the
    AttentionInterface are left as they are."""
    vision = getattr(getattr(model, "config", None), "vision_config", None)
    if vision is None or attn_implementation(vision) != "sdpa" or "Qwen2_5_VL" not in type(model).__name__:
        return False
    try:
        from transformers import AttentionInterface

        AttentionInterface.register(NAME, packed_sdpa)
        set_attn_implementation(vision, NAME)
    except (ImportError, AttributeError, ValueError, DependencyError) as e:  # keep transformers' per-image loop
        log.info("packed vision attention unavailable (%s); using transformers' SDPA path", e)
        return False
    return True


def vision_indices(visual: torch.nn.Module, grid_thw: torch.Tensor) -> dict[str, object]:
    """The index tensors Qwen2.5-VL's vision tower builds from `grid_thw` before its blocks (rotary position ids,
    window order, packed-sequence boundaries and their maxima), as keyword arguments it reads instead of building
    them: computed with transformers' own functions once per distinct image size and tiled. transformers loops over
    every image, with a few device operations each (a 64-edit judge forward shows 768 images) and a device sync per
    maximum. The boundaries stay on the host for `packed_sdpa`, which reads them as Python lengths. {} where this
    transformers has no `vision_utils` or the tower is not Qwen2.5-VL's (it then builds them itself)."""
    try:
        from transformers import vision_utils as vu
    except ImportError:
        return {}
    uses = vars(sys.modules[type(visual).__module__])  # the tower's module reads the kwargs through these
    wanted = ("get_vision_position_ids", "get_vision_window_index", "get_vision_attention_seqlens")
    if not all(n in uses and hasattr(vu, n) for n in wanted) or not hasattr(vu, "get_vision_cu_seqlens"):
        return {}
    if not hasattr(visual, "window_size"):  # Qwen2-VL's tower: no windows
        return {}
    merge, grid = visual.spatial_merge_size, grid_thw.cpu()
    per_size: dict[tuple, tuple] = {}
    positions, windows, bounds = [], [], [torch.zeros(1, dtype=torch.int32)]
    tokens = patches = 0
    for row in grid.tolist():
        key = tuple(row)
        if key not in per_size:
            one = torch.tensor([row])
            order, cu = vu.get_vision_window_index(
                one, spatial_merge_size=merge, window_size=visual.window_size, patch_size=visual.patch_size
            )
            per_size[key] = (vu.get_vision_position_ids(one, merge), order, cu[1:].to(torch.int32))
        pos, order, cu = per_size[key]
        positions.append(pos)
        windows.append(order + tokens)
        bounds.append(cu + patches)
        tokens += row[0] * (row[1] // merge) * (row[2] // merge)
        patches += row[0] * row[1] * row[2]
    packed = attn_implementation(getattr(visual, "config", None)) == NAME
    dev = grid_thw.device
    cu_seqlens = vu.get_vision_cu_seqlens(grid)
    cu_windows = torch.unique_consecutive(torch.cat(bounds))
    return {
        "position_ids": torch.cat(positions).to(dev),
        "window_index": torch.cat(windows).to(dev),
        "cu_seqlens": cu_seqlens if packed else cu_seqlens.to(dev),
        "cu_window_seqlens": cu_windows if packed else cu_windows.to(dev),
        "max_seqlen": int((cu_seqlens[1:] - cu_seqlens[:-1]).max()),
        "max_window_seqlen": int((cu_windows[1:] - cu_windows[:-1]).max()),
    }
