"""The world: the vocabulary of scenes (palette, shapes, sizes, backgrounds, styles), its objects, and
drawing a random one from a seeded generator."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 215, 40),
    "orange": (245, 135, 30),
    "purple": (135, 60, 180),
    "cyan": (40, 200, 215),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle", "diamond", "ring")
# Object "radius" (half its extent) as a fraction of the frame side.
SIZES = {"small": 0.07, "medium": 0.1, "large": 0.14}
BACKGROUNDS = ("solid", "vertical_gradient", "horizontal_gradient", "stripes", "checker")
STYLES = ("grayscale", "darken", "invert")
MIN_SPEED, MAX_SPEED = 0.4, 2.2  # px/frame at any frame size

MOVE_SIDES = ("left", "right", "top", "bottom")


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
    def from_json(text: str) -> World:
        d = json.loads(text)
        objects = tuple(Obj(**{**o, "pos": tuple(o["pos"]), "vel": tuple(o["vel"])}) for o in d["objects"])
        bg = Background(d["background"]["kind"], tuple(d["background"]["colours"]))
        return World(size=d["size"], background=bg, objects=objects, start=d["start"], style=d["style"])

    def obj(self, oid: int) -> Obj:
        return next(o for o in self.objects if o.id == oid)


def radius_for(size_name: str, frame_size: int) -> float:
    return SIZES[size_name] * frame_size


def _pick(rng: np.random.Generator, seq: Sequence):
    return seq[int(rng.integers(len(seq)))]


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
        objects.append(
            Obj(
                id=i,
                shape=_pick(rng, SHAPES),
                colour=_pick(rng, free),
                size=size_name,
                radius=r,
                pos=pos,
                vel=(speed * math.cos(angle), speed * math.sin(angle)),
                depth=int(depths[i]),
            )
        )
    return World(size=size, background=bg, objects=tuple(objects))
