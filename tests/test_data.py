"""viva_core.data: manifest loading and checking, folder → manifest, samples, and the tensor disk cache.

Every test makes its own tiny videos/images in tmp_path with write_video / PIL; CPU only, fast.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from viva_core.data import (
    EditRecord,
    ManifestError,
    TensorCache,
    dataset_from_folder,
    file_identity,
    load_manifest,
    load_sample,
    model_identity,
)
from viva_core.errors import InputError
from viva_core.video import write_video

H, W = 32, 48


def indexed_frames(t: int, h: int = H, w: int = W, offset: int = 0) -> torch.Tensor:
    """Frame i is flat grey with brightness (16 + 20·(i+offset))/255, so a decoded frame tells its index."""
    levels = (16 + 20 * (torch.arange(t, dtype=torch.float32) + offset)) / 255
    return levels[:, None, None, None].expand(t, h, w, 3).clone()


def frame_index(frame: torch.Tensor, offset: int = 0) -> int:
    return round((float(frame.mean()) * 255 - 16) / 20) - offset


def video(path: Path, t: int = 9, h: int = H, w: int = W, frames: torch.Tensor | None = None) -> Path:
    return write_video(path, indexed_frames(t, h, w) if frames is None else frames, fps=8, crf=10)


def image(path: Path, h: int = H, w: int = W, value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), value, dtype=np.uint8)).save(path)
    return path


def manifest(path: Path, *lines: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(".") or ".tmp" in p.name]


# ------------------------------------------------------------------------------------------------ manifest


def test_manifest_loads_with_relative_and_absolute_paths(tmp_path):
    data = tmp_path / "data"
    video(data / "clips" / "a.mp4"), video(data / "clips" / "a_red.mp4"), video(data / "clips" / "a_mask.mp4")
    image(data / "refs" / "red.png")
    elsewhere = video(tmp_path / "other" / "b.mp4")
    m = manifest(
        data / "manifest.jsonl",
        {
            "source_video": "clips/a.mp4",
            "instruction": " make the car red ",
            "target_video": "clips/a_red.mp4",
            "mask_video": "clips/a_mask.mp4",
            "reference_image": "refs/red.png",
            "source_caption": "a grey car",
            "target_caption": "a red car",
            "type": "color",
        },
        "",
        {"source_video": str(elsewhere), "instruction": "add snow"},
    )
    records = load_manifest(m)
    assert [r.index for r in records] == [0, 1] and [r.line for r in records] == [1, 3]
    a, b = records
    assert a.source_video == data / "clips" / "a.mp4" and a.source_video.is_absolute()
    assert a.target_video == data / "clips" / "a_red.mp4" and a.mask_video == data / "clips" / "a_mask.mp4"
    assert a.reference_image == data / "refs" / "red.png"
    assert (a.instruction, a.source_caption, a.target_caption, a.type) == (
        "make the car red",
        "a grey car",
        "a red car",
        "color",
    )
    assert b.source_video == elsewhere and b.target_video is None and b.type is None
    # key: stable across loads and from another working directory, different per edit
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path / "other")
        again = load_manifest(m)
    finally:
        os.chdir(cwd)
    assert [r.key() for r in again] == [r.key() for r in records] and a.key() != b.key()


def test_manifest_reads_revise_items(tmp_path):
    video(tmp_path / "s.mp4"), video(tmp_path / "t.mp4")
    m = manifest(
        tmp_path / "revise.jsonl",
        {
            "source_video_path": "s.mp4",
            "target_video_path": "t.mp4",
            "instruction": "remove the dog",
            "type": "removal",
        },
    )
    (r,) = load_manifest(m)
    assert r == EditRecord(
        index=0,
        source_video=tmp_path / "s.mp4",
        instruction="remove the dog",
        target_video=tmp_path / "t.mp4",
        type="removal",
        line=1,
    )
    # the same edit in the native spelling has the same key
    m2 = manifest(
        tmp_path / "native.jsonl", {"source_video": "s.mp4", "target_video": "t.mp4", "instruction": "remove the dog"}
    )
    assert load_manifest(m2)[0].key() == r.key()


def test_unknown_keys_are_ignored_with_a_warning(tmp_path, caplog):
    video(tmp_path / "s.mp4")
    m = manifest(
        tmp_path / "m.jsonl",
        {"source_video": "s.mp4", "instruction": "x", "score": 0.9},
        {"source_video": "s.mp4", "instruction": "y", "score": 0.1},
    )
    with caplog.at_level(logging.WARNING, logger="viva_core.data"):
        assert len(load_manifest(m)) == 2
    assert "unknown key 'score' ignored (lines 1, 2)" in caplog.text


def test_every_bad_line_is_reported_in_one_error(tmp_path):
    video(tmp_path / "a.mp4"), video(tmp_path / "short.mp4", t=5), video(tmp_path / "small.mp4", h=16, w=16)
    (tmp_path / "broken.mp4").write_bytes(b"this is not a video" * 10)
    m = manifest(
        tmp_path / "manifest.jsonl",
        {"source_video": "a.mp4", "instruction": "good"},  # 1 fine
        '{"source_video": "a.mp4", "instruction": ',  # 2 not JSON
        {"source_video": "a.mp4"},  # 3 no instruction
        {"source_video": "a.mp4", "instruction": "x", "target_video": "b.mp4"},  # 4 missing file
        {"source_video": "a.mp4", "instruction": "   "},  # 5 empty instruction
        {"source_video": "a.mp4", "instruction": "x", "target_video": "short.mp4"},  # 6 frame counts
        {"source_video": "a.mp4", "instruction": "x", "mask_video": "small.mp4"},  # 7 sizes
        {"source_video": "broken.mp4", "instruction": "x"},  # 8 unreadable
        {"video": "a.mp4", "prompt": "x"},  # 9 no known key
        '["a.mp4", "x"]',  # 10 not an object
        {"source_video": "a.mp4", "instruction": 5},
    )  # 11 wrong type
    with pytest.raises(ManifestError) as info:
        load_manifest(m)
    err = info.value
    assert isinstance(err, InputError)
    assert sorted({line for line, _ in err.problems}) == list(range(2, 12))
    text = str(err)
    for line in range(2, 12):
        assert f"manifest.jsonl line {line}:" in text
    assert "manifest.jsonl line 1:" not in text
    by_line = dict(err.problems)
    assert "not JSON" in by_line[2]
    assert "missing required key 'instruction'" in by_line[3]
    assert "target_video 'b.mp4' not found" in by_line[4]
    assert "instruction is empty" in by_line[5]
    assert "source has 9 frames, target 5 - they must match" in by_line[6]
    assert "source is 48x32 (width x height)" in by_line[7] and "mask 16x16" in by_line[7]
    assert "source_video 'broken.mp4' is unreadable" in by_line[8]
    assert "no known keys (got: prompt, video)" in by_line[9]
    assert "JSON object" in by_line[10]
    assert "instruction must be a string" in by_line[11]


def test_frame_counts_are_compared_after_max_frames(tmp_path):
    video(tmp_path / "s.mp4", t=9), video(tmp_path / "t.mp4", t=13)
    m = manifest(tmp_path / "m.jsonl", {"source_video": "s.mp4", "target_video": "t.mp4", "instruction": "x"})
    with pytest.raises(ManifestError, match="source has 9 frames, target 13"):
        load_manifest(m)
    assert len(load_manifest(m, max_frames=9)) == 1
    with pytest.raises(ManifestError, match=r"compared up to max_frames=10"):
        load_manifest(m, max_frames=10)


def test_check_videos_false_skips_probing_but_not_missing_files(tmp_path):
    (tmp_path / "broken.mp4").write_bytes(b"junk")
    m = manifest(tmp_path / "m.jsonl", {"source_video": "broken.mp4", "instruction": "x"})
    assert len(load_manifest(m, check_videos=False)) == 1
    with pytest.raises(ManifestError, match="unreadable"):
        load_manifest(m)
    m2 = manifest(tmp_path / "m2.jsonl", {"source_video": "gone.mp4", "instruction": "x"})
    with pytest.raises(ManifestError, match="'gone.mp4' not found"):
        load_manifest(m2, check_videos=False)


def test_empty_or_missing_manifest_is_an_error(tmp_path):
    with pytest.raises(ManifestError, match="has no edits"):
        load_manifest(manifest(tmp_path / "empty.jsonl", ""))
    with pytest.raises(ManifestError, match="not found"):
        load_manifest(tmp_path / "nope.jsonl")


def test_long_problem_lists_are_cut_at_50_with_a_count(tmp_path):
    m = manifest(tmp_path / "m.jsonl", *({"source_video": f"v{i}.mp4", "instruction": "x"} for i in range(60)))
    with pytest.raises(ManifestError) as info:
        load_manifest(m)
    assert len(info.value.problems) == 60
    text = str(info.value)
    assert "m.jsonl line 50:" in text and "m.jsonl line 51:" not in text
    assert "and 10 more problems (60 in all)" in text


def test_image_pairs_load_as_one_frame_videos(tmp_path):
    image(tmp_path / "s.png", value=40), image(tmp_path / "t.jpg", value=200), image(tmp_path / "m.png", value=255)
    image(tmp_path / "big.png", h=64, w=64)
    m = manifest(
        tmp_path / "m.jsonl",
        {"source_video": "s.png", "target_video": "t.jpg", "mask_video": "m.png", "instruction": "brighten"},
    )
    (r,) = load_manifest(m)
    s = load_sample(r)
    assert s.source.shape == (1, H, W, 3) and s.target.shape == (1, H, W, 3) and s.mask.shape == (1, H, W)
    assert s.fps is None and s.conform == "unchanged"
    assert abs(float(s.source.mean()) - 40 / 255) < 1e-3 and abs(float(s.target.mean()) - 200 / 255) < 0.02
    assert torch.allclose(s.mask, torch.ones_like(s.mask))
    # an image source and a multi-frame target do not match; nor do images of different sizes
    video(tmp_path / "v.mp4")
    bad = manifest(
        tmp_path / "bad.jsonl",
        {"source_video": "s.png", "target_video": "v.mp4", "instruction": "x"},
        {"source_video": "s.png", "target_video": "big.png", "instruction": "x"},
    )
    with pytest.raises(ManifestError) as info:
        load_manifest(bad)
    assert "source has 1 frames, target 9" in dict(info.value.problems)[1]
    assert "source is 48x32" in dict(info.value.problems)[2]


# ------------------------------------------------------------------------------------------ folder → manifest


def test_dataset_from_folder_round_trip(tmp_path):
    root = tmp_path / "edits"
    video(root / "cat.mp4"), video(root / "cat_target.mp4"), video(root / "cat_mask.mp4")
    (root / "cat.txt").write_text("make the cat black\n")
    image(root / "dog.png"), image(root / "dog_target.png"), image(root / "dog_ref.jpg")
    (root / "dog.txt").write_text("give the dog a hat")
    (root / "README.txt").write_text("not an instruction of anything")
    path = dataset_from_folder(root)
    assert path == root / "manifest.jsonl"
    items = [json.loads(line) for line in path.read_text().splitlines()]
    assert items[0] == {
        "source_video": "cat.mp4",
        "instruction": "make the cat black",
        "target_video": "cat_target.mp4",
        "mask_video": "cat_mask.mp4",
    }
    cat, dog = load_manifest(path)
    assert cat.target_video == root / "cat_target.mp4" and cat.mask_video == root / "cat_mask.mp4"
    assert dog.source_video == root / "dog.png" and dog.reference_image == root / "dog_ref.jpg"
    assert dog.instruction == "give the dog a hat"
    assert leftovers(root) == []
    # written elsewhere: paths relative to the manifest's own folder still resolve
    other = dataset_from_folder(root, out=tmp_path / "lists" / "train.jsonl")
    assert json.loads(other.read_text().splitlines()[0])["source_video"] == "../edits/cat.mp4"
    assert [r.source_video for r in load_manifest(other)] == [root / "cat.mp4", root / "dog.png"]


def test_dataset_from_folder_lists_every_missing_instruction(tmp_path, caplog):
    root = tmp_path / "edits"
    video(root / "cat.mp4"), video(root / "bird.mp4"), video(root / "owl.mp4"), video(root / "fish_target.mp4")
    (root / "bird.txt").write_text("  \n")
    (root / "owl.txt").write_text("make it night")
    with pytest.raises(InputError) as info:
        dataset_from_folder(root)
    text = str(info.value)
    assert "cat.mp4: no cat.txt" in text and "bird.mp4: empty bird.txt" in text
    assert "fish_target.mp4: no source 'fish.<ext>'" in text and "skip_missing=True" in text
    assert not (root / "manifest.jsonl").exists() and leftovers(root) == []
    with caplog.at_level(logging.WARNING, logger="viva_core.data"):
        path = dataset_from_folder(root, skip_missing=True)
    assert "skipped 3 file(s)" in caplog.text
    assert [r.source_video.name for r in load_manifest(path)] == ["owl.mp4"]
    with pytest.raises(InputError, match="no video or image with an instruction"):
        dataset_from_folder(tmp_path / "edits", instruction_file_suffix=".prompt", skip_missing=True)
    with pytest.raises(InputError, match="not a folder"):
        dataset_from_folder(tmp_path / "nothing")


# ------------------------------------------------------------------------------------------------- samples


def test_load_sample_shapes_mask_range_and_resize(tmp_path):
    mask = torch.zeros(10, H, W, 3)
    mask[:, :, W // 2 :] = 1.0
    mask[:, : H // 2, : W // 2] = 0.5
    video(tmp_path / "s.mp4", t=10), video(tmp_path / "t.mp4", t=10), video(tmp_path / "m.mp4", frames=mask)
    image(tmp_path / "ref.png", h=20, w=24)
    m = manifest(
        tmp_path / "m.jsonl",
        {
            "source_video": "s.mp4",
            "target_video": "t.mp4",
            "mask_video": "m.mp4",
            "reference_image": "ref.png",
            "instruction": "x",
            "target_caption": "y",
        },
    )
    (r,) = load_manifest(m)
    s = load_sample(r)
    assert s.source.shape == (9, H, W, 3) and s.target.shape == (9, H, W, 3) and s.mask.shape == (9, H, W)
    assert s.source.dtype == s.mask.dtype == torch.float32
    assert s.conform == "9 frames kept of 10 (4k+1)"
    assert float(s.mask.min()) >= 0 and float(s.mask.max()) <= 1
    assert abs(float(s.mask[:, 4:12, 4:20].mean()) - 0.5) < 0.03  # soft values are kept
    assert float(s.mask[:, :, 30:].mean()) > 0.97 and float(s.mask[:, 20:, :20].mean()) < 0.03
    assert s.reference.shape == (20, 24, 3)
    assert (s.instruction, s.target_caption, s.key, s.index, s.fps) == ("x", "y", r.key(), 0, 8.0)
    # resize then crop to multiples of 16, the same for all three
    s2 = load_sample(r, size=(40, 72), temporal_factor=4, spatial_multiple=16)
    assert s2.source.shape == (9, 32, 64, 3) and s2.target.shape == (9, 32, 64, 3) and s2.mask.shape == (9, 32, 64)


def npz_clip(path: Path, t: int = 9, h: int = H, w: int = W, mask_scale: int = 1, **override) -> Path:
    """An npz clip as `viva synth --format npz` writes it: source/target uint8 [T,H,W,3], mask uint8 [T,H,W]."""
    rng = np.random.default_rng(0)
    arrays = {
        "source": rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8),
        "target": rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8),
        "mask": (rng.random((t, h, w)) > 0.5).astype(np.uint8) * mask_scale,
        **override,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


@pytest.mark.parametrize("mask_scale", [1, 255])
def test_npz_clips_load_exactly_as_source_target_and_mask(tmp_path, mask_scale):
    clip = npz_clip(tmp_path / "c" / "a.npz", t=10, mask_scale=mask_scale)
    m = manifest(tmp_path / "m.jsonl", {"npz": "c/a.npz", "instruction": "x", "operation": "recolour"})
    (r,) = load_manifest(m)
    assert r.source_video == r.target_video == r.mask_video == clip.resolve()
    s = load_sample(r)
    with np.load(clip) as z:
        assert torch.equal((s.source * 255).round().to(torch.uint8), torch.from_numpy(z["source"][:9]))
        assert torch.equal((s.target * 255).round().to(torch.uint8), torch.from_numpy(z["target"][:9]))
        assert torch.equal(s.mask, torch.from_numpy(z["mask"][:9] > 0).float())
    assert s.conform == "9 frames kept of 10 (4k+1)" and s.fps is None
    # max_frames caps every array alike
    assert load_sample(r, max_frames=5).target.shape == (5, H, W, 3)


def test_bad_npz_clips_are_named_in_one_error(tmp_path):
    npz_clip(tmp_path / "short_target.npz", target=np.zeros((4, H, W, 3), np.uint8))
    npz_clip(tmp_path / "float.npz", source=np.zeros((9, H, W, 3), np.float32))
    npz_clip(tmp_path / "no_mask.npz").replace(tmp_path / "tmp.npz")
    with np.load(tmp_path / "tmp.npz") as z:
        np.savez(tmp_path / "no_mask.npz", source=z["source"], target=z["target"])
    (tmp_path / "broken.npz").write_bytes(b"PK not a zip")
    npz_clip(tmp_path / "ok.npz")
    video(tmp_path / "s.mp4")
    m = manifest(
        tmp_path / "m.jsonl",
        {"npz": "short_target.npz", "instruction": "a"},
        {"npz": "float.npz", "instruction": "b"},
        {"npz": "no_mask.npz", "instruction": "c"},
        {"npz": "broken.npz", "instruction": "d"},
        {"npz": "ok.npz", "source_video": "s.mp4", "instruction": "e"},
        {"npz": "ok.mp4", "instruction": "f"},
        {"npz": "ok.npz", "instruction": "fine"},
    )
    with pytest.raises(ManifestError) as e:
        load_manifest(m)
    lines: dict[int, list[str]] = {}
    for line, text in e.value.problems:
        lines.setdefault(line, []).append(text)
    assert sorted(lines) == [1, 2, 3, 4, 5, 6] and all(len(texts) == 1 for n, texts in lines.items() if n < 6)
    (t1,), (t2,), (t3,), (t4,), (t5,) = (lines[n] for n in range(1, 6))
    assert "npz 'short_target.npz' is unreadable" in t1 and "shapes" in t1
    assert "float32" in t2 and "'mask.npy'" in t3 and "not a readable npz clip" in t4 and "keep one" in t5
    assert any(".npz clip" in t for t in lines[6])


def test_npz_header_reads_take_turns_across_the_probe_threads(tmp_path, monkeypatch):
    """numpy parses .npy headers with ast, which CPython 3.11 cannot run in two threads at once (SystemError seen in
    CI): the probe threads must never be inside a header read together."""
    inside, overlaps, lock = [0], [0], threading.Lock()
    real = np.lib.format.read_array_header_1_0

    def slow_header(f, *args, **kwargs):
        with lock:
            inside[0] += 1
            overlaps[0] += inside[0] > 1
        time.sleep(0.02)
        try:
            return real(f, *args, **kwargs)
        finally:
            with lock:
                inside[0] -= 1

    monkeypatch.setattr(np.lib.format, "read_array_header_1_0", slow_header)
    lines = []
    for i in range(6):
        npz_clip(tmp_path / f"c{i}.npz")
        lines.append({"npz": f"c{i}.npz", "instruction": str(i)})
    assert len(load_manifest(manifest(tmp_path / "m.jsonl", *lines))) == 6
    assert overlaps[0] == 0


def test_source_target_and_mask_take_the_same_frames(tmp_path):
    video(tmp_path / "s.mp4", t=12), video(tmp_path / "t.mp4", t=12), video(tmp_path / "m.mp4", t=12)
    m = manifest(
        tmp_path / "m.jsonl",
        {"source_video": "s.mp4", "target_video": "t.mp4", "mask_video": "m.mp4", "instruction": "x"},
    )
    (r,) = load_manifest(m, max_frames=7)
    s = load_sample(r, max_frames=7)
    assert s.source.shape[0] == s.target.shape[0] == s.mask.shape[0] == 5  # 7 read, 4k+1 → 5
    for i in range(5):
        assert frame_index(s.source[i]) == frame_index(s.target[i]) == i
        assert frame_index(s.mask[i]) == i
    # a record that load_manifest would have refused fails loudly here too
    video(tmp_path / "short.mp4", t=5)
    bad = EditRecord(index=0, source_video=tmp_path / "s.mp4", target_video=tmp_path / "short.mp4", instruction="x")
    with pytest.raises(InputError, match="do not match the source"):
        load_sample(bad)


# -------------------------------------------------------------------------------------------- tensor cache


class Counter:
    def __init__(self, value: float = 1.0):
        self.calls, self.value = 0, value

    def __call__(self) -> dict[str, torch.Tensor]:
        self.calls += 1
        return {"latents": torch.full((1, 4, 3, 2, 2), self.value), "tokens": torch.arange(6).view(2, 3)}


def test_cache_second_call_is_a_hit_stored_as_safetensors(tmp_path):
    clip = video(tmp_path / "a.mp4")
    cache, compute = TensorCache(tmp_path / "cache"), Counter()
    key = (file_identity(clip), "vae:abc", 9, (32, 48))
    first = cache.get_or_compute("latents", key, compute)
    second = cache.get_or_compute("latents", key, compute)
    assert compute.calls == 1 and (cache.hits, cache.misses) == (1, 1)
    assert set(second) == {"latents", "tokens"} and second["tokens"].dtype == torch.int64
    assert all(torch.equal(first[k], second[k]) for k in first)
    path = cache.path_for("latents", key)
    assert path.parent == tmp_path / "cache" / "latents" and path.suffix == ".safetensors"
    assert not path.read_bytes().startswith(b"PK")  # not a torch.save zip/pickle
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["format"] == "viva-tensor-cache" and set(f.keys()) == {"latents", "tokens"}
    assert leftovers(tmp_path / "cache") == []


def test_cache_misses_on_other_model_or_changed_file(tmp_path):
    clip = video(tmp_path / "a.mp4")
    cache, compute = TensorCache(tmp_path / "cache"), Counter()
    cache.get_or_compute("latents", (file_identity(clip), "vae:1"), compute)
    cache.get_or_compute("latents", (file_identity(clip), "vae:2"), compute)
    assert compute.calls == 2
    cache.get_or_compute("text", (file_identity(clip), "vae:1"), compute)  # another kind
    assert compute.calls == 3
    video(clip, frames=indexed_frames(9, offset=1))  # rewritten with other content
    cache.get_or_compute("latents", (file_identity(clip), "vae:1"), compute)
    assert compute.calls == 4 and (cache.hits, cache.misses) == (0, 4)
    cache.get_or_compute("latents", (file_identity(clip), "vae:1"), compute)
    assert compute.calls == 4 and cache.hits == 1


def test_cache_recovers_a_corrupt_entry(tmp_path, caplog):
    cache = TensorCache(tmp_path / "cache")
    key = ("x", 1)
    cache.get_or_compute("latents", key, Counter(1.0))
    path = cache.path_for("latents", key)
    path.write_bytes(path.read_bytes()[:40])  # truncated
    fresh = Counter(2.0)
    with caplog.at_level(logging.WARNING, logger="viva_core.data"):
        out = cache.get_or_compute("latents", key, fresh)
    assert fresh.calls == 1 and float(out["latents"].mean()) == 2.0 and "recomputing" in caplog.text
    again = cache.get_or_compute("latents", key, fresh)
    assert fresh.calls == 1 and float(again["latents"].mean()) == 2.0
    assert leftovers(tmp_path / "cache") == []


def test_cache_put_then_get(tmp_path):
    """put stores what get returns (a batch of encodes writes entries that lookups then read); get of an absent key
    is None and counts no hit."""
    cache = TensorCache(tmp_path / "cache")
    assert cache.get("latents", ("a",)) is None and cache.hits == 0
    cache.put("latents", ("a",), {"z": torch.arange(6.0).reshape(2, 3)})
    got = cache.get("latents", ("a",))
    assert torch.equal(got["z"], torch.arange(6.0).reshape(2, 3)) and cache.hits == 1
    assert cache.get("latents", ("b",)) is None and cache.get("text", ("a",)) is None  # the key and the kind count
    with pytest.raises(InputError, match="dict of name"):
        cache.put("latents", ("c",), torch.zeros(2))


def test_cache_failures_leave_no_files(tmp_path):
    cache = TensorCache(tmp_path / "cache")

    def boom() -> dict[str, torch.Tensor]:
        raise RuntimeError("encoder failed")

    with pytest.raises(RuntimeError, match="encoder failed"):
        cache.get_or_compute("latents", ("a",), boom)
    with pytest.raises(InputError, match="dict of name"):
        cache.get_or_compute("latents", ("b",), lambda: torch.zeros(2))
    with pytest.raises(InputError, match="no stable identity"):
        cache.get_or_compute("latents", (torch.zeros(2),), Counter())
    with pytest.raises(InputError, match="cache kind"):
        cache.get_or_compute("../up", ("a",), Counter())
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []


def test_file_identity(tmp_path):
    small = video(tmp_path / "a.mp4")
    copy = tmp_path / "copy.mp4"
    shutil.copy(small, copy)
    assert file_identity(small) == file_identity(copy)  # small files: content hash
    big = tmp_path / "big.bin"
    big.write_bytes(b"\0" * (2 << 20))
    ident = file_identity(big)
    assert str(big) in ident
    st = big.stat()
    os.utime(big, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert file_identity(big) != ident
    with pytest.raises(InputError, match="cannot identify"):
        file_identity(tmp_path / "gone.mp4")


def test_model_identity_follows_weights_config_and_name():
    torch.manual_seed(0)
    a = torch.nn.Sequential(*(torch.nn.Linear(8, 8) for _ in range(20)))
    b = torch.nn.Sequential(*(torch.nn.Linear(8, 8) for _ in range(20)))
    b.load_state_dict(a.state_dict())
    assert model_identity(a, "vae") == model_identity(b, "vae") and model_identity(a, "vae").startswith("vae:")
    assert model_identity(a, "vae") != model_identity(a, "vae+lora")
    with torch.no_grad():
        b[0].weight[3, 5] += 1e-3
    assert model_identity(a, "vae") != model_identity(b, "vae")
    b.load_state_dict(a.state_dict())
    b.config = {"z_dim": 16, "_name_or_path": "/somewhere"}
    a.config = {"z_dim": 16, "_name_or_path": "/elsewhere"}
    assert model_identity(a, "vae") == model_identity(b, "vae")  # bookkeeping keys do not count
    a.config = {"z_dim": 48}
    assert model_identity(a, "vae") != model_identity(b, "vae")
    fp32 = model_identity(b, "vae")
    assert model_identity(b.to(torch.bfloat16), "vae") != fp32  # the dtype changes the encoded values
