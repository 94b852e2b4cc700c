"""Edits on the world: each operation as a change of the simulator's input, with its clause, labels and
what `verify` needs; the split rules that forbid or require (operation, field, value) triples."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from .language import MOVE_DEST, REGION_TEXT, TEMPLATES, _bg_phrase
from .referring import _Scene, _specs_for, referents, referring_text
from .world import BACKGROUNDS, MOVE_SIDES, PALETTE, SHAPES, SIZES, STYLES, Background, Obj, World, _pick, radius_for

ADD_SPEED = 1.0

TIME_SHIFTS = (4, 8, 12, -4, -8)
SPEED_FACTORS = {"2x": 2.0, "0.5x": 0.5}

ADD_REGIONS = ("top", "bottom", "left", "right", "centre", "top-left", "top-right", "bottom-left", "bottom-right")

MIN_VISIBLE = 8  # px (over the clip) an edited object must show, so the edit is visible


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
        return _Edit(
            op,
            c,
            "",
            _pick(rng, TEMPLATES[op]).replace("{colour}", c),
            lambda wd: _replace_obj(wd, oid, colour=c),
            "objects",
            (oid,),
            {"colour": c},
            bbox_of=oid,
            rgb_of=c,
            rgb_key="target_rgb",
        )
    if op == "replace_shape":
        shapes = rules.allowed(op, "attribute", [s for s in SHAPES if s != o.shape])
        if not shapes:
            return None
        s = _pick(rng, shapes)
        return _Edit(
            op,
            s,
            "",
            _pick(rng, TEMPLATES[op]).replace("{shape}", s),
            lambda wd: _replace_obj(wd, oid, shape=s),
            "objects",
            (oid,),
            {"shape": s},
            bbox_of=oid,
            rgb_of=o.colour,
        )
    if op == "remove":
        if not rules.allowed(op, "attribute", [o.colour]):
            return None
        return _Edit(
            op,
            o.colour,
            "",
            _pick(rng, TEMPLATES[op]),
            lambda wd: replace(wd, objects=tuple(x for x in wd.objects if x.id != oid)),
            "objects",
            (oid,),
            {"present": False},
            source_bbox_of=oid,
            rgb_of=o.colour,
            rgb_key="object_rgb",
        )
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
        return _Edit(
            op,
            side,
            "",
            _pick(rng, TEMPLATES[op]).replace("{dest}", MOVE_DEST[side]),
            lambda wd: _replace_obj(wd, oid, pos=(x, y), vel=(vx, vy)),
            "objects",
            (oid,),
            {"side": side},
            bbox_of=oid,
            source_bbox_of=oid,
            rgb_of=o.colour,
        )
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
        return _Edit(
            op,
            d,
            "",
            _pick(rng, TEMPLATES[f"resize_{d}"]),
            lambda wd: _replace_obj(wd, oid, size=new, radius=r, pos=pos0, vel=vel),
            "objects",
            (oid,),
            {"scale": d, "size": new},
            bbox_of=oid,
            source_bbox_of=oid,
            rgb_of=o.colour,
        )
    if op == "no_bounce":
        bounced = o.walls and scene.r.state.bounces[scene.index[oid], -1] >= 1
        if not bounced or not rules.allowed(op, "attribute", ["walls"]):
            return None
        return _Edit(
            op,
            "walls",
            "",
            _pick(rng, TEMPLATES[op]),
            lambda wd: _replace_obj(wd, oid, walls=False),
            "objects",
            (oid,),
            {"walls": False},
            bbox_of=oid,
            source_bbox_of=oid,
            rgb_of=o.colour,
        )
    if op == "speed_change":
        factors = rules.allowed(op, "attribute", list(SPEED_FACTORS))
        if not factors:
            return None
        name = _pick(rng, factors)
        f = SPEED_FACTORS[name]
        vel = (o.vel[0] * f, o.vel[1] * f)
        return _Edit(
            op,
            name,
            "",
            _pick(rng, TEMPLATES[f"speed_{name}"]),
            lambda wd: _replace_obj(wd, oid, vel=vel),
            "objects",
            (oid,),
            {"speed_factor": f},
            bbox_of=oid,
            source_bbox_of=oid,
            rgb_of=o.colour,
        )
    if op == "reverse_direction":
        if not rules.allowed(op, "attribute", ["direction"]):
            return None
        vel = (-o.vel[0], -o.vel[1])
        return _Edit(
            op,
            "direction",
            "",
            _pick(rng, TEMPLATES[op]),
            lambda wd: _replace_obj(wd, oid, vel=vel),
            "objects",
            (oid,),
            {"reversed": True},
            bbox_of=oid,
            source_bbox_of=oid,
            rgb_of=o.colour,
        )
    raise AssertionError(op)


def _with_referent(
    rng: np.random.Generator,
    scene: _Scene,
    op: str,
    kinds: Sequence[str],
    rules: _Rules,
    taken: set[int],
    edited: _Scene | None = None,
) -> _Edit | None:
    """Pick an object by an unambiguous expression of one of `kinds` and build `op` on it.

    `edited` (hybrids): the scene after the instruction's earlier operations; the expression must single out the
    same object there too, so reading the instruction step by step or all at once finds the same object."""
    kinds = rules.allowed(op, "referring", kinds)
    for kind in rng.permutation(np.array(kinds, dtype=object)) if kinds else ():
        options = [
            (o, spec)
            for o in scene.world.objects
            if o.id not in taken
            for spec in _specs_for(scene, o, kind)
            if referents(scene, spec) == [o.id] and (edited is None or referents(edited, spec) == [o.id])
        ]
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
    colour, shape, size_name, region = (
        _pick(rng, colours),
        _pick(rng, SHAPES),
        _pick(rng, list(SIZES)),
        _pick(rng, ADD_REGIONS),
    )
    r = radius_for(size_name, w.size)
    edge, s = r + 1.5, w.size
    mid = float(rng.uniform(0.35, 0.65)) * s
    x = {"left": edge, "right": s - edge}.get(region.split("-")[-1], mid)
    y = {"top": edge, "bottom": s - edge}.get(region.split("-")[0], mid)
    if region == "centre":
        x, y = s / 2 + float(rng.uniform(-2, 2)), s / 2 + float(rng.uniform(-2, 2))
    directions = {
        "top": ("left", "right", "still"),
        "bottom": ("left", "right", "still"),
        "left": ("up", "down", "still"),
        "right": ("up", "down", "still"),
        "centre": ("left", "right", "up", "down", "still"),
    }.get(region, ("still",))
    direction = _pick(rng, directions)
    vx, vy = {
        "left": (-ADD_SPEED, 0.0),
        "right": (ADD_SPEED, 0.0),
        "up": (0.0, -ADD_SPEED),
        "down": (0.0, ADD_SPEED),
        "still": (0.0, 0.0),
    }[direction]
    oid = max((o.id for o in w.objects), default=-1) + 1
    depth = max((o.depth for o in w.objects), default=-1) + 1
    obj = Obj(
        id=oid,
        shape=shape,
        colour=colour,
        size=size_name,
        radius=r,
        pos=(x - vx * w.start, y - vy * w.start),
        vel=(vx, vy),
        depth=depth,
    )
    motion = "standing still" if direction == "still" else f"moving {direction}"
    clause = _pick(rng, TEMPLATES["add"]).format(
        size=size_name, colour=colour, shape=shape, motion=motion, region=REGION_TEXT[region]
    )
    return _Edit(
        "add",
        colour,
        "none",
        clause,
        lambda wd: replace(wd, objects=wd.objects + (obj,)),
        "objects",
        (oid,),
        {
            "present": True,
            "shape": shape,
            "colour": colour,
            "size": size_name,
            "region": region,
            "direction": direction,
        },
        bbox_of=oid,
        rgb_of=colour,
        object_id=oid,
    )


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
        return _Edit(
            op,
            kind,
            "none",
            _pick(rng, TEMPLATES[op]).format(bg=_bg_phrase(bg)),
            lambda wd: replace(wd, background=bg),
            "background",
            (),
            {"background": {"kind": kind, "colours": list(bg.colours)}},
        )
    if op == "style":
        styles = rules.allowed(op, "attribute", STYLES)
        if not styles or w.style is not None:
            return None
        style = _pick(rng, styles)
        return _Edit(
            op,
            style,
            "none",
            _pick(rng, TEMPLATES[f"style_{style}"]),
            lambda wd: replace(wd, style=style),
            "all",
            (),
            {"style": style},
        )
    if op == "time_shift":
        shifts = rules.allowed(op, "attribute", [f"{k:+d}" for k in TIME_SHIFTS])
        if not shifts:
            return None
        name = _pick(rng, shifts)
        k = int(name)
        template = TEMPLATES["time_later" if k > 0 else "time_earlier"]
        return _Edit(
            op,
            name,
            "none",
            _pick(rng, template).format(k=abs(k)),
            lambda wd: replace(wd, start=wd.start + k),
            "objects",
            (),
            {"frames": k},
        )
    raise AssertionError(op)
