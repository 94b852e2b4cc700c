"""viva_core.video: round trips, frame selection, audio span, memory cap, bad files, atomic writes, snapping.

Every test makes its own small files in tmp_path (with write_video or PyAV directly); CPU only, fast.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from av.stream import Disposition

from viva_core.errors import InputError, NonFiniteError, VideoError
from viva_core.video import (
    Audio,
    ConformReport,
    conform_frames,
    frames_to_uint8,
    probe_video,
    read_video,
    snap_frame_count,
    snap_size,
    uniform_frame_indices,
    write_video,
)

T, H, W, FPS, SR = 24, 64, 96, 24, 44100


def smooth_frames(t: int = T, h: int = H, w: int = W) -> torch.Tensor:
    """Gradient background plus a moving soft-edged square: what codecs encode well (noise would not)."""
    ys, xs = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    frames = torch.stack([xs, ys, 0.5 * (xs + ys)], dim=-1).expand(t, h, w, 3).clone()
    for i in range(t):
        cy, cx = h / 2, (i + 0.5) * w / t
        inside = torch.clamp(8 - torch.maximum((ys * h - cy).abs(), (xs * w - cx).abs()), 0, 1)
        frames[i] = frames[i] * (1 - inside[..., None]) + inside[..., None] * torch.tensor([0.9, 0.2, 0.1])
    return frames


def indexed_frames(t: int = T) -> torch.Tensor:
    """Frame i is flat grey with brightness (16 + 8·i)/255, so a decoded frame tells its source index."""
    return ((16 + 8 * torch.arange(t, dtype=torch.float32)) / 255)[:, None, None, None].expand(t, H, W, 3).clone()


def frame_index(frame: torch.Tensor) -> int:
    return round((frame.mean().item() * 255 - 16) / 8)


def chirp(seconds: float, channels: int = 2) -> torch.Tensor:
    """A 200→2000 Hz sweep: a misaligned slice of it correlates badly, unlike a pure tone."""
    t = torch.arange(round(seconds * SR), dtype=torch.float64) / SR
    phase = 2 * math.pi * (200 * t + (2000 - 200) / (2 * seconds) * t**2)
    return (0.5 * torch.sin(phase)).float().repeat(channels, 1)


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    n = min(a.shape[-1], b.shape[-1])
    a, b = a[..., :n].flatten().double(), b[..., :n].flatten().double()
    return float((a * b).sum() / (a.norm() * b.norm()))


def mux_raw(path: Path, count: int, pts: list[int] | None = None, time_base: int = FPS) -> Path:
    """Write a video with PyAV directly (any container, any timestamps, no faststart)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=time_base)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for i, frame in enumerate(frames_to_uint8(indexed_frames(count)).numpy()):
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            video_frame.pts = pts[i] if pts else i
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode(None))
    return path


@pytest.fixture(scope="module")
def indexed_video(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("videos") / "indexed.mp4"
    return write_video(path, indexed_frames(), FPS, Audio(chirp(T / FPS), SR))


# ------------------------------------------------------------------------------------------ round trips


def test_round_trip_keeps_count_rate_size_and_pixels(tmp_path):
    frames = smooth_frames()
    path = write_video(tmp_path / "out.mp4", frames, FPS)
    info = probe_video(path)
    assert (info.num_frames, info.fps, info.height, info.width) == (T, FPS, H, W)
    assert (info.codec, info.has_audio) == ("h264", False)
    assert info.duration_s == pytest.approx(T / FPS, abs=1e-3)
    video = read_video(path)
    assert video.frames.shape == (T, H, W, 3) and video.frames.dtype == torch.float32
    assert video.fps == FPS and video.audio is None
    assert (video.frames - frames).abs().mean() < 0.03


def test_fractional_rate_survives(tmp_path):
    path = write_video(tmp_path / "ntsc.mp4", smooth_frames(6), 30000 / 1001)
    assert probe_video(path).fps == pytest.approx(30000 / 1001, rel=1e-6)


def test_audio_round_trip(tmp_path):
    wave = chirp(1.0)
    path = write_video(tmp_path / "av.mp4", smooth_frames(), FPS, Audio(wave, SR))
    assert probe_video(path).has_audio
    audio = read_video(path).audio
    assert audio is not None and audio.sample_rate == SR and audio.waveform.shape[0] == 2
    assert abs(audio.waveform.shape[1] - wave.shape[1]) <= 1024  # one AAC frame
    assert correlation(audio.waveform, wave) > 0.95
    assert read_video(path, with_audio=False).audio is None


def test_one_frame_video_is_valid(tmp_path):
    path = write_video(tmp_path / "one.mov", smooth_frames(1), FPS)
    assert probe_video(path).num_frames == 1
    assert read_video(path).frames.shape == (1, H, W, 3)


def test_odd_size_is_padded_with_warning(tmp_path):
    frames = smooth_frames(3, 63, 95)
    with pytest.warns(UserWarning, match="95x63 frames padded to 96x64"):  # W x H
        path = write_video(tmp_path / "odd.mp4", frames, FPS)
    decoded = read_video(path).frames
    assert decoded.shape == (3, 64, 96, 3)
    assert (decoded[:, -1, :95] - frames[:, -1]).abs().mean() < 0.05  # padding repeats the last row


def test_out_of_range_values_are_clamped(tmp_path):
    frames = smooth_frames(3) * 3 - 1
    decoded = read_video(write_video(tmp_path / "clamp.mp4", frames, FPS)).frames
    assert (decoded - frames.clamp(0, 1)).abs().mean() < 0.03


# ----------------------------------------------------------------------------------- frame selection


@pytest.mark.parametrize(
    "start, stride, cap, expected",
    [
        (0, 1, None, list(range(T))),
        (5, 1, 4, [5, 6, 7, 8]),
        (0, 3, None, list(range(0, T, 3))),
        (2, 5, None, [2, 7, 12, 17, 22]),
        (1, 4, 2, [1, 5]),
        (23, 2, None, [23]),
    ],
)
def test_selection_keeps_the_right_frames(indexed_video, start, stride, cap, expected):
    calls = []
    video = read_video(
        indexed_video,
        start_frame=start,
        stride=stride,
        max_frames=cap,
        with_audio=False,
        progress=lambda done, total, preview=None: calls.append((done, total)),
    )
    assert [frame_index(f) for f in video.frames] == expected
    assert video.fps == pytest.approx(FPS / stride)
    assert calls[-1] == (len(expected), len(expected))


def test_audio_is_trimmed_to_the_kept_span(indexed_video):
    source = chirp(T / FPS)
    video = read_video(indexed_video, start_frame=6, max_frames=6)  # frames 6..11 = [0.25 s, 0.5 s)
    a, b = 6 * SR // FPS, 12 * SR // FPS
    assert video.audio.waveform.shape == (2, b - a)
    assert correlation(video.audio.waveform, source[:, a:b]) > 0.9
    assert correlation(video.audio.waveform, source[:, a + SR // FPS : b + SR // FPS]) < 0.5  # one frame off

    video = read_video(indexed_video, start_frame=2, stride=3, max_frames=4)  # frames 2..13 of time
    a, b = 2 * SR // FPS, 14 * SR // FPS
    assert video.audio.waveform.shape == (2, b - a)
    assert correlation(video.audio.waveform, source[:, a:b]) > 0.9


def test_max_bytes_refuses_before_decoding_and_says_what_fits(indexed_video):
    frame_bytes = H * W * 3 * 4
    with pytest.raises(InputError) as err:
        read_video(indexed_video, max_bytes=10 * frame_bytes + 100)
    message = str(err.value)
    assert str(indexed_video) in message and "10 frames" in message
    assert "max_frames=10" in message and "stride=3" in message
    assert read_video(indexed_video, max_bytes=10 * frame_bytes, max_frames=10).frames.shape[0] == 10
    with pytest.raises(InputError, match="less than one frame"):
        read_video(indexed_video, max_bytes=frame_bytes - 1)


@pytest.mark.parametrize("kwargs", [{"stride": 0}, {"start_frame": -1}, {"max_frames": 0}, {"max_bytes": 0}])
def test_bad_read_arguments(indexed_video, kwargs):
    with pytest.raises(InputError):
        read_video(indexed_video, **kwargs)


def test_start_past_the_end(indexed_video):
    with pytest.raises(InputError, match=f"has {T} frames"):
        read_video(indexed_video, start_frame=T)


# ------------------------------------------------------------------------------ other containers, VFR


def test_mkv_without_frame_count_is_counted(tmp_path):
    path = mux_raw(tmp_path / "raw.mkv", 9)
    info = probe_video(path)
    assert (info.num_frames, info.fps) == (9, pytest.approx(FPS))
    assert [frame_index(f) for f in read_video(path).frames] == list(range(9))


def test_variable_frame_rate_uses_the_average(tmp_path):
    # 10 frames on a 1/48 s clock with irregular gaps, spanning 0.5 s: about 20 fps on average.
    path = mux_raw(tmp_path / "vfr.mp4", 10, pts=[0, 2, 3, 6, 8, 12, 13, 16, 20, 22], time_base=48)
    info = probe_video(path)
    assert info.num_frames == 10 and 15 < info.fps < 25
    assert read_video(path).frames.shape[0] == 10


# ----------------------------------------------------------------------------------------- bad inputs

# What the message must say for each bad file, besides its path.
BAD_FILE_REASONS = {
    "missing": "not found",
    "folder": "is a folder",
    "empty": "empty (0 bytes)",
    "random bytes": "not a readable video",
    "text renamed": "not a readable video",
    "truncated index": "not a readable video",
    "audio only": "has no video stream (only: audio)",
    "no video frames": "has no frames",
    "audio with cover art": "has no video stream (only: audio, cover picture)",
}


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    files = {
        "missing": tmp_path / "missing.mp4",
        "folder": tmp_path,
        "empty": tmp_path / "empty.mp4",
        "random bytes": tmp_path / "random.mp4",
        "text renamed": tmp_path / "notes.mp4",
        "truncated index": tmp_path / "truncated_index.mp4",
        "audio only": tmp_path / "audio.m4a",
        "no video frames": tmp_path / "no_frames.mkv",
        "audio with cover art": tmp_path / "song.mp4",
    }
    files["empty"].write_bytes(b"")
    files["random bytes"].write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    files["text renamed"].write_text("this is a shopping list, not a video\n" * 20)
    raw = mux_raw(tmp_path / "raw.mp4", 12).read_bytes()  # index (moov) at the end, cut off here
    files["truncated index"].write_bytes(raw[: len(raw) // 2])
    for name, video_codec in (("audio only", None), ("no video frames", "libx264"), ("audio with cover art", "png")):
        with av.open(str(files[name]), "w") as container:
            sound = container.add_stream("aac", rate=16000, layout="mono")
            if video_codec:
                video = container.add_stream(video_codec, rate=FPS)
                video.width, video.height = W, H
                video.pix_fmt = "rgb24" if video_codec == "png" else "yuv420p"
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 16000), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, 0
            if video_codec == "png":  # one picture flagged as cover art, as music files carry it
                video.disposition = Disposition.attached_pic
                picture = av.VideoFrame.from_ndarray(np.zeros((H, W, 3), np.uint8), format="rgb24")
                picture.pts = 0
                container.mux(video.encode(picture) + video.encode(None))
            container.mux(sound.encode(frame) + sound.encode(None))
    return files


@pytest.mark.parametrize("reader", [probe_video, read_video])
def test_bad_files_raise_video_error_naming_the_file(tmp_path, reader):
    files = _bad_files(tmp_path)
    assert files.keys() == BAD_FILE_REASONS.keys()
    for name, path in files.items():
        with pytest.raises(VideoError) as err:
            reader(path)
        assert str(path) in str(err.value) and BAD_FILE_REASONS[name] in str(err.value), name


def test_truncated_file_is_caught_by_the_probe(tmp_path):
    raw = write_video(tmp_path / "full.mp4", smooth_frames(), FPS).read_bytes()  # index first (faststart)
    path = tmp_path / "cut.mp4"
    path.write_bytes(raw[: len(raw) * 2 // 3])
    for reader in (probe_video, read_video):
        with pytest.raises(VideoError, match=r"truncated.*of 24 frames are complete") as err:
            reader(path)
        assert str(path) in str(err.value)


def test_edit_list_hides_trimmed_frames(tmp_path):
    """A trimmed export (edit list) keeps hidden frames in the file; count and decode only the shown ones."""
    source = write_video(tmp_path / "full.mp4", indexed_frames(), FPS)
    path = tmp_path / "trimmed.mp4"
    with av.open(str(source)) as src, av.open(str(path), "w") as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        shift = 3 * round(1 / (FPS * src.streams.video[0].time_base))  # 3 frames before time 0
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.pts, packet.dts, packet.stream = packet.pts - shift, packet.dts - shift, stream
                dst.mux(packet)
    assert probe_video(path).num_frames == T - 3
    assert [frame_index(f) for f in read_video(path).frames] == list(range(3, T))


# --------------------------------------------------------------------------------------------- writing


def test_nan_in_a_late_frame_leaves_nothing_behind(tmp_path):
    frames = smooth_frames()
    frames[20, 3, 4, 1] = float("nan")
    with pytest.raises(NonFiniteError, match="frame 20"):
        write_video(tmp_path / "out.mp4", frames, FPS, Audio(chirp(1.0), SR))
    assert os.listdir(tmp_path) == []


def test_failed_write_leaves_an_existing_file_untouched(tmp_path):
    target = write_video(tmp_path / "keep.mp4", smooth_frames(4), FPS)
    before = target.read_bytes()
    frames = smooth_frames()
    frames[-1] = float("inf")
    with pytest.raises(NonFiniteError):
        write_video(target, frames, FPS)
    assert os.listdir(tmp_path) == ["keep.mp4"] and target.read_bytes() == before


def test_interrupt_during_write_leaves_nothing_behind(tmp_path):
    def interrupt(done, total, preview=None):
        if done == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_video(tmp_path / "out.mp4", smooth_frames(), FPS, progress=interrupt)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "name, frames, kwargs",
    [
        ("out.mp4", torch.rand(2, H, W, 4), {}),
        ("out.mp4", torch.rand(H, W, 3), {}),
        ("out.mp4", torch.zeros(0, H, W, 3), {}),
        ("out.mp4", torch.randint(0, 255, (2, H, W, 3), dtype=torch.uint8), {}),
        ("out.mp4", torch.rand(2, H, W, 3), {"fps": 0}),
        ("out.mp4", torch.rand(2, H, W, 3), {"crf": 60}),
        ("out.mp4", torch.rand(2, H, W, 3), {"codec": "no-such-codec"}),
        ("out.mp4", torch.rand(2, H, W, 3), {"pix_fmt": "no-such-format"}),
        ("out.avi", torch.rand(2, H, W, 3), {}),
        ("out.mp4", torch.rand(2, H, W, 3), {"audio": Audio(torch.zeros(2, 100), 12345)}),
        ("out.mp4", torch.rand(2, H, W, 3), {"audio": Audio(torch.zeros(100), SR)}),
    ],
)
def test_bad_write_arguments_raise_input_error(tmp_path, name, frames, kwargs):
    kwargs = {"fps": FPS, **kwargs}
    with pytest.raises(InputError) as err:
        write_video(tmp_path / name, frames, **kwargs)
    assert str(tmp_path / name) in str(err.value)
    assert os.listdir(tmp_path) == []


def test_nan_audio_is_refused(tmp_path):
    wave = chirp(0.1)
    wave[0, 10] = float("nan")
    with pytest.raises(NonFiniteError, match="audio"):
        write_video(tmp_path / "out.mp4", smooth_frames(2), FPS, Audio(wave, SR))
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------------------- snapping


def test_uniform_frame_indices():
    assert uniform_frame_indices(81, 5) == [0, 20, 40, 60, 80]
    assert uniform_frame_indices(10, 3) == [0, 5, 9]
    assert uniform_frame_indices(4, 10) == [0, 1, 2, 3]
    assert uniform_frame_indices(7, 1) == [0]
    for n in range(1, 40):
        for count in range(1, n):
            idx = uniform_frame_indices(n, count)
            assert len(set(idx)) == count and idx == sorted(idx) and idx[0] == 0
            assert count == 1 or idx[-1] == n - 1
    with pytest.raises(InputError):
        uniform_frame_indices(0, 3)


def test_snap_frame_count_and_size():
    assert snap_frame_count(83) == 81
    assert [snap_frame_count(n) for n in (1, 4, 5, 8, 9)] == [1, 1, 5, 5, 9]
    assert snap_frame_count(10, temporal_factor=1) == 10
    assert snap_size(481, 835, 16) == (480, 832)
    assert snap_size(10, 40, 16) == (16, 32)
    with pytest.raises(InputError):
        snap_frame_count(0)


def test_conform_crops_center_and_reports():
    frame = torch.zeros(1, 481, 835, 3)
    frame[:, 240, 417] = 1.0  # the centre pixel
    frames = frame.expand(83, -1, -1, -1)  # 83 frames without 400 MB of memory
    out, report = conform_frames(frames, 4, 16)
    assert out.shape == (81, 480, 832, 3)
    assert out[0, 240, 416].sum() == 3  # crop offsets (0, 1): centre pixel moved by (0, -1)
    assert report.message() == "81 frames kept of 83 (4k+1); 832x480 from 835x481 (center crop to multiple of 16)"


def test_conform_unchanged_and_resize():
    _, report = conform_frames(torch.rand(9, 32, 48, 3), 4, 16)
    assert not report.changed and report.message() == "unchanged"
    out, report = conform_frames(torch.rand(5, 90, 160, 3), 4, 16, resize_to=(50, 89))
    assert out.shape == (5, 48, 80, 3) and 0 <= out.min() and out.max() <= 1
    assert report == ConformReport(5, (90, 160), 5, (48, 80), 4, 16, (50, 89))
    assert report.message() == "80x48 from 160x90 (resized to 89x50, then center crop to multiple of 16)"
    out, report = conform_frames(torch.rand(1, 90, 160, 3), 4, 16, resize_to=(48, 80))
    assert out.shape == (1, 48, 80, 3) and report.message() == "80x48 from 160x90 (resized to 80x48)"
    with pytest.raises(InputError, match="resize_to"):
        conform_frames(torch.rand(1, 8, 8, 3), 4, 16)


def test_without_pyav_npz_training_data_still_loads_and_videos_say_what_to_install(tmp_path):
    """The GPU box trains from npz clips without PyAV; reading a video there names the missing package."""
    import subprocess
    import sys

    np.savez(
        tmp_path / "c.npz",
        source=np.zeros((5, 16, 16, 3), np.uint8),
        target=np.ones((5, 16, 16, 3), np.uint8),
        mask=np.ones((5, 16, 16), np.uint8),
    )
    (tmp_path / "m.jsonl").write_text('{"npz": "c.npz", "instruction": "x"}\n')
    (tmp_path / "v.mp4").write_bytes(b"\0" * 64)
    code = f"""
import sys; sys.modules["av"] = None
from viva_core.data import load_manifest, load_sample
from viva_core.errors import VideoError
from viva_core.video import read_video
(r,) = load_manifest({str(tmp_path / "m.jsonl")!r})
assert load_sample(r).target.shape == (5, 16, 16, 3)
try:
    read_video({str(tmp_path / "v.mp4")!r})
except VideoError as e:
    assert "pip install av" in str(e), e
    print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
