"""Instruction templates (paraphrases per operation) and captions written from the simulator state."""

from __future__ import annotations

import math

import numpy as np

from .referring import _Scene
from .rendering import bboxes
from .world import Background

TEMPLATES: dict[str, tuple[str, ...]] = {
    "recolour": (
        "make {ref} {colour}",
        "change the colour of {ref} to {colour}",
        "paint {ref} {colour}",
        "turn {ref} {colour}",
        "recolour {ref} {colour}",
    ),
    "replace_shape": (
        "turn {ref} into a {shape}",
        "change {ref} into a {shape}",
        "make {ref} a {shape} instead",
        "replace {ref} with a {shape} of the same colour",
    ),
    "remove": ("remove {ref}", "delete {ref}", "take {ref} out of the scene", "erase {ref}", "get rid of {ref}"),
    "add": (
        "add a {size} {colour} {shape} {motion} {region}",
        "put a {size} {colour} {shape} {region}, {motion}",
        "insert a {size} {colour} {shape} {motion} {region}",
    ),
    "move": (
        "move {ref} to {dest}",
        "shift {ref} over to {dest}",
        "relocate {ref} to {dest}",
        "let {ref} travel along {dest}",
    ),
    "resize_larger": ("make {ref} larger", "enlarge {ref}", "make {ref} bigger", "scale up {ref}"),
    "resize_smaller": ("make {ref} smaller", "shrink {ref}", "scale down {ref}", "reduce the size of {ref}"),
    "background": (
        "change the background to {bg}",
        "replace the background with {bg}",
        "make the background {bg}",
        "swap the background for {bg}",
    ),
    "style_grayscale": (
        "make the video black and white",
        "convert the video to grayscale",
        "turn the clip grayscale",
        "remove all colour from the video",
    ),
    "style_darken": (
        "make the video darker",
        "darken the whole scene",
        "dim the video",
        "lower the brightness of the clip",
    ),
    "style_invert": (
        "invert the colours",
        "turn the video into a colour negative",
        "invert the colours of the whole clip",
    ),
    "time_later": (
        "show the scene {k} frames later",
        "fast-forward the video by {k} frames",
        "show what happens {k} frames from now",
        "skip ahead {k} frames",
    ),
    "time_earlier": (
        "show the scene {k} frames earlier",
        "rewind the video by {k} frames",
        "show what the scene looked like {k} frames before",
    ),
    "no_bounce": (
        "what if {ref} had not bounced off the walls?",
        "show {ref} passing through the walls instead of bouncing",
        "imagine {ref} did not bounce off the walls",
        "what would happen if the walls did not stop {ref}?",
    ),
    "speed_2x": (
        "what if {ref} had been moving twice as fast?",
        "show the scene as if {ref} moved at double speed",
        "imagine {ref} travelling twice as fast",
    ),
    "speed_0.5x": (
        "what if {ref} had been moving half as fast?",
        "show the scene as if {ref} moved at half speed",
        "imagine {ref} travelling at half its speed",
    ),
    "reverse_direction": (
        "what if {ref} had been moving in the opposite direction?",
        "show {ref} moving the opposite way from the start",
        "imagine {ref} had started off in the reverse direction",
    ),
}

MOVE_DEST = {"left": "the left side", "right": "the right side", "top": "the top", "bottom": "the bottom"}
REGION_TEXT = {
    "top": "at the top",
    "bottom": "at the bottom",
    "left": "on the left",
    "right": "on the right",
    "centre": "in the centre",
    "top-left": "in the top-left corner",
    "top-right": "in the top-right corner",
    "bottom-left": "in the bottom-left corner",
    "bottom-right": "in the bottom-right corner",
}
STYLE_CAPTION = {"grayscale": "in black and white", "darken": "darkened", "invert": "with inverted colours"}


def _sentence(text: str) -> str:
    text = text[0].upper() + text[1:]
    return text if text.endswith(("?", ".")) else text + "."


def _join(clauses: list[str]) -> str:
    return clauses[0] if len(clauses) == 1 else ", ".join(clauses[:-1]) + " and " + clauses[-1]


def _bg_phrase(bg: Background) -> str:
    a, b = bg.colours[0], bg.colours[-1]
    return {
        "solid": f"plain {a}",
        "vertical_gradient": f"a vertical gradient from {a} to {b}",
        "horizontal_gradient": f"a horizontal gradient from {a} to {b}",
        "stripes": f"{a} and {b} stripes",
        "checker": f"a {a} and {b} checkerboard",
    }[bg.kind]


def _bg_caption(bg: Background) -> str:
    a, b = bg.colours[0], bg.colours[-1]
    return {
        "solid": f"a plain {a} background",
        "vertical_gradient": f"a background fading from {a} at the top to {b} at the bottom",
        "horizontal_gradient": f"a background fading from {a} on the left to {b} on the right",
        "stripes": f"a background of {a} and {b} vertical stripes",
        "checker": f"a {a} and {b} checkerboard background",
    }[bg.kind]


def _direction(vx: float, vy: float) -> str:
    """'left', 'up and to the right', ... (image y points down); 'still' when not moving."""
    if math.hypot(vx, vy) < 1e-6:
        return "still"
    angle = math.degrees(math.atan2(-vy, vx)) % 360
    return (
        "right",
        "up and to the right",
        "up",
        "up and to the left",
        "left",
        "down and to the left",
        "down",
        "down and to the right",
    )[int(((angle + 22.5) % 360) // 45)]


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
