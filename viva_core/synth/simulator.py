"""The simulator: closed-form motion with elastic wall bounces; its per-frame state is the ground truth."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .world import PALETTE, World


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
        ahead = np.where(
            v[:, 0, :] > 0,
            ((lap0 + 1) * length[:, 0, :] - s0) / v[:, 0, :],
            np.where(v[:, 0, :] < 0, (s0 - lap0 * length[:, 0, :]) / -v[:, 0, :], np.inf),
        )
        ahead = np.where(ahead <= 0, np.where(v[:, 0, :] != 0, length[:, 0, :] / np.abs(v[:, 0, :]), np.inf), ahead)
    first_hit = np.where(walls[:, 0, 0], ahead.min(axis=1), np.inf)
    return State(
        ids=np.array([o.id for o in objs], dtype=np.int64),
        pos=pos,
        vel=vel,
        bounces=bounces,
        first_hit=first_hit,
        radius=r[:, 0, 0],
        rgb=np.array([PALETTE[o.colour] for o in objs], np.uint8).reshape(n, 3),
        depth=np.array([o.depth for o in objs], dtype=np.int64),
    )
