"""viva_core.synth: seeded synthetic paired edits whose targets, masks and labels come from the simulator.

Checks are against independent computations where one is cheap (a step-by-step bounce simulation, style
formulas, counting objects for referring expressions, the background image); CPU only, fast.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import numpy as np
import pytest

from viva_core import synth
from viva_core.cli import main
from viva_core.data import load_manifest
from viva_core.errors import InputError
from viva_core.video import probe_video, read_video

T, S = 17, 64
CATEGORY_OF = (
    {op: "basic" for op in synth.BASIC_OPS} | {"time_shift": "temporal"} | {op: "causal" for op in synth.CAUSAL_OPS}
)


def clips_for(op: str, count: int = 6, category: str | None = None) -> list[synth.Clip]:
    category = category or CATEGORY_OF[op]
    return [
        synth.make_clip(np.random.default_rng([7, i, synth.OPERATIONS.index(op)]), ops=[op], category=category)
        for i in range(count)
    ]


def check_only_inside_mask(c: synth.Clip) -> None:
    assert c.source.shape == c.target.shape == (T, S, S, 3) and c.source.dtype == c.target.dtype == np.uint8
    assert c.mask.shape == (T, S, S) and c.mask.dtype == bool
    assert c.mask.any(), c.instruction
    outside = ~c.mask
    assert (c.target[outside] == c.source[outside]).all(), c.instruction


def target_ids(c: synth.Clip) -> np.ndarray:
    return synth.render(c.target_world, T).ids


# ------------------------------------------------------------------------------------------ the simulator


def step_simulation(world: synth.World, frames: int) -> np.ndarray:
    """Independent reference: move one frame at a time, reflecting off the walls exactly at contact."""
    out = np.zeros((len(world.objects), frames, 2))
    for k, o in enumerate(world.objects):
        p, v = np.array(o.pos, float), np.array(o.vel, float)
        lo, hi = o.radius, world.size - o.radius
        for t in range(frames):
            out[k, t] = p
            p = p + v
            for a in range(2):
                while o.walls and not lo <= p[a] <= hi:
                    if p[a] > hi:
                        p[a], v[a] = 2 * hi - p[a], -v[a]
                    else:
                        p[a], v[a] = 2 * lo - p[a], -v[a]
    return out


def test_closed_form_motion_matches_step_by_step_bounces():
    for i in range(20):
        world = synth.world._random_world(np.random.default_rng(i), S)
        world = replace(world, objects=tuple(replace(o, walls=bool(k % 3)) for k, o in enumerate(world.objects)))
        st = synth.simulate(world, 60)
        np.testing.assert_allclose(st.pos, step_simulation(world, 60), atol=1e-9)
        inside = [o.walls for o in world.objects]
        r = st.radius[inside, None, None]
        assert (st.pos[inside] >= r - 1e-9).all() and (st.pos[inside] <= S - r + 1e-9).all()
        # bounces: a wall hit flips one velocity component; the count is cumulative
        flips = (np.sign(st.vel[:, 1:]) != np.sign(st.vel[:, :-1])).sum(axis=2)
        np.testing.assert_array_equal(st.bounces[:, 1:] - st.bounces[:, :-1], flips)


# --------------------------------------------------------------------------------------------- determinism


def test_same_seed_same_clip_and_different_seed_differs():
    for i in range(8):
        a, b = synth.make_clip(np.random.default_rng([3, i])), synth.make_clip(np.random.default_rng([3, i]))
        for name in ("source", "target", "mask"):
            assert np.array_equal(getattr(a, name), getattr(b, name))
        assert a.record() == b.record() and a.world == b.world and a.target_world == b.target_world
    c, d = synth.make_clip(np.random.default_rng(1)), synth.make_clip(np.random.default_rng(2))
    assert not np.array_equal(c.source, d.source)


def test_generate_npz_is_deterministic(tmp_path):
    a = synth.generate(tmp_path / "a", n=12, seed=5, format="npz")
    b = synth.generate(tmp_path / "b", n=12, seed=5, format="npz")
    assert set(a) == {"train", "val", "heldout"}
    for split in a:
        assert a[split].read_text() == b[split].read_text()
        for line in a[split].read_text().splitlines():
            rel = json.loads(line)["npz"]
            x, y = np.load(a[split].parent / rel), np.load(b[split].parent / rel)
            for key in ("source", "target", "mask"):
                assert x[key].dtype == np.uint8 and np.array_equal(x[key], y[key])
            world = synth.World.from_json(str(x["world"]))
            assert np.array_equal(synth.render(world, T).rgb, x["source"])  # the stored world is the ground truth
    config = json.loads((tmp_path / "a" / "synth_config.json").read_text())
    assert config["seed"] == 5 and config["counts"] == {"train": 10, "val": 1, "heldout": 1}
    with pytest.raises(InputError, match="already holds"):
        synth.generate(tmp_path / "a", n=2, seed=5, format="npz")


# ------------------------------------------------------------------------------------------ each operation


def test_recolour_changes_exactly_the_object_to_the_stated_colour():
    for c in clips_for("recolour"):
        check_only_inside_mask(c)
        v = c.verify["recolour"]
        assert v["target_rgb"] == list(synth.PALETTE[v["colour"]]) and v["colour"] in c.instruction
        diff = (c.source != c.target).any(-1)
        assert np.array_equal(c.mask, diff)  # every visible pixel of the object changes colour
        assert (c.target[c.mask] == v["target_rgb"]).all()


def test_replace_shape_draws_the_new_shape_in_the_stated_box():
    for c in clips_for("replace_shape"):
        check_only_inside_mask(c)
        v = c.verify["replace_shape"]
        (oid,) = [r["object"] for r in c.refs]
        obj = c.target_world.obj(oid)
        assert obj.shape == v["shape"] != c.world.obj(oid).shape and obj.colour == c.world.obj(oid).colour
        assert synth.bboxes(synth.render(c.target_world, T).footprints[oid]) == v["bbox"]


def test_remove_reveals_exactly_the_true_background():
    for c in clips_for("remove"):
        check_only_inside_mask(c)
        (oid,) = [r["object"] for r in c.refs]
        assert c.verify["remove"]["present"] is False and oid not in [o.id for o in c.target_world.objects]
        assert c.verify["remove"]["object_rgb"] == list(synth.PALETTE[c.world.obj(oid).colour])
        src_ids = synth.render(c.world, T).ids
        assert np.array_equal(c.mask, (src_ids == oid) | (c.source != c.target).any(-1))
        revealed = c.mask & (target_ids(c) == -1)
        assert revealed.any()
        bg = np.broadcast_to(synth.background_image(c.world.background, S), c.target.shape)
        assert (c.target[revealed] == bg[revealed]).all() and np.array_equal(c.background, bg[0])


def test_add_puts_the_object_where_stated():
    third = S / 3
    for c in clips_for("add", count=10):
        check_only_inside_mask(c)
        v = c.verify["add"]
        assert v["present"] and v["rgb"] == list(synth.PALETTE[v["colour"]])
        assert f"{v['colour']} {v['shape']}" in c.instruction and synth.REGION_TEXT[v["region"]] in c.instruction
        # the added object is drawn in front: the mask is exactly its pixels, all of the stated colour
        assert (c.target[c.mask] == v["rgb"]).all()
        assert synth.bboxes(c.mask) == v["bbox"]
        x0, y0, x1, y1 = v["bbox"][0]
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        region = v["region"]
        assert ("top" not in region or cy < third) and ("bottom" not in region or cy > S - third)
        assert ("left" not in region or cx < third) and ("right" not in region or cx > S - third)
        assert region != "centre" or (abs(cx - S / 2) < 4 and abs(cy - S / 2) < 4)
        later = v["bbox"][4]
        dx, dy = (later[0] + later[2]) / 2 - cx, (later[1] + later[3]) / 2 - cy
        expected = {
            "left": (dx < 0 and dy == 0),
            "right": (dx > 0 and dy == 0),
            "up": (dy < 0 and dx == 0),
            "down": (dy > 0 and dx == 0),
            "still": (dx == 0 and dy == 0),
        }
        assert expected[v["direction"]], (v["direction"], dx, dy)


def test_move_and_resize_boxes_match_verify():
    for c in clips_for("move") + clips_for("resize"):
        check_only_inside_mask(c)
        op = c.operation
        v = c.verify[op]
        (oid,) = [r["object"] for r in c.refs]
        tr = synth.render(c.target_world, T)
        assert synth.bboxes(tr.footprints[oid]) == v["bbox"]
        assert synth.bboxes(synth.render(c.world, T).footprints[oid]) == v["source_bbox"]
        # the visible part of the object shows its colour
        visible = tr.ids == oid
        assert v["rgb"] == list(synth.PALETTE[c.world.obj(oid).colour])
        assert visible.any() and (c.target[visible] == v["rgb"]).all()
        boxes = np.array(v["bbox"])
        if op == "move":
            side = v["side"]
            inner = {
                "left": boxes[:, 2] <= S / 2,
                "right": boxes[:, 0] >= S / 2,
                "top": boxes[:, 3] <= S / 2,
                "bottom": boxes[:, 1] >= S / 2,
            }[side]
            edge = {"left": boxes[:, 0], "right": S - boxes[:, 2], "top": boxes[:, 1], "bottom": S - boxes[:, 3]}[side]
            assert inner.all() and (edge <= 2).all(), (side, boxes[:3])
        else:
            before = np.array(v["source_bbox"])
            width, old = boxes[0, 2] - boxes[0, 0], before[0, 2] - before[0, 0]
            assert (width > old) if v["scale"] == "larger" else (width < old)


def test_background_change_repaints_only_the_background():
    for c in clips_for("background"):
        check_only_inside_mask(c)
        v = c.verify["background"]["background"]
        bg = synth.background_image(synth.Background(v["kind"], tuple(v["colours"])), S)
        ids = target_ids(c)
        assert (c.target[ids == -1] == np.broadcast_to(bg, c.target.shape)[ids == -1]).all()
        assert np.array_equal(c.target[ids >= 0], c.source[ids >= 0])
        assert np.array_equal(c.mask, ids == -1)


STYLE_REFERENCE = {
    "grayscale": lambda x: np.repeat(np.rint(x.astype(float) @ [0.299, 0.587, 0.114] + 1e-9)[..., None], 3, -1),
    "darken": lambda x: np.floor(x / 2),
    "invert": lambda x: 255.0 - x,
}


def test_style_applies_to_the_whole_frame():
    seen = set()
    for c in clips_for("style", count=9):
        check_only_inside_mask(c)
        style = c.verify["style"]["style"]
        seen.add(style)
        assert c.mask.all()
        np.testing.assert_allclose(c.target.astype(float), STYLE_REFERENCE[style](c.source), atol=1)
        assert np.array_equal(c.target, synth.apply_style(c.source, style))
    assert seen == set(synth.STYLES)


def test_temporal_target_is_the_simulation_run_further():
    for c in clips_for("time_shift", count=8):
        check_only_inside_mask(c)
        k = c.verify["time_shift"]["frames"]
        assert str(abs(k)) in c.instruction
        if k > 0:  # frame i of the target is frame i + k of a longer source simulation
            longer = synth.render(c.world, T + k).rgb
            assert np.array_equal(c.target, longer[k:])
        else:
            earlier = synth.render(replace(c.world, start=k), T - k).rgb
            assert np.array_equal(c.target, earlier[:T]) and np.array_equal(c.source, earlier[-k:])


def test_causal_edits_resimulate_one_object():
    for op in synth.CAUSAL_OPS:
        for c in clips_for(op, count=4):
            check_only_inside_mask(c)
            (oid,) = [r["object"] for r in c.refs]
            k = [o.id for o in c.world.objects].index(oid)
            src, tgt = synth.simulate(c.world, T), synth.simulate(c.target_world, T)
            others = [j for j in range(len(c.world.objects)) if j != k]
            np.testing.assert_array_equal(src.pos[others], tgt.pos[others])
            np.testing.assert_allclose(tgt.pos[k, 0], src.pos[k, 0])  # same start
            if op == "no_bounce":
                assert src.bounces[k, -1] >= 1 and tgt.bounces[k, -1] == 0
                o = c.world.obj(oid)
                straight = np.array(o.pos) + np.array(o.vel) * np.arange(T)[:, None]
                np.testing.assert_allclose(tgt.pos[k], straight)
            elif op == "speed_change":
                factor = c.verify[op]["speed_factor"]
                np.testing.assert_allclose(np.abs(tgt.vel[k, 0]), factor * np.abs(src.vel[k, 0]))
            else:
                np.testing.assert_allclose(tgt.vel[k, 0], -src.vel[k, 0])


def test_hybrid_instructions_combine_distinct_operations():
    for i in range(10):
        c = synth.make_clip(np.random.default_rng([11, i]), category="hybrid")
        check_only_inside_mask(c)
        ops = c.operation.split("+")
        assert 2 <= len(ops) <= 3 and len(set(ops)) == len(ops) and set(c.verify) == set(ops)
        assert len(c.attribute.split("+")) == len(c.referring.split("+")) == len(ops)
        assert " and " in c.instruction and c.type == "hybrid"
        edited = [r["object"] for r in c.refs]
        assert len(edited) == len(set(edited))


# ------------------------------------------------------------------------------------ referring expressions


def independent_matches(world: synth.World, spec: dict) -> list[int] | None:
    """Count the objects an attribute expression fits, from the world alone (None: kind not covered here)."""
    objs = world.objects
    if spec["kind"] == "colour_shape":
        return [o.id for o in objs if (o.colour, o.shape) == (spec["colour"], spec["shape"])]
    if spec["kind"] == "colour":
        return [o.id for o in objs if o.colour == spec["colour"]]
    if spec["kind"] == "shape":
        return [o.id for o in objs if o.shape == spec["shape"]]
    if spec["kind"] == "size":
        group = [o for o in objs if spec["shape"] in (None, o.shape)]
        best = (max if spec["extreme"] == "largest" else min)(o.radius for o in group)
        return [o.id for o in group if o.radius == best]
    if spec["kind"] == "speed":
        speeds = {o.id: float(np.hypot(*o.vel)) for o in objs}
        best = (max if spec["extreme"] == "fastest" else min)(speeds.values())
        return [oid for oid, v in speeds.items() if abs(v - best) < synth.SPEED_MARGIN]
    return None


def test_referring_expressions_pick_exactly_one_object():
    kinds = set()
    for category in ("basic", "causal", "spatial", "commonsense", "hybrid"):
        for i in range(14):
            c = synth.make_clip(np.random.default_rng([13, i]), category=category)
            scene = synth.referring._Scene(c.world, T)
            for ref in c.refs:
                spec = {k: v for k, v in ref.items() if k != "object"}
                kinds.add(spec["kind"])
                assert synth.referents(scene, spec) == [ref["object"]], (c.instruction, spec)
                own = independent_matches(c.world, spec)
                assert own is None or own == [ref["object"]], (c.instruction, spec)
                assert synth.referring_text(scene, spec) in c.instruction
            if category == "spatial":
                assert set(c.referring.split("+")) <= set(synth.SPATIAL_REFERRING)
            if category == "commonsense":
                assert set(c.referring.split("+")) <= set(synth.COMMONSENSE_REFERRING)
    assert len(kinds) >= 10


def first_bounce_frame(traj: np.ndarray, v0: tuple[float, float]) -> int:
    """First t whose step t → t+1 goes against the starting velocity on some axis (the hit is in (t-1, t+1])."""
    steps = np.sign(np.diff(traj, axis=0))
    against = (steps != np.sign(v0)) & (np.sign(v0) != 0)
    return int(np.argmax(against.any(axis=1))) if against.any() else 10**6


def test_commonsense_first_wall_hit_is_the_earliest_contact():
    for i in range(6):
        c = synth.make_clip(
            np.random.default_rng([17, i]), category="commonsense", require=("recolour", "referring", "first_wall_hit")
        )
        (ref,) = c.refs
        assert c.referring == "first_wall_hit" and "hit a wall first" in c.instruction
        traj = step_simulation(c.world, 80)
        touch = [first_bounce_frame(traj[k], o.vel) for k, o in enumerate(c.world.objects)]
        k = [o.id for o in c.world.objects].index(ref["object"])
        assert touch[k] == min(touch) and touch[k] <= T - 1, touch


# ------------------------------------------------------------------------------------------------- splits


def test_record_pairs_reads_a_clips_pairs_back_from_its_manifest_record():
    for i in range(60):  # every category, hybrids of two and three edits among them
        clip = synth.make_clip(np.random.default_rng([11, i]), frames=5, size=32, category=synth.CATEGORIES[i % 6])
        assert synth.record_pairs(clip.record()) == set(clip.pairs), clip.operation


def test_heldout_split_holds_combinations_unseen_in_train(tmp_path):
    manifests = synth.generate(tmp_path, n=80, seed=1, format="npz", splits=(0.6, 0.1, 0.3))
    rows = {s: [json.loads(x) for x in p.read_text().splitlines()] for s, p in manifests.items()}
    assert {s: len(r) for s, r in rows.items()} == {"train": 48, "val": 8, "heldout": 24}
    held = set(map(tuple, json.loads((tmp_path / "synth_config.json").read_text())["heldout"]))
    assert held == set(synth.DEFAULT_HELDOUT)
    seen = set().union(*(synth.record_pairs(r) for r in rows["train"] + rows["val"]))
    assert not seen & held
    for r in rows["heldout"]:
        assert synth.record_pairs(r) & held and synth.record_pairs(r) - seen, r["operation"]
    assert {t for r in rows["heldout"] for t in synth.record_pairs(r) & held} == held  # every held-out pair was used
    assert {r["type"] for r in rows["train"]} == set(synth.CATEGORIES)


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(InputError, match="unknown"):
        synth.generate(tmp_path, n=2, seed=0, ops=["recolor"])
    with pytest.raises(InputError, match="splits"):
        synth.generate(tmp_path, n=2, seed=0, splits=(1, 0))
    with pytest.raises(InputError, match="no heldout triple"):
        synth.generate(tmp_path, n=10, seed=0, ops=["style"], format="npz")
    assert synth.generate(tmp_path, n=3, seed=0, ops=["style"], format="npz", splits=(1, 0, 0)).keys() == {"train"}


# ---------------------------------------------------------------------------------- mp4, manifests, the CLI


@pytest.fixture(scope="module")
def cli_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "data"
    assert main(["synth", "--out", str(out), "--n", "50", "--seed", "0"]) == 0
    return out


def test_cli_writes_manifests_that_load_manifest_reads(cli_dataset, caplog):
    counts = json.loads((cli_dataset / "synth_config.json").read_text())["counts"]
    assert counts == {"train": 40, "val": 5, "heldout": 5}
    for split, count in counts.items():
        with caplog.at_level(logging.WARNING, logger="viva_core.data"):
            caplog.clear()
            records = load_manifest(cli_dataset / f"{split}.jsonl")
        assert len(records) == count and all(r.target_video and r.mask_video and r.source_caption for r in records)
        assert {r.type for r in records} <= set(synth.CATEGORIES)
        # the benchmark labels are known to the data layer: no "unknown key" warnings
        assert not [m for m in caplog.messages if "unknown key" in m]


def test_mp4_round_trip_keeps_frames_and_size(cli_dataset):
    lines = [json.loads(x) for x in (cli_dataset / "val.jsonl").read_text().splitlines()][:3]
    for i, line in enumerate(lines):
        clip = synth.make_clip(
            np.random.default_rng([0, 40 + i]), exclude=synth.DEFAULT_HELDOUT
        )  # clip index 40+ is val
        assert clip.instruction == line["instruction"]
        for key, frames in (("source_video", clip.source), ("target_video", clip.target)):
            info = probe_video(cli_dataset / line[key])
            assert (info.num_frames, info.height, info.width) == (T, S, S)
            decoded = read_video(cli_dataset / line[key]).frames.numpy() * 255
            assert np.abs(decoded - frames).mean() < 6  # h264 is lossy; npz is the exact format
        mask = read_video(cli_dataset / line["mask_video"]).frames.numpy().mean(-1) > 0.5
        assert (mask == clip.mask).mean() > 0.97


def test_worker_processes_write_the_same_data_set(tmp_path) -> None:
    from viva_core.synth import generate

    one = generate(tmp_path / "one", n=12, seed=4, format="npz")
    two = generate(tmp_path / "two", n=12, seed=4, format="npz", workers=2)
    for split, manifest in one.items():
        assert manifest.read_text() == two[split].read_text()
        for f in (tmp_path / "one" / split).iterdir():
            assert f.read_bytes() == (tmp_path / "two" / split / f.name).read_bytes(), f.name
