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

Speed at 64x64x17, all categories, one process, per CPU-minute (wall-clock rates depend on what else runs):
make_clip alone about 13,000 clips; generate with format="npz" about 6,900 (~11 KB a clip); with format="mp4"
(three h264 files a clip) about 840. Encoding dominates.

Where each part lives: `world` (vocabulary, objects, a random world), `simulator` (`simulate`), `rendering`
(`render`, boxes), `referring` (referring expressions), `language` (instruction templates, captions), `edits`
(operations on the world), `clips` (`make_clip`), `dataset` (`generate`). This package re-exports their public
names, so `from viva_core.synth import generate` keeps working.
"""

from __future__ import annotations

from .clips import (
    BASIC_OPS,
    CATEGORIES,
    CAUSAL_OPS,
    OBJECT_OPS,
    OPERATIONS,
    REASONING_OPS,
    TEMPORAL_OPS,
    Clip,
    make_clip,
    record_pairs,
)
from .dataset import DEFAULT_HELDOUT, FORMATS, SPLITS, generate, split_counts
from .language import REGION_TEXT, TEMPLATES, caption
from .referring import (
    BASIC_REFERRING,
    COMMONSENSE_REFERRING,
    HIT_MARGIN,
    POSITION_MARGIN,
    REFERRING,
    SPATIAL_REFERRING,
    SPEED_MARGIN,
    referents,
    referring_text,
)
from .rendering import Rendered, apply_style, background_image, bboxes, footprint, render
from .simulator import State, simulate
from .world import BACKGROUNDS, PALETTE, SHAPES, SIZES, STYLES, Background, Obj, World, radius_for

__all__ = [
    "BACKGROUNDS",
    "BASIC_OPS",
    "BASIC_REFERRING",
    "CATEGORIES",
    "CAUSAL_OPS",
    "COMMONSENSE_REFERRING",
    "DEFAULT_HELDOUT",
    "FORMATS",
    "HIT_MARGIN",
    "OBJECT_OPS",
    "OPERATIONS",
    "PALETTE",
    "POSITION_MARGIN",
    "REASONING_OPS",
    "REFERRING",
    "REGION_TEXT",
    "SHAPES",
    "SIZES",
    "SPATIAL_REFERRING",
    "SPEED_MARGIN",
    "SPLITS",
    "STYLES",
    "TEMPLATES",
    "TEMPORAL_OPS",
    "Background",
    "Clip",
    "Obj",
    "Rendered",
    "State",
    "World",
    "apply_style",
    "background_image",
    "bboxes",
    "caption",
    "footprint",
    "generate",
    "make_clip",
    "radius_for",
    "record_pairs",
    "referents",
    "referring_text",
    "render",
    "simulate",
    "split_counts",
]
