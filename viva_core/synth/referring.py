"""Referring expressions: which objects an expression could mean in a clip (`referents`, exactly one
for an unambiguous one) and its English noun phrase."""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from .rendering import render
from .world import MOVE_SIDES, Obj, World

BASIC_REFERRING = ("colour_shape", "colour", "shape", "position", "size", "speed")
SPATIAL_REFERRING = ("nearest_corner", "nearest_object", "farthest_from_centre")
COMMONSENSE_REFERRING = ("first_wall_hit", "most_bounces", "never_bounces", "gets_occluded")
REFERRING = BASIC_REFERRING + SPATIAL_REFERRING + COMMONSENSE_REFERRING

# Tolerances that make a referring expression unambiguous, not merely true: the referent must win by a margin.
POSITION_MARGIN = 2.0  # px
SPEED_MARGIN = 0.3  # px/frame
HIT_MARGIN = 1.0  # frames


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
            self._hidden = {
                oid: int((fp & (self.r.ids != oid) & (self.r.ids >= 0)).sum()) for oid, fp in self.r.footprints.items()
            }
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
        return [
            {"kind": kind, "extreme": e, "shape": shape} for e in ("largest", "smallest") for shape in (o.shape, None)
        ]
    if kind == "speed":
        return [{"kind": kind, "extreme": e} for e in ("fastest", "slowest")]
    if kind == "nearest_corner":
        return [{"kind": kind, "corner": c} for c in ("top-left", "top-right", "bottom-left", "bottom-right")]
    if kind == "nearest_object":
        return [
            {"kind": kind, "anchor": {"kind": "colour_shape", "colour": a.colour, "shape": a.shape}}
            for a in scene.world.objects
            if a.id != o.id
        ]
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
        word = (
            {"fastest": "faster", "slowest": "slower"}[spec["extreme"]]
            if len(scene.world.objects) == 2
            else spec["extreme"]
        )
        return f"the {word} object"
    if kind == "nearest_corner":
        return f"the object nearest the {spec['corner']} corner"
    if kind == "farthest_from_centre":
        return "the object farthest from the centre"
    if kind == "nearest_object":
        return f"the object closest to the {spec['anchor']['colour']} {spec['anchor']['shape']}"
    return {
        "first_wall_hit": "the object that will hit a wall first",
        "most_bounces": "the object that bounces off the walls most often",
        "never_bounces": "the object that never touches a wall",
        "gets_occluded": "the object that gets hidden behind another one",
    }[kind]


EXTREME_SIDE = {"left": "leftmost", "right": "rightmost", "top": "highest", "bottom": "lowest"}
