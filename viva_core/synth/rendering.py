"""Rendering: a world's frames (background, objects back to front, style) with exact colours, the object
under each pixel, each object's footprint and its per-frame boxes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from .simulator import State, simulate
from .world import BACKGROUNDS, PALETTE, SHAPES, STYLES, Background, World


def background_image(bg: Background, size: int) -> np.ndarray:
    """The background as uint8 [size, size, 3]."""
    a = np.array(PALETTE[bg.colours[0]], dtype=np.float64)
    b = np.array(PALETTE[bg.colours[-1]], dtype=np.float64)
    img = np.empty((size, size, 3), dtype=np.uint8)
    coord = np.arange(size)
    if bg.kind == "solid":
        img[:] = a.astype(np.uint8)
    elif bg.kind in ("vertical_gradient", "horizontal_gradient"):
        w = (coord + 0.5) / size
        ramp = np.rint(a[None] * (1 - w[:, None]) + b[None] * w[:, None]).astype(np.uint8)  # [size, 3]
        img[:] = ramp[:, None, :] if bg.kind == "vertical_gradient" else ramp[None, :, :]
    elif bg.kind in ("stripes", "checker"):
        cell = coord // max(2, size // 8)
        pick = (cell[None, :] % 2) if bg.kind == "stripes" else ((cell[:, None] + cell[None, :]) % 2)
        img[:] = np.where(np.broadcast_to(pick, (size, size))[..., None] == 1, b, a).astype(np.uint8)
    else:
        raise InputError(f"background kind '{bg.kind}' is not one of {', '.join(BACKGROUNDS)}.")
    return img


def footprint(shape: str, cx: np.ndarray, cy: np.ndarray, radius: float, size: int) -> np.ndarray:
    """Pixels covered by a shape centred at (cx[t], cy[t]) in each frame: bool [T, size, size].

    A pixel is covered when its centre (x + 0.5, y + 0.5) is inside the shape; edges are hard, so colours are exact."""
    grid = np.arange(size, dtype=np.float32) + np.float32(0.5)
    dx = grid[None, None, :] - cx.astype(np.float32)[:, None, None]  # [T,1,W]
    dy = grid[None, :, None] - cy.astype(np.float32)[:, None, None]  # [T,H,1]
    r = np.float32(radius)
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "ring":
        d2 = dx * dx + dy * dy
        return (d2 <= r * r) & (d2 >= (np.float32(0.5) * r) ** 2)
    if shape == "square":
        half = np.float32(0.8) * r
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= r
    if shape == "triangle":  # apex up, base at +0.8 r
        return (dy <= np.float32(0.8) * r) & (np.float32(2) * np.abs(dx) <= dy + r)
    raise InputError(f"shape '{shape}' is not one of {', '.join(SHAPES)}.")


def apply_style(rgb: np.ndarray, style: str | None) -> np.ndarray:
    """A global look on uint8 RGB (any leading shape): grayscale (BT.601 luma), darken (halve), invert."""
    if style is None:
        return rgb
    if style == "grayscale":
        c = rgb.astype(np.int32)
        luma = ((299 * c[..., 0] + 587 * c[..., 1] + 114 * c[..., 2] + 500) // 1000).astype(np.uint8)
        return np.repeat(luma[..., None], 3, axis=-1)
    if style == "darken":
        return rgb // 2
    if style == "invert":
        return 255 - rgb
    raise InputError(f"style '{style}' is not one of {', '.join(STYLES)}.")


@dataclass
class Rendered:
    """A rendered world: rgb uint8 [T,H,W,3]; ids int8 [T,H,W] (object id on top at each pixel, -1 background);
    footprints: object id → bool [T,H,W], the whole shape (occluded parts included); the simulator state."""

    rgb: np.ndarray
    ids: np.ndarray
    footprints: dict[int, np.ndarray]
    state: State
    background: np.ndarray


def render(world: World, frames: int) -> Rendered:
    """Draw the world's frames: background, then objects back to front by depth, then the style."""
    state = simulate(world, frames)
    size = world.size
    bg = background_image(world.background, size)
    # Composited as packed little-endian RGBX words: one masked copy per object instead of three channels.
    packed = np.empty((frames, size, size), dtype="<u4")
    packed[:] = _pack(bg)
    ids = np.full((frames, size, size), -1, dtype=np.int8)
    prints: dict[int, np.ndarray] = {}
    for k in np.argsort(state.depth, kind="stable"):
        o = world.objects[k]
        fp = footprint(o.shape, state.pos[k, :, 0], state.pos[k, :, 1], o.radius, size)
        np.copyto(packed, _pack(state.rgb[k]), where=fp)
        np.copyto(ids, np.int8(o.id), where=fp)
        prints[o.id] = fp
    rgb = np.ascontiguousarray(packed.view(np.uint8).reshape(frames, size, size, 4)[..., :3])
    return Rendered(rgb=apply_style(rgb, world.style), ids=ids, footprints=prints, state=state, background=bg)


def _pack(rgb: np.ndarray) -> np.ndarray:
    """uint8 [..., 3] → little-endian uint32 [...] with R in the lowest byte."""
    c = rgb.astype("<u4")
    return c[..., 0] | (c[..., 1] << 8) | (c[..., 2] << 16)


def bboxes(fp: np.ndarray) -> list[list[int] | None]:
    """Per frame [x0, y0, x1, y1] (x1, y1 exclusive) of a bool [T,H,W] footprint; None where it is empty."""
    rows, cols = fp.any(axis=2), fp.any(axis=1)  # [T,H], [T,W]
    present = rows.any(axis=1)
    y0, y1 = rows.argmax(axis=1), rows.shape[1] - rows[:, ::-1].argmax(axis=1)
    x0, x1 = cols.argmax(axis=1), cols.shape[1] - cols[:, ::-1].argmax(axis=1)
    boxes = np.stack([x0, y0, x1, y1], axis=1).tolist()
    return [box if ok else None for box, ok in zip(boxes, present.tolist())]
