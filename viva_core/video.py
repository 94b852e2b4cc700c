"""The project's only video I/O: probe, stream-decode, encode, and snap frames to model sizes.

Frames are `[T,H,W,C]` float32 in 0..1 with C=3 (RGB), the same layout as a ComfyUI IMAGE batch, so
nodes pass them through without copies. Decoding streams through PyAV and keeps only the selected frames
(users' top complaint about video packs is RAM spent on frames nobody asked for). Writing is atomic: a
temp file beside the target is renamed over it only when the whole video encoded, so a failed edit never
leaves a half-written or overwritten file.

Rotation metadata (phone videos) is ignored: frames come out as stored, and the written file carries none.
Colours: decoding honours the file's colour tags; writing converts RGB with BT.709 (limited range) and
tags the stream so players show the same colours.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

try:
    import av
except ImportError:  # av is a dependency; only a GPU box that trains from npz clips runs without it
    av = None

from .errors import InputError, NonFiniteError, VideoError
from .runtime import ProgressFn
from .safe_io import atomic_path

PathLike = str | os.PathLike

# Writing goes through the MP4/QuickTime muxer ("+faststart" puts the index first so browsers can
# preview the file while it loads); these are the suffixes it is used for.
WRITE_SUFFIXES = (".mp4", ".m4v", ".mov")
# Sample rates the AAC encoder accepts; anything else fails deep inside FFmpeg with "Invalid argument".
AAC_SAMPLE_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)
# FFmpeg layouts used for each channel count when encoding AAC.
AAC_LAYOUTS = {1: "mono", 2: "stereo", 3: "3.0", 4: "quad", 5: "5.0", 6: "5.1"}
# AVCOL_SPC_BT709, AVCOL_PRI_BT709, AVCOL_TRC_BT709 and AVCOL_RANGE_MPEG all have the value 1 in FFmpeg.
_AVCOL_BT709 = _AVCOL_RANGE_MPEG = 1


@dataclass
class Audio:
    """Waveform float32 `[channels, samples]` in -1..1 at `sample_rate` Hz."""

    waveform: torch.Tensor
    sample_rate: int


@dataclass
class VideoInfo:
    """What `probe_video` learns without decoding frames. `num_frames` is what decoding will give: it comes
    from the container index (minus frames an edit list hides), or from counting packets where the
    container keeps no count (e.g. MKV)."""

    path: str
    num_frames: int
    fps: float
    width: int
    height: int
    has_audio: bool
    duration_s: float
    codec: str


@dataclass
class Video:
    """Decoded frames `[T,H,W,3]` float32 in 0..1, their rate, and the audio of the same time span."""

    frames: torch.Tensor
    fps: float
    audio: Audio | None = None


# ---------------------------------------------------------------------------------------------- reading


def _require_av(p: Path) -> None:
    if av is None:
        raise VideoError(f"{p}: reading and writing videos needs PyAV, which is not installed: pip install av")


def _open_for_reading(path: PathLike) -> tuple[Path, av.container.InputContainer]:
    """Open a video file, turning every way it can be unreadable into a VideoError that says what to do."""
    p = Path(path)
    if not p.exists():
        raise VideoError(f"{p}: video file not found. Check the path, or copy the video there.")
    if p.is_dir():
        raise VideoError(f"{p}: is a folder, not a video file. Pick a video file inside it.")
    if p.stat().st_size == 0:
        raise VideoError(f"{p}: file is empty (0 bytes); its download or export did not finish. Export it again.")
    _require_av(p)
    try:
        return p, av.open(str(p))
    except (av.error.FFmpegError, OSError) as e:
        raise VideoError(
            f"{p}: not a readable video ({e}). The file is corrupt, truncated or not a video; "
            "export it again, e.g. as an .mp4 (h264)."
        ) from e


def _video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream | None:
    """The first real video stream: cover art in a music file is stored as a one-picture video stream."""
    attached_pic = av.stream.Disposition.attached_pic
    return next((s for s in container.streams.video if not s.disposition & attached_pic), None)


def _count_frames(p: Path, container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> int:
    """Frames the decoder will output, found without decoding. Raises if the file is cut short."""
    entries = stream.index_entries
    if stream.frames and len(entries) == stream.frames:  # a full sample index (MP4/MOV)
        size, end = p.stat().st_size, max(e.pos + e.size for e in entries)
        if end > size:
            complete = sum(e.pos + e.size <= size for e in entries)
            raise VideoError(
                f"{p}: the file is truncated: it ends at byte {size} but its index lists video "
                f"data up to byte {end} ({complete} of {len(entries)} frames are complete). "
                "The download or export did not finish; get the file again."
            )
        return sum(not e.is_discard for e in entries)  # edit lists (trimmed exports) mark hidden frames
    try:
        # No full index (e.g. MKV): count packets. Demuxing reads them without decoding, so it is cheap.
        return stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
    except av.error.FFmpegError as e:
        raise VideoError(f"{p}: the file is truncated or corrupt ({e}). Export it again.") from e


def _probe_container(p: Path, container: av.container.InputContainer) -> VideoInfo:
    """VideoInfo from stream headers and the index; raises VideoError for anything that cannot be edited."""
    stream = _video_stream(container)
    if stream is None:
        kinds = (
            ", ".join(
                sorted(
                    {
                        "cover picture" if s.disposition & av.stream.Disposition.attached_pic else s.type
                        for s in container.streams
                    }
                )
            )
            or "none"
        )
        raise VideoError(
            f"{p}: has no video stream (only: {kinds}). Audio-only or data files cannot be "
            "edited; pick a file with video in it."
        )
    width, height = stream.codec_context.width, stream.codec_context.height
    if width <= 0 or height <= 0:
        raise VideoError(
            f"{p}: the video stream has no frame size ({width}x{height}); the file is corrupt. Export it again."
        )
    num_frames = _count_frames(p, container, stream)
    if num_frames == 0:
        raise VideoError(f"{p}: the video stream has no frames. Export the video again.")
    if stream.duration and stream.time_base:
        duration_s: float | None = float(stream.duration * stream.time_base)
    elif container.duration:
        duration_s = container.duration / av.time_base
    else:
        duration_s = None
    # Variable-frame-rate files: average_rate is FFmpeg's frames/duration; otherwise do that math here.
    if stream.average_rate and stream.average_rate > 0:
        fps = float(stream.average_rate)
    elif duration_s:
        fps = num_frames / duration_s
    elif stream.guessed_rate and stream.guessed_rate > 0:
        fps = float(stream.guessed_rate)
    else:
        raise VideoError(
            f"{p}: the frame rate cannot be determined (no rate and no duration in the file). "
            "Export it again with a fixed frame rate."
        )
    return VideoInfo(
        path=str(p),
        num_frames=num_frames,
        fps=fps,
        width=width,
        height=height,
        has_audio=bool(container.streams.audio),
        duration_s=duration_s if duration_s else num_frames / fps,
        codec=stream.codec_context.name,
    )


def probe_video(path: PathLike) -> VideoInfo:
    """Frame count, rate, size, duration, codec and audio presence, without decoding frames."""
    p, container = _open_for_reading(path)
    with container:
        return _probe_container(p, container)


def _too_many_bytes(p: Path, count: int, height: int, width: int, max_bytes: int, available: int) -> InputError:
    """The error for a selection over `max_bytes`, saying how many frames fit and how to get there."""
    frame_bytes = height * width * 3 * 4
    fit = max_bytes // frame_bytes
    need = f"{count} frames of {format_size(height, width)} take {count * frame_bytes / 2**30:.2f} GiB as float32"
    limit = f"the limit is {max_bytes / 2**30:.2f} GiB"
    if fit == 0:
        return InputError(
            f"{p}: {need}; {limit}, less than one frame ({frame_bytes / 2**20:.1f} MiB). "
            "Raise the memory limit or downscale the video first."
        )
    return InputError(
        f"{p}: {need}; {limit}, so {fit} frames of this size fit. "
        f"Set max_frames={fit} or stride={math.ceil(available / fit)}."
    )


def _decode_selected(
    p: Path,
    info: VideoInfo,
    start_frame: int,
    stride: int,
    max_frames: int | None,
    max_bytes: int | None,
    planned: int,
    progress: ProgressFn | None,
) -> tuple[list[np.ndarray], float]:
    """Decode in order and keep uint8 RGB copies of the selected frames only; also return the time of the
    first frame (the origin the audio span is measured from)."""
    fit = None if max_bytes is None else max_bytes // (info.height * info.width * 3 * 4)
    kept: list[np.ndarray] = []
    origin = 0.0
    decoded = 0
    _, container = _open_for_reading(p)
    with container:
        stream = _video_stream(container)
        stream.thread_type = "AUTO"
        try:
            for index, frame in enumerate(container.decode(stream)):
                decoded = index + 1
                if index == 0 and frame.time is not None:
                    origin = frame.time
                if index < start_frame or (index - start_frame) % stride:
                    continue  # skipped frames are decoded (codecs need them) but never converted to RGB
                if fit is not None and len(kept) >= fit:  # the probed count was short of the real one
                    raise _too_many_bytes(
                        p, len(kept) + 1, info.height, info.width, max_bytes, info.num_frames - start_frame
                    )
                # Sized to the probed frame size: a stream that changes size mid-way still stacks.
                kept.append(frame.to_ndarray(format="rgb24", width=info.width, height=info.height))
                if progress is not None:
                    progress(len(kept), max(planned, len(kept)))
                if len(kept) == max_frames:
                    break
        except av.error.FFmpegError as e:
            raise VideoError(
                f"{p}: decoding failed after {decoded} frames ({e}); the file is corrupt. "
                f"Export it again, or set max_frames so reading stops before frame {decoded}."
            ) from e
    if not kept:
        if decoded == 0:
            raise VideoError(f"{p}: no frame could be decoded; the file is corrupt. Export it again.")
        raise InputError(
            f"{p}: start_frame={start_frame} but the video has only {decoded} frames. "
            f"Use a start_frame below {decoded}."
        )
    return kept, origin


def _stack_as_float(kept: list[np.ndarray]) -> torch.Tensor:
    """uint8 frames → one float32 tensor, releasing each uint8 frame as it is copied (peak ≈ 1.25× result)."""
    out = torch.empty((len(kept), *kept[0].shape), dtype=torch.float32)
    for i in range(len(kept) - 1, -1, -1):
        out[i] = torch.from_numpy(kept.pop())
    return out.div_(255.0)


def _float_audio_frames(
    container: av.container.InputContainer, stream: av.audio.stream.AudioStream
) -> Iterator[av.AudioFrame]:
    """Decoded audio as planar float32 frames (whatever the file's sample format)."""
    resampler = av.AudioResampler(format="fltp")
    for frame in container.decode(stream):
        yield from resampler.resample(frame)
    yield from resampler.resample(None)


def _read_audio(p: Path, start_s: float, end_s: float) -> Audio | None:
    """The audio samples of the time span [start_s, end_s), as a waveform starting at start_s.

    Silence fills a gap where the audio starts after start_s (keeps sync); the waveform ends where the
    audio ends, at the latest at end_s. None when the track has no samples in the span."""
    _, container = _open_for_reading(p)
    with container:
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate
        first, length = round(start_s * rate), round((end_s - start_s) * rate)
        pieces: list[tuple[int, np.ndarray]] = []  # (offset in the output, samples [C, n])
        next_time = 0.0
        try:
            for frame in _float_audio_frames(container, stream):
                time = frame.time if frame.time is not None else next_time
                next_time = time + frame.samples / rate
                offset = round(time * rate) - first
                if offset >= length:
                    break
                lo, hi = max(0, -offset), min(frame.samples, length - offset)
                if lo < hi:
                    pieces.append((offset + lo, frame.to_ndarray()[:, lo:hi]))
        except av.error.FFmpegError as e:
            raise VideoError(
                f"{p}: the audio track cannot be decoded ({e}). Read the video without audio "
                "(with_audio=False) or export it again."
            ) from e
    if not pieces:
        return None
    channels = pieces[0][1].shape[0]
    waveform = torch.zeros((channels, max(offset + a.shape[1] for offset, a in pieces)), dtype=torch.float32)
    for offset, samples in pieces:
        waveform[:, offset : offset + samples.shape[1]] = torch.from_numpy(samples)
    return Audio(waveform=waveform, sample_rate=rate)


def read_video(
    path: PathLike,
    *,
    max_frames: int | None = None,
    stride: int = 1,
    start_frame: int = 0,
    max_bytes: int | None = None,
    with_audio: bool = True,
    progress: ProgressFn | None = None,
) -> Video:
    """Decode frames `start_frame, start_frame+stride, …` (at most `max_frames`) and their audio.

    Memory follows the kept frames only: frames are streamed, unselected ones are never converted, and
    decoding stops once `max_frames` are kept (peak ≈ 1.25× the returned tensor while stacking).
    `max_bytes` caps the returned float32 frames (T·H·W·3·4 bytes) and is checked before decoding.
    The result's fps is the source fps / stride; the audio covers [start, start + T·stride) frames of time.
    A 1-frame video gives T=1; callers decide whether that is enough. Rotation metadata is ignored.
    """
    if stride < 1:
        raise InputError(f"stride={stride} must be at least 1 (1 keeps every frame, 2 every other one).")
    if start_frame < 0:
        raise InputError(f"start_frame={start_frame} must be 0 or more (0 is the first frame).")
    if max_frames is not None and max_frames < 1:
        raise InputError(f"max_frames={max_frames} must be at least 1, or None for no cap.")
    if max_bytes is not None and max_bytes <= 0:
        raise InputError(f"max_bytes={max_bytes} must be positive, or None for no cap.")
    info = probe_video(path)
    p = Path(path)
    if start_frame >= info.num_frames:
        raise InputError(
            f"{p}: start_frame={start_frame} but the video has {info.num_frames} frames. "
            f"Use a start_frame below {info.num_frames}."
        )
    available = info.num_frames - start_frame
    planned = math.ceil(available / stride)
    if max_frames is not None:
        planned = min(planned, max_frames)
    if max_bytes is not None and planned * info.height * info.width * 3 * 4 > max_bytes:
        raise _too_many_bytes(p, planned, info.height, info.width, max_bytes, available)

    kept, origin = _decode_selected(p, info, start_frame, stride, max_frames, max_bytes, planned, progress)
    frames = _stack_as_float(kept)
    audio = None
    if with_audio and info.has_audio:
        start_s = origin + start_frame / info.fps
        audio = _read_audio(p, start_s, start_s + frames.shape[0] * stride / info.fps)
    return Video(frames=frames, fps=info.fps / stride, audio=audio)


# ---------------------------------------------------------------------------------------------- writing


def frames_to_uint8(frames: torch.Tensor) -> torch.Tensor:
    """float frames in 0..1 (any shape, any device) → uint8 0..255, values outside 0..1 clamped."""
    return (frames.detach().float().clamp(0.0, 1.0) * 255.0).round_().to(torch.uint8)


def _check_write_args(
    p: Path, frames: torch.Tensor, fps: float, audio: Audio | None, crf: int, codec: str, pix_fmt: str
) -> None:
    """Reject what would fail (or silently go wrong) inside FFmpeg, before any file is created."""
    if p.suffix.lower() not in WRITE_SUFFIXES:
        raise InputError(f"{p}: videos are written as MP4; use one of {', '.join(WRITE_SUFFIXES)} as suffix.")
    if not isinstance(frames, torch.Tensor) or frames.ndim != 4 or frames.shape[-1] != 3:
        shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise InputError(f"{p}: frames must be a tensor [T,H,W,3] (RGB, channels last), got {shape}.")
    if frames.shape[0] == 0 or frames.shape[1] == 0 or frames.shape[2] == 0:
        raise InputError(f"{p}: frames {tuple(frames.shape)} are empty; there is nothing to write.")
    if not frames.is_floating_point():
        raise InputError(f"{p}: frames must be float in 0..1, got {frames.dtype}; divide uint8 frames by 255.")
    if not (math.isfinite(fps) and 0 < fps <= 1000):
        raise InputError(f"{p}: fps={fps} must be a number in (0, 1000].")
    if not 0 <= crf <= 51:
        raise InputError(f"{p}: crf={crf} must be in 0..51 (0 lossless, 18 visually lossless, 51 worst).")
    try:
        av.codec.Codec(codec, "w")
    except ValueError:
        raise InputError(f"{p}: this FFmpeg build has no '{codec}' encoder; use codec='libx264'.") from None
    try:
        av.VideoFormat(pix_fmt)
    except ValueError:
        raise InputError(f"{p}: '{pix_fmt}' is not a pixel format; use pix_fmt='yuv420p'.") from None
    if audio is not None:
        w = audio.waveform
        if not isinstance(w, torch.Tensor) or w.ndim != 2 or w.shape[1] == 0:
            shape = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
            raise InputError(f"{p}: audio waveform must be a tensor [channels, samples], got {shape}.")
        if w.shape[0] not in AAC_LAYOUTS:
            raise InputError(f"{p}: audio has {w.shape[0]} channels; AAC here takes 1 to 6. Downmix to stereo.")
        if audio.sample_rate not in AAC_SAMPLE_RATES:
            raise InputError(
                f"{p}: audio sample rate {audio.sample_rate} Hz is not one AAC accepts "
                f"({', '.join(map(str, AAC_SAMPLE_RATES))}); resample it, e.g. to 48000."
            )
        if not torch.isfinite(w).all():
            raise NonFiniteError(
                f"{p}: the audio waveform contains NaN/Inf; nothing was written. "
                "Fix the step that produced the audio, or write without it."
            )


def _even_size(height: int, width: int, pix_fmt: str) -> tuple[int, int]:
    """The smallest size ≥ (height, width) whose sides divide by the pixel format's chroma subsampling."""
    fmt = av.VideoFormat(pix_fmt)
    sub_h, sub_w = 64 // fmt.chroma_height(64), 64 // fmt.chroma_width(64)
    return -(-height // sub_h) * sub_h, -(-width // sub_w) * sub_w


def _encode_audio(stream: av.audio.stream.AudioStream, waveform: np.ndarray, begin: int, end: int) -> list[av.Packet]:
    """Packets for samples [begin, end) of a planar float32 waveform (the encoder reframes them)."""
    if end <= begin:
        return []
    frame = av.AudioFrame.from_ndarray(
        np.ascontiguousarray(waveform[:, begin:end]), format="fltp", layout=AAC_LAYOUTS[waveform.shape[0]]
    )
    frame.sample_rate = stream.codec_context.sample_rate
    frame.pts, frame.time_base = begin, Fraction(1, frame.sample_rate)
    return stream.encode(frame)


def _encode(
    container: av.container.OutputContainer,
    p: Path,
    frames: torch.Tensor,
    rate: Fraction,
    audio: Audio | None,
    crf: int,
    codec: str,
    pix_fmt: str,
    size: tuple[int, int],
    progress: ProgressFn | None,
) -> None:
    """Encode frame by frame (one frame in CPU memory at a time), audio interleaved by time."""
    num, height, width = frames.shape[0], frames.shape[1], frames.shape[2]
    video = container.add_stream(codec, rate=rate, options={"crf": str(crf)})
    video.width, video.height, video.pix_fmt = size[1], size[0], pix_fmt
    yuv = not av.VideoFormat(pix_fmt).is_rgb
    if yuv:
        cc = video.codec_context
        cc.colorspace = cc.color_primaries = cc.color_trc = _AVCOL_BT709
        cc.color_range = _AVCOL_RANGE_MPEG
    reformatter = av.video.reformatter
    convert = (
        {"dst_colorspace": reformatter.Colorspace.ITU709, "dst_color_range": reformatter.ColorRange.MPEG} if yuv else {}
    )
    sound = (
        container.add_stream("aac", rate=int(audio.sample_rate), layout=AAC_LAYOUTS[audio.waveform.shape[0]])
        if audio
        else None
    )
    waveform = audio.waveform.detach().to("cpu", torch.float32).clamp(-1, 1).numpy() if audio else None
    sent = 0
    for i in range(num):
        if not torch.isfinite(frames[i]).all():
            raise NonFiniteError(
                f"{p}: frame {i} contains NaN/Inf; nothing was written. The model output "
                "is broken: check the sampler settings and the dtype (Wan needs bf16 or "
                "fp32, not fp16)."
            )
        rgb = frames_to_uint8(frames[i]).cpu().numpy()
        if (height, width) != size:
            rgb = np.pad(rgb, ((0, size[0] - height), (0, size[1] - width), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=pix_fmt, **convert)
        frame.pts = i
        container.mux(video.encode(frame))
        if sound is not None:
            until = min(waveform.shape[1], round((i + 1) / rate * audio.sample_rate))
            container.mux(_encode_audio(sound, waveform, sent, until))
            sent = until
        if progress is not None:
            progress(i + 1, num)
    container.mux(video.encode(None))
    if sound is not None:
        container.mux(_encode_audio(sound, waveform, sent, waveform.shape[1]))
        container.mux(sound.encode(None))


def write_video(
    path: PathLike,
    frames: torch.Tensor,
    fps: float,
    audio: Audio | None = None,
    *,
    crf: int = 18,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    progress: ProgressFn | None = None,
) -> Path:
    """Write frames `[T,H,W,3]` (float 0..1, any device) as an MP4, with AAC audio when given.

    Atomic: encodes into a hidden temp file in the target folder and renames it over `path` only on
    success; on any error (NaN/Inf frames included) the temp file is removed and an existing file at
    `path` is left untouched. Values outside 0..1 are clamped. Pixel formats with chroma subsampling need
    even sides, so an odd height/width is padded by repeating the last row/column (with a warning).
    The folder is created if missing. Returns the written path.
    """
    p = Path(path)
    _require_av(p)
    _check_write_args(p, frames, fps, audio, crf, codec, pix_fmt)
    height, width = frames.shape[1], frames.shape[2]
    size = _even_size(height, width, pix_fmt)
    if size != (height, width):
        warnings.warn(
            f"{p}: {format_size(height, width)} frames padded to {format_size(*size)} by repeating the last "
            f"row/column; {pix_fmt} needs even sides.",
            stacklevel=2,
        )
    try:
        with (
            atomic_path(p) as tmp,
            av.open(
                str(tmp), "w", format="mp4" if p.suffix.lower() != ".mov" else "mov", options={"movflags": "+faststart"}
            ) as container,
        ):
            _encode(
                container, p, frames, Fraction(fps).limit_denominator(1001), audio, crf, codec, pix_fmt, size, progress
            )
    except (av.error.FFmpegError, OSError) as e:
        raise VideoError(
            f"{p}: writing failed ({e}); nothing was written. Check that the folder is "
            "writable and has free space, and that codec/pix_fmt/crf suit each other."
        ) from e
    return p


def trim_audio(audio: Audio | None, seconds: float) -> Audio | None:
    """Cut audio to the video's duration, so dropped trailing frames do not leave a tail of sound."""
    if audio is None:
        return None
    keep = int(round(seconds * audio.sample_rate))
    return audio if audio.waveform.shape[-1] <= keep else Audio(audio.waveform[..., :keep], audio.sample_rate)


def read_image(path: PathLike) -> torch.Tensor:
    """An image file as [H,W,3] float32 0..1 (reference images for the instructor)."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: image not found. Check the path.")
    try:
        with Image.open(p) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(f"{p}: not a readable image ({e}); use a PNG or JPEG.") from e
    return torch.from_numpy(arr)


# ------------------------------------------------------------------------------ snapping to model sizes


def uniform_frame_indices(num_frames: int, count: int) -> list[int]:
    """`count` indices spread evenly over `num_frames`, first and last included (count=1 → [0]);
    all indices when count ≥ num_frames. Used to show a VLM a few frames of a clip."""
    if num_frames < 1 or count < 1:
        raise InputError(f"uniform_frame_indices needs num_frames ≥ 1 and count ≥ 1, got {num_frames}, {count}.")
    if count >= num_frames:
        return list(range(num_frames))
    if count == 1:
        return [0]
    span, steps = num_frames - 1, count - 1
    return [(i * span + steps // 2) // steps for i in range(count)]  # integer rounding: no float drift


def snap_frame_count(n: int, temporal_factor: int = 4) -> int:
    """Largest `k·temporal_factor + 1 ≤ n`: the frame counts a causal video VAE accepts (Wan: 4k+1)."""
    if n < 1 or temporal_factor < 1:
        raise InputError(f"snap_frame_count needs n ≥ 1 and temporal_factor ≥ 1, got {n}, {temporal_factor}.")
    return (n - 1) // temporal_factor * temporal_factor + 1


def snap_size(height: int, width: int, multiple: int) -> tuple[int, int]:
    """(height, width) rounded down to multiples of `multiple`, at least one multiple each."""
    if height < 1 or width < 1 or multiple < 1:
        raise InputError(f"snap_size needs positive sizes and multiple, got {format_size(height, width)}, {multiple}.")
    return max(multiple, height // multiple * multiple), max(multiple, width // multiple * multiple)


def format_size(height: int, width: int) -> str:
    """A frame size as users read it: width x height, the order of ffprobe, players and editors (tensors here
    are [T,H,W,C], so code keeps (height, width) and only this turns it around)."""
    return f"{width}x{height}"


def snap_size_up(height: int, width: int, multiple: int) -> tuple[int, int]:
    """(height, width) rounded up to multiples of `multiple`: the frame a source is padded to."""
    if height < 1 or width < 1 or multiple < 1:
        raise InputError(
            f"snap_size_up needs positive sizes and multiple, got {format_size(height, width)}, {multiple}."
        )
    return -(-height // multiple) * multiple, -(-width // multiple) * multiple


def fit_size(height: int, width: int, box: tuple[int, int]) -> tuple[int, int]:
    """The largest (h, w) of the aspect height:width inside `box` (h, w), sides rounded to pixels (≥ 1)."""
    scale = min(box[0] / height, box[1] / width)
    return max(1, min(box[0], round(height * scale))), max(1, min(box[1], round(width * scale)))


FITS = ("crop", "pad")
PAD_MODES = ("replicate", "reflect")
_PAD_WORDS = {"replicate": "edge", "reflect": "reflect"}


@dataclass
class ConformReport:
    """What `conform_frames` did, enough for `unconform_frames` to undo it. Sizes are (height, width), the
    tensors' order; messages print width x height."""

    original_frames: int
    original_size: tuple[int, int]
    frames: int
    size: tuple[int, int]  # the working frame the model sees
    temporal_factor: int = 4
    spatial_multiple: int = 16
    resized_to: tuple[int, int] | None = None  # the source's size after resizing, before the crop or pad
    fit: str = "crop"
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, bottom, left, right (fit="pad")
    pad_mode: str = "replicate"

    @property
    def changed(self) -> bool:
        return self.frames != self.original_frames or self.size != self.original_size

    def message(self) -> str:
        """One line for the user, e.g. '81 frames kept of 83 (4k+1); 832x480 from 835x481 (center crop to
        multiple of 16)', '17 frames kept of 18 (4k+1); edited at 64x64 (96x48 scaled to 64x32, aspect kept,
        edge-padded); output scaled back to 96x48', or 'unchanged'. Sizes are written width x height."""
        if not self.changed:
            return "unchanged"
        parts = []
        if self.frames != self.original_frames:
            parts.append(f"{self.frames} frames kept of {self.original_frames} ({self.temporal_factor}k+1)")
        if self.size != self.original_size:
            size, original = format_size(*self.size), format_size(*self.original_size)
            resized = format_size(*self.resized_to) if self.resized_to else ""
            if self.fit == "pad":
                how = [f"{original} scaled to {resized}, aspect kept"] if self.resized_to else [original]
                if any(self.padding):
                    how.append(f"{_PAD_WORDS[self.pad_mode]}-padded")
                back = "scaled" if self.resized_to else "cropped"
                parts.append(f"edited at {size} ({', '.join(how)}); output {back} back to {original}")
            else:
                how = [f"resized to {resized}"] if self.resized_to else []
                if self.size != (self.resized_to or self.original_size):
                    how.append(f"center crop to multiple of {self.spatial_multiple}")
                parts.append(f"{size} from {original} ({', then '.join(how)})")
        return "; ".join(parts)


def _resize(frames: torch.Tensor, size: tuple[int, int], chunk: int = 8) -> torch.Tensor:
    """Bilinear antialiased resize of [T,H,W,C], a few frames at a time to bound the temporary memory."""
    out = torch.empty((frames.shape[0], *size, frames.shape[3]), dtype=frames.dtype, device=frames.device)
    for i in range(0, frames.shape[0], chunk):
        part = frames[i : i + chunk].permute(0, 3, 1, 2).float()
        out[i : i + chunk] = F.interpolate(
            part, size=size, mode="bilinear", antialias=True, align_corners=False
        ).permute(0, 2, 3, 1)
    return out


def _pad(frames: torch.Tensor, padding: tuple[int, int, int, int], mode: str, chunk: int = 8) -> torch.Tensor:
    """[T,H,W,C] padded by (top, bottom, left, right) pixels with `mode`, a few frames at a time."""
    top, bottom, left, right = padding
    t, h, w, c = frames.shape
    out = torch.empty((t, h + top + bottom, w + left + right, c), dtype=frames.dtype, device=frames.device)
    for i in range(0, t, chunk):
        part = frames[i : i + chunk].permute(0, 3, 1, 2)
        out[i : i + chunk] = F.pad(part, (left, right, top, bottom), mode=mode).permute(0, 2, 3, 1)
    return out


def conform_frames(
    frames: torch.Tensor,
    temporal_factor: int,
    spatial_multiple: int,
    *,
    resize_to: tuple[int, int] | None = None,
    fit: str = "crop",
    pad_mode: str = "replicate",
) -> tuple[torch.Tensor, ConformReport]:
    """Make frames `[T,H,W,C]` fit a video model: T → k·temporal_factor+1 by dropping trailing frames, then
    the sides, by `fit`:

    - "crop" (training data, whose source, target and mask must stay pixel-aligned with each other): resize to
      `resize_to` (h, w) if given, aspect not kept, then center-crop H, W down to multiples of
      `spatial_multiple`. Without a resize the result is a view of the input.
    - "pad" (editing a user's video): scale to fit inside `resize_to` keeping the aspect (no resize without
      it), then pad with `pad_mode` to multiples of `spatial_multiple`; nothing of the frame is lost, and
      `unconform_frames` returns the model's output at the source's own size, pixel-aligned with it.

    Never silent: the report says what changed.
    """
    if not isinstance(frames, torch.Tensor) or frames.ndim != 4 or frames.shape[0] == 0:
        shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise InputError(f"conform_frames needs frames [T,H,W,C] with T ≥ 1, got {shape}.")
    if fit not in FITS or pad_mode not in PAD_MODES:
        raise InputError(
            f"conform_frames: fit={fit!r} must be one of {FITS}, pad_mode={pad_mode!r} one of {PAD_MODES}."
        )
    original_frames, original_size = frames.shape[0], (frames.shape[1], frames.shape[2])
    frames = frames[: snap_frame_count(original_frames, temporal_factor)]
    box = None
    if resize_to is not None:
        if len(resize_to) != 2 or min(resize_to) < 1:
            raise InputError(f"resize_to={resize_to} must be (height, width) with positive sides.")
        box = (int(resize_to[0]), int(resize_to[1]))
    resized = box if fit == "crop" or box is None else fit_size(*original_size, box)
    if resized == original_size:
        resized = None  # nothing to resize; keeps the report honest
    elif resized is not None:
        frames = _resize(frames, resized)
    height, width = frames.shape[1], frames.shape[2]
    report = dict(
        original_frames=original_frames,
        original_size=original_size,
        temporal_factor=temporal_factor,
        spatial_multiple=spatial_multiple,
        resized_to=resized,
        fit=fit,
        pad_mode=pad_mode,
    )
    if fit == "pad":
        h, w = snap_size_up(*(box or (height, width)), spatial_multiple)
        top, left = (h - height) // 2, (w - width) // 2
        padding = (top, h - height - top, left, w - width - left)
        if any(padding):
            frames = _pad(frames, padding, pad_mode)
        return frames, ConformReport(frames=frames.shape[0], size=(h, w), padding=padding, **report)
    h, w = snap_size(height, width, spatial_multiple)
    if h > height or w > width:
        raise InputError(
            f"frames of {format_size(height, width)} are smaller than one multiple of "
            f"{spatial_multiple}; pass resize_to with sides of at least {spatial_multiple} to upscale "
            "them, or pad them (fit='pad')."
        )
    top, left = (height - h) // 2, (width - w) // 2
    frames = frames[:, top : top + h, left : left + w]
    return frames, ConformReport(frames=frames.shape[0], size=(h, w), **report)


def unconform_frames(frames: torch.Tensor, report: ConformReport) -> torch.Tensor:
    """A model's output `[T,H,W,C]` for frames conformed with fit="pad", back at the source's size: the padding
    cut off, then scaled back if the source was scaled. The frame count stays (trailing frames were dropped)."""
    if report.fit != "pad":
        raise InputError(
            "these frames were center-cropped (fit='crop'); the cropped border is gone, so they "
            "cannot be returned at the source's size. Conform with fit='pad'."
        )
    if frames.ndim != 4 or (frames.shape[1], frames.shape[2]) != report.size:
        raise InputError(
            f"unconform_frames needs [T,H,W,C] frames of the working size "
            f"{format_size(*report.size)}, got shape {tuple(frames.shape)}."
        )
    top, bottom, left, right = report.padding
    frames = frames[:, top : report.size[0] - bottom, left : report.size[1] - right]
    return frames if report.resized_to is None else _resize(frames, report.original_size)
