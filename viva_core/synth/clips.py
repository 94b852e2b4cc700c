"""One paired clip (`make_clip`): categories and their operations, the edit plan, the target world,
the mask and the labels."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from .edits import MIN_VISIBLE, _add_edit, _Edit, _global_edit, _Rules, _with_referent
from .language import _join, _sentence, caption
from .referring import BASIC_REFERRING, COMMONSENSE_REFERRING, SPATIAL_REFERRING, _Scene
from .rendering import Rendered, apply_style, bboxes
from .world import PALETTE, World, _pick, _random_world

CATEGORIES = ("basic", "hybrid", "temporal", "causal", "spatial", "commonsense")
BASIC_OPS = ("recolour", "replace_shape", "remove", "add", "move", "resize", "background", "style")
TEMPORAL_OPS = ("time_shift",)
CAUSAL_OPS = ("no_bounce", "speed_change", "reverse_direction")
REASONING_OPS = ("recolour", "replace_shape", "remove", "resize")  # what spatial/commonsense edits do
OPERATIONS = BASIC_OPS + TEMPORAL_OPS + CAUSAL_OPS
# Operations that need an object picked by a referring expression.
OBJECT_OPS = ("recolour", "replace_shape", "remove", "move", "resize") + CAUSAL_OPS

MAX_ATTEMPTS = 400


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
        return {
            "instruction": self.instruction,
            "source_caption": self.source_caption,
            "target_caption": self.target_caption,
            "type": self.type,
            "operation": self.operation,
            "attribute": self.attribute,
            "referring": self.referring,
            "verify": self.verify,
        }


def record_edits(record: Mapping[str, str]) -> tuple[list[str], list[str], list[str]]:
    """A manifest record's operations and their attribute and referring values, edit by edit (`Clip.record`: a hybrid
    joins each field with "+", in order). A single edit's values are taken whole: a time shift's attribute is signed
    ("+4"). A missing field reads as empty."""
    ops = record["operation"].split("+")
    attrs, refs = (
        [record.get(k, "")] if len(ops) == 1 else record.get(k, "").split("+") for k in ("attribute", "referring")
    )
    return ops, attrs, refs


def record_pairs(record: Mapping[str, str]) -> set[tuple[str, str, str]]:
    """`Clip.pairs` read back from a manifest record, so a benchmark's scores can be split by the held-out (operation,
    field, value) triples its clips carry."""
    ops, attrs, refs = record_edits(record)
    return {(o, "attribute", a) for o, a in zip(ops, attrs)} | {(o, "referring", r) for o, r in zip(ops, refs)}


def _feasible_ops(category: str, ops: Sequence[str]) -> list[str]:
    pool = {
        "basic": BASIC_OPS,
        "hybrid": BASIC_OPS,
        "temporal": TEMPORAL_OPS,
        "causal": CAUSAL_OPS,
        "spatial": REASONING_OPS,
        "commonsense": REASONING_OPS,
    }[category]
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


def _build_edits(
    rng: np.random.Generator, scene: _Scene, category: str, plan: list[str], rules: _Rules
) -> list[_Edit] | None:
    kinds = {"spatial": SPATIAL_REFERRING, "commonsense": COMMONSENSE_REFERRING}.get(category, BASIC_REFERRING)
    edits: list[_Edit] = []
    taken: set[int] = set()
    world = scene.world
    for op in plan:
        # The required triple binds one operation of the plan: the first one with its name.
        own = (
            rules
            if rules.require and rules.require[0] == op and not any(e.op == op for e in edits)
            else _Rules(rules.exclude)
        )
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


def make_clip(
    rng: np.random.Generator,
    *,
    frames: int = 17,
    size: int = 64,
    categories: Sequence[str] = CATEGORIES,
    ops: Sequence[str] | None = None,
    category: str | None = None,
    require: tuple[str, str, str] | None = None,
    exclude: Iterable[tuple[str, str, str]] = (),
) -> Clip:
    """One synthetic paired edit, drawn from `rng` alone (same generator state → identical arrays and text).

    `category` (else drawn from `categories`) and `ops` (default: all) restrict what is made; `exclude` lists
    (operation, "attribute"|"referring", value) triples that must not appear, `require` one that must."""
    ops = tuple(OPERATIONS if ops is None else ops)
    rules = _Rules(frozenset(map(tuple, exclude)), tuple(require) if require else None)
    if category is None:
        usable = [c for c in categories if _category_can(c, ops, rules.require)]
        if not usable:
            raise InputError(
                f"no category of {list(categories)} can make operations {list(ops)}"
                + (f" with {rules.require}" if rules.require else "")
                + "."
            )
        category = _pick(rng, usable)
    elif not _category_can(category, ops, rules.require):
        raise InputError(
            f"category '{category}' cannot make operations {list(ops)}"
            + (f" with {rules.require}" if rules.require else "")
            + "."
        )
    plan = _plan(rng, category, ops, rules)
    min_objects = sum(op in OBJECT_OPS for op in plan)
    for _ in range(MAX_ATTEMPTS):
        clip = _edit_scene(rng, _Scene(_random_world(rng, size, min_objects), frames), category, plan, rules)
        if clip is not None:
            return clip
    raise RuntimeError(f"no {category} clip with {plan} after {MAX_ATTEMPTS} worlds; the constraints are too tight.")


def _edit_scene(rng: np.random.Generator, src: _Scene, category: str, plan: list[str], rules: _Rules) -> Clip | None:
    """The clip of `plan` on this source scene, or None where it cannot apply or shows no visible effect."""
    edits = _build_edits(rng, src, category, plan, rules)
    if edits is None:
        return None
    target_world = src.world
    for e in edits:
        target_world = e.apply(target_world)
    tgt = _Scene(target_world, src.frames)
    channels = src.r.rgb != tgt.r.rgb
    diff = channels[..., 0] | channels[..., 1] | channels[..., 2]
    regions = [_mask(src.r, tgt.r, e) for e in edits]
    if not all((diff & reg).any() for reg in regions):
        return None  # an edit with no visible effect (e.g. hidden behind another object the whole clip)
    if any(e.bbox_of is not None and e.op != "no_bounce" and tgt.visible(e.bbox_of) < MIN_VISIBLE for e in edits):
        return None
    mask = diff.copy()
    for reg in regions:
        mask |= reg
    return _assemble(category, edits, src, tgt, mask)


def changed_objects(world: World, target_world: World) -> set[int]:
    """Ids of the source objects an edit changed or removed (what a clip's record does not name)."""
    after = {o.id: o for o in target_world.objects}
    return {o.id for o in world.objects if after.get(o.id) != o}


def another_edit(
    rng: np.random.Generator,
    world: World,
    frames: int,
    avoid: Iterable[tuple[str, str, int | None]] = (),
    exclude: Iterable[tuple[str, str, str]] = (),
    ops: Sequence[str] = OPERATIONS,
    attempts: int = 20,
) -> Clip | None:
    """One edit of the same source `world` by a single operation of `ops`, none of `avoid`'s (operation,
    attribute, object id; None: any value / object), e.g. a wrong edit of a clip for the judge; None if `attempts` draws
    found none. Rendering one costs a few ms, so the judge's loader makes it on the fly."""
    avoid = list(avoid)
    rules = _Rules(frozenset(map(tuple, exclude)))
    scene = _Scene(world, frames)
    for _ in range(attempts):
        op = _pick(rng, list(ops))
        category = "causal" if op in CAUSAL_OPS else "temporal" if op in TEMPORAL_OPS else "basic"
        clip = _edit_scene(rng, scene, category, [op], rules)
        if clip is None:
            continue
        oid = clip.refs[0]["object"] if clip.refs else None
        if any(op == a and (b is None or b == clip.attribute) and (o is None or o == oid) for a, b, o in avoid):
            continue  # the same operation and value on the same object: part of the edit it must differ from
        return clip
    return None


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
    return Clip(
        source=src.r.rgb,
        target=tgt.r.rgb,
        mask=mask,
        instruction=instruction,
        source_caption=caption(src),
        target_caption=caption(tgt),
        type=category,
        operation="+".join(e.op for e in edits),
        attribute="+".join(e.attribute for e in edits),
        referring="+".join(e.referring for e in edits),
        verify=verify,
        world=src.world,
        target_world=tgt.world,
        background=tgt.r.background,
        refs=refs,
        pairs=tuple(p for e in edits for p in e.pairs()),
    )
