"""Synthetic paired-edit data: a seeded numpy world of moving shapes, edits on its simulator state, exact targets.

VIVA builds paired (source, instruction, target, mask) data synthetically; ReViSE adds reasoning-informed edits
(temporal, causal, spatial, commonsense). Both come from one tiny world whose simulator state is the ground truth:
a background (solid, vertical/horizontal gradient, stripes, checker) and 1-4 objects (circle, square, triangle,
diamond, ring; a palette of named colours; small/medium/large) moving in straight lines with elastic wall bounces,
drawn back to front by depth (so they occlude each other). Motion is solved in closed form (a triangle-wave fold
of `p0 + v·t` between the walls), so "the scene 8 frames later" is the same formula at `t + 8`, and "had it not
bounced" is the unfolded line.

The story of one clip (`make_clip`): draw a `World` → choose a category and its operation(s) → pick each edited
object by a referring expression that matches exactly one object in this clip (`referents`) → edit the world into
the target world → `render` both with the same simulator (the target is exact) → mask = the pixels the edit
touched (the edited objects' visible pixels in source or target, revealed background included, every pixel for a
global style, every background pixel for a background change, plus any pixel that differs) → instruction from
paraphrased templates, captions from the two states, `verify` (what an exact benchmark checks) from the target
state. `generate` writes many clips into train / val / heldout manifests; heldout is the only split that contains
the held-out (operation, attribute) and (operation, referring kind) pairs (`DEFAULT_HELDOUT`).

Categories (`type`) and their operations:
    basic        recolour, replace_shape, remove, add, move, resize, background, style
    hybrid       2-3 distinct basic operations in one instruction ("make the red square blue and remove ...")
    temporal     time_shift ("show the scene 8 frames later": the same simulation, shifted in time)
    causal       no_bounce, speed_change, reverse_direction (counterfactual re-simulation of one object)
    spatial      recolour / replace_shape / remove / resize of "the object nearest the top-left corner", ...
    commonsense  the same operations on "the object that will hit a wall first", "... gets hidden behind another"

Output (`generate`): `train.jsonl`, `val.jsonl`, `heldout.jsonl` (splits with no clips are not written) and
`synth_config.json` (seed and settings) in `out_dir`, media in `out_dir/<split>/`. With format="mp4" (default)
each line is a `load_manifest` record: source_video, target_video, mask_video (white = edited), instruction,
source_caption, target_caption, type, plus operation, attribute, referring, verify (load_manifest logs one warning
per extra key, naming the lines, and ignores them). MP4 is lossy (h264, yuv420p); for exact pixels use
format="npz": each line then has `npz` instead of the three video paths, and the file holds uint8 `source`,
`target` [T,H,W,3], `mask` [T,H,W] (0/1) and the two worlds as JSON strings (`world`, `target_world`).

Labels (hybrids join the per-operation values with "+", in instruction order):
    operation  recolour | replace_shape | remove | add | move | resize | background | style | time_shift |
               no_bounce | speed_change | reverse_direction
    attribute  recolour/add: the new colour; remove: the removed object's colour; replace_shape: the new shape;
               move: left/right/top/bottom; resize: larger/smaller; background: its kind; style: its name;
               time_shift: "+8", "-4", ...; no_bounce: walls; speed_change: 2x/0.5x; reverse_direction: direction
    referring  colour_shape, colour, shape, position, size, speed (basic, hybrid, causal); nearest_corner,
               nearest_object, farthest_from_centre (spatial); first_wall_hit, most_bounces, never_bounces,
               gets_occluded (commonsense); none (add, background, style, time_shift)
    verify     {operation: checks}. Boxes are per frame [x0, y0, x1, y1] (x1, y1 exclusive) of the whole shape,
               null where it is out of the frame; rgb values are what the pixels show (after any style).
               recolour {colour, target_rgb, bbox}; replace_shape {shape, rgb, bbox}; remove {present: false,
               object_rgb, source_bbox}; add {present: true, shape, colour, size, region, direction, rgb, bbox};
               move {side, rgb, bbox, source_bbox}; resize {scale, size, rgb, bbox, source_bbox}; background
               {background: {kind, colours}}; style {style}; time_shift {frames}; no_bounce {walls: false, rgb,
               bbox, source_bbox}; speed_change {speed_factor, rgb, bbox, source_bbox}; reverse_direction
               {reversed: true, rgb, bbox, source_bbox}. viva_core.eval reads these.

Speed at 64x64x17, all categories, one process on a shared 2-core machine (load average 5-7 while measured, so
wall-clock rates were about half the CPU rates): make_clip alone about 13,000 clips per CPU-minute (6,700 per
wall-minute); generate with format="npz" about 6,900 per CPU-minute (3,500 per wall-minute, ~11 KB a clip);
with format="mp4" (three h264 files a clip) about 840 per CPU-minute (500 per wall-minute). Encoding dominates.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from .errors import InputError
from .safe_io import atomic_path, write_text_atomic

log = logging.getLogger(__name__)

PathLike = str | os.PathLike

# ================================================================================================ the world

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (240, 215, 40),
    "orange": (245, 135, 30), "purple": (135, 60, 180), "cyan": (40, 200, 215), "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle", "diamond", "ring")
# Object "radius" (half its extent) as a fraction of the frame side.
SIZES = {"small": 0.07, "medium": 0.1, "large": 0.14}
BACKGROUNDS = ("solid", "vertical_gradient", "horizontal_gradient", "stripes", "checker")
STYLES = ("grayscale", "darken", "invert")
MIN_SPEED, MAX_SPEED = 0.4, 2.2  # px/frame at any frame size
ADD_SPEED = 1.0

CATEGORIES = ("basic", "hybrid", "temporal", "causal", "spatial", "commonsense")
BASIC_OPS = ("recolour", "replace_shape", "remove", "add", "move", "resize", "background", "style")
TEMPORAL_OPS = ("time_shift",)
CAUSAL_OPS = ("no_bounce", "speed_change", "reverse_direction")
REASONING_OPS = ("recolour", "replace_shape", "remove", "resize")  # what spatial/commonsense edits do
OPERATIONS = BASIC_OPS + TEMPORAL_OPS + CAUSAL_OPS
# Operations that need an object picked by a referring expression.
OBJECT_OPS = ("recolour", "replace_shape", "remove", "move", "resize") + CAUSAL_OPS

BASIC_REFERRING = ("colour_shape", "colour", "shape", "position", "size", "speed")
SPATIAL_REFERRING = ("nearest_corner", "nearest_object", "farthest_from_centre")
COMMONSENSE_REFERRING = ("first_wall_hit", "most_bounces", "never_bounces", "gets_occluded")
REFERRING = BASIC_REFERRING + SPATIAL_REFERRING + COMMONSENSE_REFERRING
TIME_SHIFTS = (4, 8, 12, -4, -8)
SPEED_FACTORS = {"2x": 2.0, "0.5x": 0.5}
MOVE_SIDES = ("left", "right", "top", "bottom")
ADD_REGIONS = ("top", "bottom", "left", "right", "centre", "top-left", "top-right", "bottom-left", "bottom-right")

# (operation, "attribute" | "referring", value) triples that only the heldout split contains.
DEFAULT_HELDOUT: tuple[tuple[str, str, str], ...] = (
    ("recolour", "attribute", "purple"),
    ("add", "attribute", "cyan"),
    ("replace_shape", "attribute", "diamond"),
    ("move", "attribute", "top"),
    ("remove", "referring", "size"),
    ("move", "referring", "speed"),
    ("recolour", "referring", "nearest_corner"),
    ("resize", "referring", "first_wall_hit"),
)

# Tolerances that make a referring expression unambiguous, not merely true: the referent must win by a margin.
POSITION_MARGIN = 2.0  # px
SPEED_MARGIN = 0.3  # px/frame
HIT_MARGIN = 1.0  # frames
MIN_VISIBLE = 8  # px (over the clip) an edited object must show, so the edit is visible
MAX_ATTEMPTS = 400


@dataclass(frozen=True)
class Obj:
    """One object. `pos` is its centre (x, y) in pixels at simulated time 0, `vel` in px/frame, `radius` half its
    extent; higher `depth` is drawn in front. `walls=False` lets it pass through the walls (no bounces)."""

    id: int
    shape: str
    colour: str
    size: str
    radius: float
    pos: tuple[float, float]
    vel: tuple[float, float]
    depth: int
    walls: bool = True


@dataclass(frozen=True)
class Background:
    """`kind` one of BACKGROUNDS; `colours` one name (solid) or two (first = top/left/first stripe)."""

    kind: str
    colours: tuple[str, ...]


@dataclass(frozen=True)
class World:
    """A square `size`×`size` scene. Frame i shows simulated time `start + i`; `style` is applied last."""

    size: int
    background: Background
    objects: tuple[Obj, ...]
    start: int = 0
    style: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @staticmethod
    def from_json(text: str) -> "World":
        d = json.loads(text)
        objects = tuple(Obj(**{**o, "pos": tuple(o["pos"]), "vel": tuple(o["vel"])}) for o in d["objects"])
        bg = Background(d["background"]["kind"], tuple(d["background"]["colours"]))
        return World(size=d["size"], background=bg, objects=objects, start=d["start"], style=d["style"])

    def obj(self, oid: int) -> Obj:
        return next(o for o in self.objects if o.id == oid)


def radius_for(size_name: str, frame_size: int) -> float:
    return SIZES[size_name] * frame_size


# =========================================================================================== the simulator

@dataclass(frozen=True)
class State:
    """Per-frame simulator state of a world's objects (row k is `world.objects[k]`): the ground truth.

    pos, vel [N,T,2] (x, y); bounces [N,T] wall hits since the first frame; first_hit [N] frames from the first
    frame to the first wall contact (inf when there is none ahead); radius [N]; rgb [N,3]; depth [N]."""

    ids: np.ndarray
    pos: np.ndarray
    vel: np.ndarray
    bounces: np.ndarray
    first_hit: np.ndarray
    radius: np.ndarray
    rgb: np.ndarray
    depth: np.ndarray


def simulate(world: World, frames: int) -> State:
    """Closed-form motion with elastic wall bounces, vectorised over objects, axes and frames.

    Along one axis the centre lives in [r, size - r] (length L). Unfolded, it moves on s = p0 - r + v·t; each time
    s crosses a multiple of L it hits a wall, and the folded position is r + (s mod L), mirrored on odd laps."""
    objs = world.objects
    n = len(objs)
    t = (world.start + np.arange(frames, dtype=np.float64))[None, :, None]  # [1,T,1]
    p0 = np.array([o.pos for o in objs], dtype=np.float64).reshape(n, 1, 2)
    v = np.array([o.vel for o in objs], dtype=np.float64).reshape(n, 1, 2)
    r = np.array([o.radius for o in objs], dtype=np.float64).reshape(n, 1, 1)
    walls = np.array([o.walls for o in objs], dtype=bool).reshape(n, 1, 1)
    length = world.size - 2 * r
    s = p0 - r + v * t
    lap = np.floor(s / length)
    u = s - lap * length
    odd = (lap % 2) == 1
    folded = r + np.where(odd, length - u, u)
    pos = np.where(walls, folded, p0 + v * t)
    vel = np.broadcast_to(np.where(walls & odd, -v, v), pos.shape).copy()
    hits = np.abs(lap - lap[:, :1]).sum(axis=2)
    bounces = np.where(walls[:, :, 0], hits, 0).astype(np.int64)
    # Frames to the next wall contact, from the first frame: distance in s to the next multiple of L along v.
    s0, lap0 = s[:, 0, :], lap[:, 0, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        ahead = np.where(v[:, 0, :] > 0, ((lap0 + 1) * length[:, 0, :] - s0) / v[:, 0, :],
                         np.where(v[:, 0, :] < 0, (s0 - lap0 * length[:, 0, :]) / -v[:, 0, :], np.inf))
        ahead = np.where(ahead <= 0, np.where(v[:, 0, :] != 0, length[:, 0, :] / np.abs(v[:, 0, :]), np.inf), ahead)
    first_hit = np.where(walls[:, 0, 0], ahead.min(axis=1), np.inf)
    return State(ids=np.array([o.id for o in objs], dtype=np.int64), pos=pos, vel=vel, bounces=bounces,
                 first_hit=first_hit, radius=r[:, 0, 0], rgb=np.array([PALETTE[o.colour] for o in objs], np.uint8)
                 .reshape(n, 3), depth=np.array([o.depth for o in objs], dtype=np.int64))


# ============================================================================================= rendering

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


# ================================================================================== referring expressions

class _Scene:
    """A world, its render and the derived facts referring expressions are judged on."""

    def __init__(self, world: World, frames: int):
        self.world, self.frames = world, frames
        self.r = render(world, frames)
        self.index = {o.id: k for k, o in enumerate(world.objects)}
        self._hidden: dict[int, int] | None = None

    @property
    def ids(self) -> list[int]:
        return [o.id for o in self.world.objects]

    def visible(self, oid: int) -> int:
        return int((self.r.ids == oid).sum())

    def hidden(self) -> dict[int, int]:
        """Pixels of each object covered by another object, over the clip."""
        if self._hidden is None:
            self._hidden = {oid: int((fp & (self.r.ids != oid) & (self.r.ids >= 0)).sum())
                            for oid, fp in self.r.footprints.items()}
        return self._hidden


def _extreme(values: np.ndarray, ids: list[int], lowest: bool, margin: float) -> list[int]:
    """Ids that are within `margin` of the extreme in at least one frame. values [N] or [N,T]."""
    v = values if values.ndim == 2 else values[:, None]
    v = v if lowest else -v
    best = v.min(axis=0, keepdims=True)
    return [oid for oid, row in zip(ids, v <= best + margin) if row.any()]


def referents(scene: _Scene, spec: dict) -> list[int]:
    """Ids of every object the expression `spec` could mean in this clip; exactly one means unambiguous.

    Expressions about position, size, speed, distance and timing count an object as a match when it comes within a
    margin of the winner in any frame, so a unique match is a clear winner throughout the clip."""
    kind, objs, st = spec["kind"], scene.world.objects, scene.r.state
    if kind == "colour_shape":
        return [o.id for o in objs if o.colour == spec["colour"] and o.shape == spec["shape"]]
    if kind == "colour":
        return [o.id for o in objs if o.colour == spec["colour"]]
    if kind == "shape":
        return [o.id for o in objs if o.shape == spec["shape"]]
    if kind in ("position", "size"):
        group = [k for k, o in enumerate(objs) if spec.get("shape") in (None, o.shape)]
        if len(group) < 2:
            return []
        gids = [objs[k].id for k in group]
        if kind == "position":
            axis = 0 if spec["side"] in ("left", "right") else 1
            return _extreme(st.pos[group, :, axis], gids, spec["side"] in ("left", "top"), POSITION_MARGIN)
        return _extreme(st.radius[group], gids, spec["extreme"] == "smallest", 0.5)
    if len(objs) < 2:
        return []
    ids = [o.id for o in objs]
    if kind == "speed":
        speed = np.hypot(st.vel[:, 0, 0], st.vel[:, 0, 1])
        return _extreme(speed, ids, spec["extreme"] == "slowest", SPEED_MARGIN)
    if kind == "nearest_corner":
        size = scene.world.size
        corner = np.array([0.0 if "left" in spec["corner"] else size, 0.0 if "top" in spec["corner"] else size])
        return _extreme(np.linalg.norm(st.pos - corner, axis=2), ids, True, POSITION_MARGIN)
    if kind == "farthest_from_centre":
        centre = np.array([scene.world.size / 2] * 2)
        return _extreme(np.linalg.norm(st.pos - centre, axis=2), ids, False, POSITION_MARGIN)
    if kind == "nearest_object":
        anchor = referents(scene, spec["anchor"])
        if len(anchor) != 1:
            return []
        a = scene.index[anchor[0]]
        others = [k for k in range(len(objs)) if k != a]
        if len(others) < 2:
            return []
        dist = np.linalg.norm(st.pos[others] - st.pos[a][None], axis=2)
        return _extreme(dist, [objs[k].id for k in others], True, POSITION_MARGIN)
    if kind == "first_wall_hit":
        hit = np.where(st.first_hit <= scene.frames - 1, st.first_hit, np.inf)
        if not np.isfinite(hit).any():
            return []
        return _extreme(hit, ids, True, HIT_MARGIN)
    if kind == "most_bounces":
        count = st.bounces[:, -1]
        return [oid for oid, c in zip(ids, count) if c == count.max()] if count.max() >= 1 else []
    if kind == "never_bounces":
        return [oid for oid, c in zip(ids, st.bounces[:, -1]) if c == 0]
    if kind == "gets_occluded":
        return [oid for oid, px in scene.hidden().items() if px > 0]
    raise InputError(f"referring kind '{kind}' is not one of {', '.join(REFERRING)}.")


def _specs_for(scene: _Scene, o: Obj, kind: str) -> list[dict]:
    """Candidate expressions of `kind` that could single out `o` (uniqueness is checked by the caller)."""
    if kind == "colour_shape":
        return [{"kind": kind, "colour": o.colour, "shape": o.shape}]
    if kind == "colour":
        return [{"kind": kind, "colour": o.colour}]
    if kind == "shape":
        return [{"kind": kind, "shape": o.shape}]
    if kind == "position":
        return [{"kind": kind, "side": side, "shape": shape} for side in MOVE_SIDES for shape in (o.shape, None)]
    if kind == "size":
        return [{"kind": kind, "extreme": e, "shape": shape}
                for e in ("largest", "smallest") for shape in (o.shape, None)]
    if kind == "speed":
        return [{"kind": kind, "extreme": e} for e in ("fastest", "slowest")]
    if kind == "nearest_corner":
        return [{"kind": kind, "corner": c} for c in ("top-left", "top-right", "bottom-left", "bottom-right")]
    if kind == "nearest_object":
        return [{"kind": kind, "anchor": {"kind": "colour_shape", "colour": a.colour, "shape": a.shape}}
                for a in scene.world.objects if a.id != o.id]
    return [{"kind": kind}]


def referring_text(scene: _Scene, spec: dict) -> str:
    """The English noun phrase of an expression, e.g. 'the larger square', 'the object nearest the top-left corner'."""
    kind = spec["kind"]
    if kind == "colour_shape":
        return f"the {spec['colour']} {spec['shape']}"
    if kind == "colour":
        return f"the {spec['colour']} object"
    if kind == "shape":
        return f"the {spec['shape']}"
    if kind in ("position", "size"):
        noun = spec.get("shape") or "object"
        pair = sum(spec.get("shape") in (None, o.shape) for o in scene.world.objects) == 2
        if kind == "position":
            side = spec["side"]
            if pair:
                return f"the {noun} {'at the' if side in ('top', 'bottom') else 'on the'} {side}"
            return f"the {EXTREME_SIDE[side]} {noun}"
        word = {"largest": "larger", "smallest": "smaller"}[spec["extreme"]] if pair else spec["extreme"]
        return f"the {word} {noun}"
    if kind == "speed":
        word = {"fastest": "faster", "slowest": "slower"}[spec["extreme"]] if len(scene.world.objects) == 2 \
            else spec["extreme"]
        return f"the {word} object"
    if kind == "nearest_corner":
        return f"the object nearest the {spec['corner']} corner"
    if kind == "farthest_from_centre":
        return "the object farthest from the centre"
    if kind == "nearest_object":
        return f"the object closest to the {spec['anchor']['colour']} {spec['anchor']['shape']}"
    return {"first_wall_hit": "the object that will hit a wall first",
            "most_bounces": "the object that bounces off the walls most often",
            "never_bounces": "the object that never touches a wall",
            "gets_occluded": "the object that gets hidden behind another one"}[kind]


# ============================================================================ instructions and captions

TEMPLATES: dict[str, tuple[str, ...]] = {
    "recolour": ("make {ref} {colour}", "change the colour of {ref} to {colour}", "paint {ref} {colour}",
                 "turn {ref} {colour}", "recolour {ref} {colour}"),
    "replace_shape": ("turn {ref} into a {shape}", "change {ref} into a {shape}", "make {ref} a {shape} instead",
                      "replace {ref} with a {shape} of the same colour"),
    "remove": ("remove {ref}", "delete {ref}", "take {ref} out of the scene", "erase {ref}", "get rid of {ref}"),
    "add": ("add a {size} {colour} {shape} {motion} {region}", "put a {size} {colour} {shape} {region}, {motion}",
            "insert a {size} {colour} {shape} {motion} {region}"),
    "move": ("move {ref} to {dest}", "shift {ref} over to {dest}", "relocate {ref} to {dest}",
             "let {ref} travel along {dest}"),
    "resize_larger": ("make {ref} larger", "enlarge {ref}", "make {ref} bigger", "scale up {ref}"),
    "resize_smaller": ("make {ref} smaller", "shrink {ref}", "scale down {ref}", "reduce the size of {ref}"),
    "background": ("change the background to {bg}", "replace the background with {bg}", "make the background {bg}",
                   "swap the background for {bg}"),
    "style_grayscale": ("make the video black and white", "convert the video to grayscale", "turn the clip grayscale",
                        "remove all colour from the video"),
    "style_darken": ("make the video darker", "darken the whole scene", "dim the video",
                     "lower the brightness of the clip"),
    "style_invert": ("invert the colours", "turn the video into a colour negative",
                     "invert the colours of the whole clip"),
    "time_later": ("show the scene {k} frames later", "fast-forward the video by {k} frames",
                   "show what happens {k} frames from now", "skip ahead {k} frames"),
    "time_earlier": ("show the scene {k} frames earlier", "rewind the video by {k} frames",
                     "show what the scene looked like {k} frames before"),
    "no_bounce": ("what if {ref} had not bounced off the walls?", "show {ref} passing through the walls instead of "
                  "bouncing", "imagine {ref} did not bounce off the walls",
                  "what would happen if the walls did not stop {ref}?"),
    "speed_2x": ("what if {ref} had been moving twice as fast?", "show the scene as if {ref} moved at double speed",
                 "imagine {ref} travelling twice as fast"),
    "speed_0.5x": ("what if {ref} had been moving half as fast?", "show the scene as if {ref} moved at half speed",
                   "imagine {ref} travelling at half its speed"),
    "reverse_direction": ("what if {ref} had been moving in the opposite direction?",
                          "show {ref} moving the opposite way from the start",
                          "imagine {ref} had started off in the reverse direction"),
}
EXTREME_SIDE = {"left": "leftmost", "right": "rightmost", "top": "highest", "bottom": "lowest"}
MOVE_DEST = {"left": "the left side", "right": "the right side", "top": "the top", "bottom": "the bottom"}
REGION_TEXT = {"top": "at the top", "bottom": "at the bottom", "left": "on the left", "right": "on the right",
               "centre": "in the centre", "top-left": "in the top-left corner", "top-right": "in the top-right corner",
               "bottom-left": "in the bottom-left corner", "bottom-right": "in the bottom-right corner"}
STYLE_CAPTION = {"grayscale": "in black and white", "darken": "darkened", "invert": "with inverted colours"}


def _pick(rng: np.random.Generator, seq: Sequence):
    return seq[int(rng.integers(len(seq)))]


def _sentence(text: str) -> str:
    text = text[0].upper() + text[1:]
    return text if text.endswith(("?", ".")) else text + "."


def _join(clauses: list[str]) -> str:
    return clauses[0] if len(clauses) == 1 else ", ".join(clauses[:-1]) + " and " + clauses[-1]


def _bg_phrase(bg: Background) -> str:
    a, b = bg.colours[0], bg.colours[-1]
    return {"solid": f"plain {a}", "vertical_gradient": f"a vertical gradient from {a} to {b}",
            "horizontal_gradient": f"a horizontal gradient from {a} to {b}", "stripes": f"{a} and {b} stripes",
            "checker": f"a {a} and {b} checkerboard"}[bg.kind]


def _bg_caption(bg: Background) -> str:
    a, b = bg.colours[0], bg.colours[-1]
    return {"solid": f"a plain {a} background",
            "vertical_gradient": f"a background fading from {a} at the top to {b} at the bottom",
            "horizontal_gradient": f"a background fading from {a} on the left to {b} on the right",
            "stripes": f"a background of {a} and {b} vertical stripes",
            "checker": f"a {a} and {b} checkerboard background"}[bg.kind]


def _direction(vx: float, vy: float) -> str:
    """'left', 'up and to the right', ... (image y points down); 'still' when not moving."""
    if math.hypot(vx, vy) < 1e-6:
        return "still"
    angle = math.degrees(math.atan2(-vy, vx)) % 360
    return ("right", "up and to the right", "up", "up and to the left", "left", "down and to the left", "down",
            "down and to the right")[int(((angle + 22.5) % 360) // 45)]


def caption(scene: _Scene) -> str:
    """A sentence describing the objects (size, colour, shape, motion at the first frame) and the background."""
    w, st = scene.world, scene.r.state
    parts = []
    for k in np.argsort(-st.depth, kind="stable"):  # front to back
        o = w.objects[k]
        d = _direction(*st.vel[k, 0])
        speed = float(np.hypot(*st.vel[k, 0]))
        pace = "slowly " if speed < 0.8 else "quickly " if speed > 1.6 else ""
        motion = "standing still" if d == "still" else f"moving {pace}{d}"
        if not o.walls and bboxes(scene.r.footprints[o.id][-1:])[0] is None:
            motion += " out of the frame"
        parts.append(f"a {o.size} {o.colour} {o.shape} {motion}")
    text = (_join(parts) + " on " if parts else "an empty scene with ") + _bg_caption(w.background)
    if w.style:
        text += f", {STYLE_CAPTION[w.style]}"
    return _sentence(text)


# ================================================================================================ edits

@dataclass
class _Edit:
    """One operation of a clip: what it does to the world, its clause, its labels, and what `verify` needs."""

    op: str
    attribute: str
    referring: str
    clause: str
    apply: Callable[[World], World]
    region: str  # "objects" | "background" | "all"
    region_ids: tuple[int, ...] = ()  # for "objects"; empty = every object of source and target
    verify: dict = field(default_factory=dict)
    bbox_of: int | None = None  # object id whose target bbox verify reports
    source_bbox_of: int | None = None
    rgb_of: str | None = None  # colour name whose displayed rgb (after any style) verify reports ...
    rgb_key: str = "rgb"  # ... under this key
    spec: dict | None = None
    object_id: int | None = None

    def pairs(self) -> tuple[tuple[str, str, str], ...]:
        return ((self.op, "attribute", self.attribute), (self.op, "referring", self.referring))


@dataclass(frozen=True)
class _Rules:
    """Which (operation, field, value) triples are forbidden, and the one that must appear (heldout)."""

    exclude: frozenset = frozenset()
    require: tuple[str, str, str] | None = None

    def allowed(self, op: str, field_: str, values: Iterable[str]) -> list[str]:
        values = [v for v in values if (op, field_, v) not in self.exclude]
        if self.require is not None and self.require[0] == op and self.require[1] == field_:
            values = [v for v in values if v == self.require[2]]
        return values


def _replace_obj(world: World, oid: int, **changes) -> World:
    return replace(world, objects=tuple(replace(o, **changes) if o.id == oid else o for o in world.objects))


def _free_colours(world: World, also: Iterable[str] = ()) -> list[str]:
    """Palette colours that are not in the background (objects must stay visible against it)."""
    taken = set(world.background.colours) | set(also)
    return [c for c in PALETTE if c not in taken]


def _object_edit(rng: np.random.Generator, scene: _Scene, op: str, o: Obj, rules: _Rules) -> _Edit | None:
    """Build `op` on object `o` (None if it cannot apply to this object). Referring fields are filled by the caller."""
    w, oid = scene.world, o.id
    if op == "recolour":
        colours = rules.allowed(op, "attribute", [c for c in _free_colours(w) if c != o.colour])
        if not colours:
            return None
        c = _pick(rng, colours)
        return _Edit(op, c, "", _pick(rng, TEMPLATES[op]).replace("{colour}", c),
                     lambda wd: _replace_obj(wd, oid, colour=c), "objects", (oid,),
                     {"colour": c}, bbox_of=oid, rgb_of=c, rgb_key="target_rgb")
    if op == "replace_shape":
        shapes = rules.allowed(op, "attribute", [s for s in SHAPES if s != o.shape])
        if not shapes:
            return None
        s = _pick(rng, shapes)
        return _Edit(op, s, "", _pick(rng, TEMPLATES[op]).replace("{shape}", s),
                     lambda wd: _replace_obj(wd, oid, shape=s), "objects", (oid,), {"shape": s}, bbox_of=oid,
                     rgb_of=o.colour)
    if op == "remove":
        if not rules.allowed(op, "attribute", [o.colour]):
            return None
        return _Edit(op, o.colour, "", _pick(rng, TEMPLATES[op]),
                     lambda wd: replace(wd, objects=tuple(x for x in wd.objects if x.id != oid)), "objects", (oid,),
                     {"present": False}, source_bbox_of=oid, rgb_of=o.colour, rgb_key="object_rgb")
    if op == "move":
        k = scene.index[oid]
        mean = scene.r.state.pos[k].mean(axis=0) / w.size
        far = {"left": mean[0] >= 0.45, "right": mean[0] <= 0.55, "top": mean[1] >= 0.45, "bottom": mean[1] <= 0.55}
        sides = rules.allowed(op, "attribute", [s for s in MOVE_SIDES if far[s]])
        if not sides:
            return None
        side = _pick(rng, sides)
        # Pinned one pixel off that wall; the motion along the side (the other axis) is the source's, unchanged.
        edge = o.radius + 1.0
        (x, y), (vx, vy) = o.pos, o.vel
        if side in ("left", "right"):
            x, vx = (edge if side == "left" else w.size - edge), 0.0
        else:
            y, vy = (edge if side == "top" else w.size - edge), 0.0
        return _Edit(op, side, "", _pick(rng, TEMPLATES[op]).replace("{dest}", MOVE_DEST[side]),
                     lambda wd: _replace_obj(wd, oid, pos=(x, y), vel=(vx, vy)), "objects", (oid,),
                     {"side": side}, bbox_of=oid, source_bbox_of=oid, rgb_of=o.colour)
    if op == "resize":
        order = list(SIZES)
        i = order.index(o.size)
        options = [d for d, ok in (("larger", i + 1 < len(order)), ("smaller", i > 0)) if ok]
        options = rules.allowed(op, "attribute", options)
        if not options:
            return None
        d = _pick(rng, options)
        new = order[i + 1] if d == "larger" else order[i - 1]
        r = radius_for(new, w.size)
        # Same centre and velocity at the first frame (pushed off the walls if now too close), then re-simulated.
        k, st = scene.index[oid], scene.r.state
        vel = (float(st.vel[k, 0, 0]), float(st.vel[k, 0, 1]))
        first = [float(np.clip(p, r + 0.5, w.size - r - 0.5)) for p in st.pos[k, 0]]
        pos0 = (first[0] - vel[0] * w.start, first[1] - vel[1] * w.start)
        return _Edit(op, d, "", _pick(rng, TEMPLATES[f"resize_{d}"]),
                     lambda wd: _replace_obj(wd, oid, size=new, radius=r, pos=pos0, vel=vel), "objects", (oid,),
                     {"scale": d, "size": new}, bbox_of=oid, source_bbox_of=oid, rgb_of=o.colour)
    if op == "no_bounce":
        bounced = o.walls and scene.r.state.bounces[scene.index[oid], -1] >= 1
        if not bounced or not rules.allowed(op, "attribute", ["walls"]):
            return None
        return _Edit(op, "walls", "", _pick(rng, TEMPLATES[op]), lambda wd: _replace_obj(wd, oid, walls=False),
                     "objects", (oid,), {"walls": False}, bbox_of=oid, source_bbox_of=oid, rgb_of=o.colour)
    if op == "speed_change":
        factors = rules.allowed(op, "attribute", list(SPEED_FACTORS))
        if not factors:
            return None
        name = _pick(rng, factors)
        f = SPEED_FACTORS[name]
        vel = (o.vel[0] * f, o.vel[1] * f)
        return _Edit(op, name, "", _pick(rng, TEMPLATES[f"speed_{name}"]), lambda wd: _replace_obj(wd, oid, vel=vel),
                     "objects", (oid,), {"speed_factor": f}, bbox_of=oid, source_bbox_of=oid, rgb_of=o.colour)
    if op == "reverse_direction":
        if not rules.allowed(op, "attribute", ["direction"]):
            return None
        vel = (-o.vel[0], -o.vel[1])
        return _Edit(op, "direction", "", _pick(rng, TEMPLATES[op]), lambda wd: _replace_obj(wd, oid, vel=vel),
                     "objects", (oid,), {"reversed": True}, bbox_of=oid, source_bbox_of=oid, rgb_of=o.colour)
    raise AssertionError(op)


def _with_referent(rng: np.random.Generator, scene: _Scene, op: str, kinds: Sequence[str], rules: _Rules,
                   taken: set[int], edited: _Scene | None = None) -> _Edit | None:
    """Pick an object by an unambiguous expression of one of `kinds` and build `op` on it.

    `edited` (hybrids): the scene after the instruction's earlier operations; the expression must single out the
    same object there too, so reading the instruction step by step or all at once finds the same object."""
    kinds = rules.allowed(op, "referring", kinds)
    for kind in rng.permutation(np.array(kinds, dtype=object)) if kinds else ():
        options = [(o, spec) for o in scene.world.objects if o.id not in taken
                   for spec in _specs_for(scene, o, kind) if referents(scene, spec) == [o.id]
                   and (edited is None or referents(edited, spec) == [o.id])]
        for i in rng.permutation(len(options)):
            o, spec = options[i]
            if scene.visible(o.id) < MIN_VISIBLE:
                continue
            edit = _object_edit(rng, scene, op, o, rules)
            if edit is None:
                continue
            ref = referring_text(scene, spec)
            edit.clause = edit.clause.replace("{ref}", ref)
            edit.referring, edit.spec, edit.object_id = str(kind), spec, o.id
            return edit
    return None


def _add_edit(rng: np.random.Generator, scene: _Scene, rules: _Rules) -> _Edit | None:
    w = scene.world
    colours = rules.allowed("add", "attribute", _free_colours(w))
    if not colours or not rules.allowed("add", "referring", ["none"]):
        return None
    colour, shape, size_name, region = _pick(rng, colours), _pick(rng, SHAPES), _pick(rng, list(SIZES)), \
        _pick(rng, ADD_REGIONS)
    r = radius_for(size_name, w.size)
    edge, s = r + 1.5, w.size
    mid = float(rng.uniform(0.35, 0.65)) * s
    x = {"left": edge, "right": s - edge}.get(region.split("-")[-1], mid)
    y = {"top": edge, "bottom": s - edge}.get(region.split("-")[0], mid)
    if region == "centre":
        x, y = s / 2 + float(rng.uniform(-2, 2)), s / 2 + float(rng.uniform(-2, 2))
    directions = {"top": ("left", "right", "still"), "bottom": ("left", "right", "still"),
                  "left": ("up", "down", "still"), "right": ("up", "down", "still"),
                  "centre": ("left", "right", "up", "down", "still")}.get(region, ("still",))
    direction = _pick(rng, directions)
    vx, vy = {"left": (-ADD_SPEED, 0.0), "right": (ADD_SPEED, 0.0), "up": (0.0, -ADD_SPEED),
              "down": (0.0, ADD_SPEED), "still": (0.0, 0.0)}[direction]
    oid = max((o.id for o in w.objects), default=-1) + 1
    depth = max((o.depth for o in w.objects), default=-1) + 1
    obj = Obj(id=oid, shape=shape, colour=colour, size=size_name, radius=r,
              pos=(x - vx * w.start, y - vy * w.start), vel=(vx, vy), depth=depth)
    motion = "standing still" if direction == "still" else f"moving {direction}"
    clause = _pick(rng, TEMPLATES["add"]).format(size=size_name, colour=colour, shape=shape, motion=motion,
                                                 region=REGION_TEXT[region])
    return _Edit("add", colour, "none", clause, lambda wd: replace(wd, objects=wd.objects + (obj,)), "objects",
                 (oid,), {"present": True, "shape": shape, "colour": colour, "size": size_name, "region": region,
                          "direction": direction}, bbox_of=oid, rgb_of=colour, object_id=oid)


def _global_edit(rng: np.random.Generator, scene: _Scene, op: str, rules: _Rules) -> _Edit | None:
    w = scene.world
    if not rules.allowed(op, "referring", ["none"]):
        return None
    if op == "background":
        kinds = rules.allowed(op, "attribute", BACKGROUNDS)
        colours = _free_colours(replace(w, background=Background("solid", ())), {o.colour for o in w.objects})
        if not kinds or len(colours) < 2:
            return None
        kind = _pick(rng, kinds)
        picked = rng.permutation(len(colours))[: 1 if kind == "solid" else 2]
        bg = Background(kind, tuple(colours[i] for i in picked))
        if bg == w.background:
            return None
        return _Edit(op, kind, "none", _pick(rng, TEMPLATES[op]).format(bg=_bg_phrase(bg)),
                     lambda wd: replace(wd, background=bg), "background", (),
                     {"background": {"kind": kind, "colours": list(bg.colours)}})
    if op == "style":
        styles = rules.allowed(op, "attribute", STYLES)
        if not styles or w.style is not None:
            return None
        style = _pick(rng, styles)
        return _Edit(op, style, "none", _pick(rng, TEMPLATES[f"style_{style}"]),
                     lambda wd: replace(wd, style=style), "all", (), {"style": style})
    if op == "time_shift":
        shifts = rules.allowed(op, "attribute", [f"{k:+d}" for k in TIME_SHIFTS])
        if not shifts:
            return None
        name = _pick(rng, shifts)
        k = int(name)
        template = TEMPLATES["time_later" if k > 0 else "time_earlier"]
        return _Edit(op, name, "none", _pick(rng, template).format(k=abs(k)),
                     lambda wd: replace(wd, start=wd.start + k), "objects", (), {"frames": k})
    raise AssertionError(op)


# ================================================================================================ clips

@dataclass
class Clip:
    """One paired edit, in memory. Frames are uint8 [T,H,W,3]; mask bool [T,H,W] (True = edited).

    `world`/`target_world` are the simulator inputs (`render(world, T)` reproduces `source`); `background` is the
    target world's background image [H,W,3]; `refs` the referring expressions used ({"kind", ..., "object": id});
    `pairs` the (operation, "attribute"|"referring", value) triples the split rules look at."""

    source: np.ndarray
    target: np.ndarray
    mask: np.ndarray
    instruction: str
    source_caption: str
    target_caption: str
    type: str
    operation: str
    attribute: str
    referring: str
    verify: dict
    world: World
    target_world: World
    background: np.ndarray
    refs: tuple[dict, ...]
    pairs: tuple[tuple[str, str, str], ...]

    def record(self) -> dict:
        """The manifest fields of this clip, without media paths."""
        return {"instruction": self.instruction, "source_caption": self.source_caption,
                "target_caption": self.target_caption, "type": self.type, "operation": self.operation,
                "attribute": self.attribute, "referring": self.referring, "verify": self.verify}


def _feasible_ops(category: str, ops: Sequence[str]) -> list[str]:
    pool = {"basic": BASIC_OPS, "hybrid": BASIC_OPS, "temporal": TEMPORAL_OPS, "causal": CAUSAL_OPS,
            "spatial": REASONING_OPS, "commonsense": REASONING_OPS}[category]
    return [op for op in pool if op in ops]


def _category_can(category: str, ops: Sequence[str], pair: tuple[str, str, str] | None) -> bool:
    """Whether `category` (restricted to `ops`) can produce a clip containing `pair`."""
    feasible = _feasible_ops(category, ops)
    if len(feasible) < (2 if category == "hybrid" else 1):
        return False
    if pair is None:
        return True
    op, field_, value = pair
    if op not in feasible:
        return False
    if field_ == "attribute":
        return True
    kinds = {"spatial": SPATIAL_REFERRING, "commonsense": COMMONSENSE_REFERRING}.get(category, BASIC_REFERRING)
    return value in kinds if op in OBJECT_OPS else value == "none"


def _random_world(rng: np.random.Generator, size: int, min_objects: int = 1) -> World:
    kind = _pick(rng, BACKGROUNDS)
    bg_colours = tuple(str(c) for c in rng.permutation(list(PALETTE))[: 1 if kind == "solid" else 2])
    bg = Background(kind, bg_colours)
    free = [c for c in PALETTE if c not in bg_colours]
    n = int(rng.integers(max(1, min_objects), 5))
    depths = rng.permutation(n)
    objects = []
    for i in range(n):
        size_name = _pick(rng, list(SIZES))
        r = radius_for(size_name, size)
        pos = (float(rng.uniform(r + 0.5, size - r - 0.5)), float(rng.uniform(r + 0.5, size - r - 0.5)))
        speed, angle = float(rng.uniform(MIN_SPEED, MAX_SPEED)), float(rng.uniform(0, 2 * math.pi))
        objects.append(Obj(id=i, shape=_pick(rng, SHAPES), colour=_pick(rng, free), size=size_name, radius=r,
                           pos=pos, vel=(speed * math.cos(angle), speed * math.sin(angle)), depth=int(depths[i])))
    return World(size=size, background=bg, objects=tuple(objects))


def _plan(rng: np.random.Generator, category: str, ops: Sequence[str], rules: _Rules) -> list[str]:
    """The operation(s) of a clip, chosen before any world is drawn (so their mix follows the sampling)."""
    feasible = _feasible_ops(category, ops)
    req = rules.require[0] if rules.require else None
    if category != "hybrid":
        return [req] if req else [_pick(rng, feasible)]
    count = 3 if len(feasible) >= 3 and rng.random() < 0.3 else 2
    rest = [op for op in feasible if op != req]
    chosen = [str(op) for op in rng.permutation(np.array(rest, dtype=object))[: count - (req is not None)]]
    plan = ([req] if req else []) + chosen
    return sorted(plan, key=lambda op: op == "style")  # a style applies to the edited scene: last


def _build_edits(rng: np.random.Generator, scene: _Scene, category: str, plan: list[str], rules: _Rules
                 ) -> list[_Edit] | None:
    kinds = {"spatial": SPATIAL_REFERRING, "commonsense": COMMONSENSE_REFERRING}.get(category, BASIC_REFERRING)
    edits: list[_Edit] = []
    taken: set[int] = set()
    world = scene.world
    for op in plan:
        # The required triple binds one operation of the plan: the first one with its name.
        own = rules if rules.require and rules.require[0] == op and not any(e.op == op for e in edits) \
            else _Rules(rules.exclude)
        if op in OBJECT_OPS:
            edited = _Scene(world, scene.frames) if edits and world != scene.world else None
            edit = _with_referent(rng, scene, op, kinds, own, taken, edited)
        elif op == "add":
            edit = _add_edit(rng, scene, own)
        else:
            edit = _global_edit(rng, scene, op, own)
        if edit is None:
            return None
        if edit.object_id is not None:
            taken.add(edit.object_id)
        edits.append(edit)
        world = edit.apply(world)
    return edits


def _mask(src: Rendered, tgt: Rendered, edit: _Edit) -> np.ndarray:
    if edit.region == "all":
        return np.ones(src.ids.shape, dtype=bool)
    if edit.region == "background":
        return (src.ids == -1) | (tgt.ids == -1)
    if not edit.region_ids:
        return (src.ids >= 0) | (tgt.ids >= 0)
    region = np.zeros(src.ids.shape, dtype=bool)
    for oid in edit.region_ids:
        region |= src.ids == oid
        region |= tgt.ids == oid
    return region


def make_clip(rng: np.random.Generator, *, frames: int = 17, size: int = 64, categories: Sequence[str] = CATEGORIES,
              ops: Sequence[str] | None = None, category: str | None = None,
              require: tuple[str, str, str] | None = None, exclude: Iterable[tuple[str, str, str]] = ()) -> Clip:
    """One synthetic paired edit, drawn from `rng` alone (same generator state → identical arrays and text).

    `category` (else drawn from `categories`) and `ops` (default: all) restrict what is made; `exclude` lists
    (operation, "attribute"|"referring", value) triples that must not appear, `require` one that must."""
    ops = tuple(OPERATIONS if ops is None else ops)
    rules = _Rules(frozenset(map(tuple, exclude)), tuple(require) if require else None)
    if category is None:
        usable = [c for c in categories if _category_can(c, ops, rules.require)]
        if not usable:
            raise InputError(f"no category of {list(categories)} can make operations {list(ops)}"
                             + (f" with {rules.require}" if rules.require else "") + ".")
        category = _pick(rng, usable)
    elif not _category_can(category, ops, rules.require):
        raise InputError(f"category '{category}' cannot make operations {list(ops)}"
                         + (f" with {rules.require}" if rules.require else "") + ".")
    plan = _plan(rng, category, ops, rules)
    min_objects = sum(op in OBJECT_OPS for op in plan)
    for _ in range(MAX_ATTEMPTS):
        src = _Scene(_random_world(rng, size, min_objects), frames)
        edits = _build_edits(rng, src, category, plan, rules)
        if edits is None:
            continue
        target_world = src.world
        for e in edits:
            target_world = e.apply(target_world)
        tgt = _Scene(target_world, frames)
        channels = src.r.rgb != tgt.r.rgb
        diff = channels[..., 0] | channels[..., 1] | channels[..., 2]
        regions = [_mask(src.r, tgt.r, e) for e in edits]
        if not all((diff & reg).any() for reg in regions):
            continue  # an edit with no visible effect (e.g. hidden behind another object the whole clip)
        if any(e.bbox_of is not None and e.op != "no_bounce" and tgt.visible(e.bbox_of) < MIN_VISIBLE for e in edits):
            continue
        mask = diff.copy()
        for reg in regions:
            mask |= reg
        return _assemble(category, edits, src, tgt, mask)
    raise RuntimeError(f"no {category} clip with {plan} after {MAX_ATTEMPTS} worlds; the constraints are too tight.")


def _assemble(category: str, edits: list[_Edit], src: _Scene, tgt: _Scene, mask: np.ndarray) -> Clip:
    verify: dict[str, dict] = {}
    for e in edits:
        v = dict(e.verify)
        if e.rgb_of is not None:  # a removed object's colour is the one it showed in the source
            style = src.world.style if e.rgb_key == "object_rgb" else tgt.world.style
            v[e.rgb_key] = apply_style(np.array(PALETTE[e.rgb_of], np.uint8), style).tolist()
        if e.bbox_of is not None:
            v["bbox"] = bboxes(tgt.r.footprints[e.bbox_of])
        if e.source_bbox_of is not None:
            v["source_bbox"] = bboxes(src.r.footprints[e.source_bbox_of])
        verify[e.op] = v
    instruction = _sentence(_join([e.clause for e in edits]))
    refs = tuple({**e.spec, "object": e.object_id} for e in edits if e.spec is not None)
    return Clip(source=src.r.rgb, target=tgt.r.rgb, mask=mask, instruction=instruction,
                source_caption=caption(src), target_caption=caption(tgt), type=category,
                operation="+".join(e.op for e in edits), attribute="+".join(e.attribute for e in edits),
                referring="+".join(e.referring for e in edits), verify=verify, world=src.world,
                target_world=tgt.world, background=tgt.r.background, refs=refs,
                pairs=tuple(p for e in edits for p in e.pairs()))


# =========================================================================================== data sets

SPLITS = ("train", "val", "heldout")
FORMATS = ("mp4", "npz")
MP4_ADVICE_CLIPS = 5000  # above this, generate suggests npz


def split_counts(n: int, splits: Sequence[float]) -> dict[str, int]:
    """Clips per split: proportional to `splits`, remainders to the largest fractions (sums to n)."""
    if len(splits) != 3 or any(not math.isfinite(f) or f < 0 for f in splits) or sum(splits) <= 0:
        raise InputError(f"splits={tuple(splits)} must be three non-negative fractions (train, val, heldout) "
                         "with a positive sum, e.g. (0.8, 0.1, 0.1).")
    total = sum(splits)
    exact = [n * f / total for f in splits]
    counts = [int(math.floor(x)) for x in exact]
    for i in sorted(range(3), key=lambda i: counts[i] - exact[i])[: n - sum(counts)]:
        counts[i] += 1
    return dict(zip(SPLITS, counts))


@contextlib.contextmanager
def _one_torch_thread():
    """write_video converts frames with torch; on 64x64 frames its thread pool costs more than it saves
    (measured 4-5x slower with 2 threads on a busy 2-core machine)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _write_mp4s(folder: Path, stem: str, clip: Clip, fps: float) -> dict[str, str]:
    import torch

    from .video import write_video

    mask_rgb = np.repeat((clip.mask.astype(np.uint8) * 255)[..., None], 3, axis=-1)
    out = {}
    for name, arr in (("source_video", clip.source), ("target_video", clip.target), ("mask_video", mask_rgb)):
        path = folder / f"{stem}_{name.removesuffix('_video')}.mp4"
        write_video(path, torch.from_numpy(arr).float().div_(255.0), fps)
        out[name] = f"{folder.name}/{path.name}"
    return out


def _write_npz(folder: Path, stem: str, clip: Clip) -> dict[str, str]:
    """What np.savez_compressed writes (np.load reads it), at zlib level 3: 2x faster than its level 6 for
    files ~1.5x larger (about 11 KB per 64x64x17 clip)."""
    path = folder / f"{stem}.npz"
    arrays = {"source": clip.source, "target": clip.target, "mask": clip.mask.astype(np.uint8),
              "world": np.array(clip.world.to_json()), "target_world": np.array(clip.target_world.to_json())}
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED,
                                                   compresslevel=3) as zf:
        for name, arr in arrays.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, arr, allow_pickle=False)
    return {"npz": f"{folder.name}/{path.name}"}




@dataclass(frozen=True)
class _ClipJob:
    """Make and write clip i of a data set (picklable: worker processes run it)."""

    out: Path
    seed: int
    frames: int
    size: int
    categories: tuple[str, ...]
    ops: tuple[str, ...]
    held: tuple
    reachable: tuple
    format: str
    fps: float

    def __call__(self, item: tuple[int, tuple[str, int]]) -> str:
        i, (split, j) = item
        rng = np.random.default_rng([self.seed, i])
        # Heldout clip j carries held-out triple j mod len: every triple gets an equal share.
        require = self.reachable[j % len(self.reachable)] if split == "heldout" else None
        clip = make_clip(rng, frames=self.frames, size=self.size, categories=self.categories, ops=self.ops,
                         require=require, exclude=() if split == "heldout" else self.held)
        stem, folder = f"{j:06d}", self.out / split
        paths = _write_npz(folder, stem, clip) if self.format == "npz" else _write_mp4s(folder, stem, clip, self.fps)
        return json.dumps({**paths, **clip.record()}, ensure_ascii=False)


@contextlib.contextmanager
def _pool(workers: int):
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(workers, initializer=_worker_init) as pool:
        yield pool


def _worker_init() -> None:
    """One torch thread per worker: N workers each with a full thread pool made mp4 writing 50x slower on a
    16-core machine (112 clips/minute with 14 workers, measured)."""
    import torch

    torch.set_num_threads(1)


def _check_names(kind: str, given: Sequence[str], known: Sequence[str]) -> tuple[str, ...]:
    bad = [x for x in given if x not in known]
    if bad or not given:
        raise InputError(f"{kind} {list(given)}: {'unknown ' + ', '.join(bad) if bad else 'none given'}; "
                         f"choose from {', '.join(known)}.")
    return tuple(given)


def generate(out_dir: PathLike, *, n: int, seed: int, frames: int = 17, size: int = 64,
             categories: Sequence[str] = CATEGORIES, ops: Sequence[str] | None = None, format: str = "mp4",
             splits: Sequence[float] = (0.8, 0.1, 0.1), heldout: Iterable[tuple[str, str, str]] = DEFAULT_HELDOUT,
             fps: float = 8.0, overwrite: bool = False, workers: int = 1,
             progress: Callable[[int, int], None] | None = None) -> dict[str, Path]:
    """Write `n` clips into train / val / heldout manifests under `out_dir`; return {split: manifest path}.

    Clip i is `make_clip(np.random.default_rng([seed, i]), ...)`, so a seed fixes every array and text, and
    clips do not depend on each other (so `workers` processes give the same files). Train and val never contain a `heldout` triple; every heldout clip
    contains at least one (in turn, among those the categories and ops can make). Splits with no clips
    get no manifest. `synth_config.json` records the seed and settings. An `out_dir` that already holds a
    synth_config.json is refused unless `overwrite` (stale media of a larger earlier run are not deleted)."""
    if not isinstance(n, int) or n < 1:
        raise InputError(f"n={n} must be a positive number of clips.")
    if frames < 2 or size < 32:
        raise InputError(f"frames={frames} and size={size}: clips need at least 2 frames and 32x32 pixels "
                         "(objects are 7-14% of the side).")
    if format not in FORMATS:
        raise InputError(f"format='{format}' must be 'mp4' (load_manifest records) or 'npz' (exact uint8 arrays).")
    if format == "mp4" and size % 2:
        raise InputError(f"size={size}: mp4 (yuv420p) needs an even size; use {size + 1} or format='npz'.")
    categories = _check_names("categories", list(categories), CATEGORIES)
    ops = _check_names("ops", list(OPERATIONS if ops is None else ops), OPERATIONS)
    held = tuple(tuple(h) for h in heldout)
    for op, field_, value in held:
        if op not in OPERATIONS or field_ not in ("attribute", "referring"):
            raise InputError(f"heldout triple {(op, field_, value)} must be (operation, 'attribute'|'referring', "
                             f"value) with an operation of {', '.join(OPERATIONS)}.")
    usable = [c for c in categories if _category_can(c, ops, None)]
    if not usable:
        raise InputError(f"categories {list(categories)} cannot make any of the operations {list(ops)}.")
    if len(usable) < len(categories):
        log.warning("categories %s make none of the operations %s; skipped.",
                    sorted(set(categories) - set(usable)), list(ops))
    reachable = [h for h in held if any(_category_can(c, ops, h) for c in usable)]
    counts = split_counts(n, splits)
    if counts["heldout"] and not reachable:
        raise InputError(f"no heldout triple of {list(held)} can be made with categories {usable} and ops {list(ops)}; "
                         "pass heldout triples these can make, or splits with no heldout share.")
    if format == "mp4" and n > MP4_ADVICE_CLIPS:
        log.warning("%d clips as mp4 take about %.0f minutes (about 500 clips/minute on 2 cores); format='npz' is "
                    "about 10x faster and exact.", n, n / 500)
    out = Path(out_dir).expanduser()
    if (out / "synth_config.json").exists() and not overwrite:
        raise InputError(f"{out}: already holds a synthetic data set (synth_config.json). Pick a new folder, or "
                         "pass overwrite=True (--overwrite) to write over it.")
    for split, count in counts.items():
        if count:
            (out / split).mkdir(parents=True, exist_ok=True)

    labels = [(s, j) for s in SPLITS for j in range(counts[s])]
    job = _ClipJob(out, seed, frames, size, tuple(usable), tuple(ops), held, tuple(reachable), format, fps)
    records: dict[str, list[str]] = {s: [] for s in SPLITS}
    writer = contextlib.nullcontext() if format == "npz" else _one_torch_thread()
    with writer, (_pool(workers) if workers > 1 else contextlib.nullcontext()) as pool:
        lines = pool.imap(job, enumerate(labels), chunksize=16) if pool is not None else map(job, enumerate(labels))
        for i, ((split, _), line) in enumerate(zip(labels, lines)):
            records[split].append(line)
            if progress is not None:
                progress(i + 1, n)
    manifests: dict[str, Path] = {}
    for split in SPLITS:
        if records[split]:
            manifests[split] = out / f"{split}.jsonl"
            write_text_atomic(manifests[split], "\n".join(records[split]) + "\n")
    config = {"generator": "viva_core.synth", "version": 1, "seed": seed, "n": n, "frames": frames, "size": size,
              "fps": fps, "format": format, "categories": list(usable), "ops": list(ops),
              "splits": dict(zip(SPLITS, map(float, splits))), "counts": counts,
              "heldout": [list(h) for h in held], "palette": {k: list(v) for k, v in PALETTE.items()},
              "shapes": list(SHAPES), "sizes": SIZES, "manifests": {k: v.name for k, v in manifests.items()},
              "clip_seed": "numpy.random.default_rng([seed, clip_index]); clip_index runs over train, val, heldout"}
    write_text_atomic(out / "synth_config.json", json.dumps(config, indent=2) + "\n")
    return manifests
