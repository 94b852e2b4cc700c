"""A user's own video keeps its aspect and size: conform (scale to fit + pad) and un-conform against an independent
computation (PIL's resampler, numpy's padding, a sinusoid's analytic attenuation), the bundled editor end to end on
a non-square clip, and sizes reported as W x H."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from viva_core import bundled
from viva_core.editor import EditorOptions, load_editor
from viva_core.errors import InputError
from viva_core.pipeline import EditSettings, edit, reconstruct
from viva_core.video import conform_frames, format_size, unconform_frames

T, H, W = 17, 48, 96  # the source: 96x48 (W x H), 17 frames


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / ((a.float() - b.float()) ** 2).mean().clamp_min(1e-12)))


def sinusoid(t: int, h: int, w: int, amp: float = 0.4) -> torch.Tensor:
    """[T,H,W,3] 0.5 + amp sin(2π(x + y)/48 + phase): 2 cycles across 96 px, 1 across 48; phase per frame/channel."""
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    phase = torch.arange(t * 3, dtype=torch.float64).view(t, 1, 1, 3) * 0.7
    return (0.5 + amp * torch.sin(2 * math.pi * (x + y)[None, :, :, None] / 48 + phase)).float()


def pil_resize(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[T,H,W,C] resized to (h, w) by PIL's antialiased bilinear, one float channel at a time."""
    out = [
        [
            np.asarray(Image.fromarray(f[..., c].numpy(), mode="F").resize((size[1], size[0]), Image.BILINEAR))
            for c in range(f.shape[-1])
        ]
        for f in frames
    ]
    return torch.from_numpy(np.stack([np.stack(chans, -1) for chans in out]))


def test_pad_fit_matches_pil_and_numpy_and_round_trips():
    """96x48 into a 64x64 working frame: scaled by PIL to 64x32 (aspect kept), edge-padded 16 rows above and
    below by numpy; un-conform = cut rows 16..48, scale back by PIL. Ours equals that composition."""
    src = sinusoid(18, H, W)
    x, report = conform_frames(src, 4, 16, resize_to=(64, 64), fit="pad")
    small = pil_resize(src[:17], (32, 64))
    expected = torch.from_numpy(np.pad(small.numpy(), ((0, 0), (16, 16), (0, 0), (0, 0)), mode="edge"))
    assert x.shape == (17, 64, 64, 3) and (x - expected).abs().max() < 1e-5
    assert report.size == (64, 64) and report.resized_to == (32, 64) and report.padding == (16, 16, 0, 0)
    back = unconform_frames(x, report)
    assert back.shape == (17, H, W, 3)
    assert (back - pil_resize(expected[:, 16:48], (H, W))).abs().max() < 1e-5


def test_round_trip_psnr_is_the_resamplers_attenuation():
    """The round trip scales by s = 1.5 down (antialiased: a triangle of width s) and up (linear interpolation on
    a grid of spacing s): each passes a sinusoid of f cycles/px times sinc²(f·s). At f = 1/48 on both axes
    the wave returns scaled by H = sinc⁴(1/32)² = 0.9872, an RMS error of amp (1 - H)/√2 = 0.0036 (48.8 dB);
    the edge rows/columns (6% of pixels) extrapolate by clamping, about slope x 1/2 px = 0.026, which adds as
    much again: ~46 dB. The bound, 40 dB, leaves 6 dB for that estimate; misplacing the content by one working
    pixel (1.5 px of the source) costs amp·2sin(π·1.5/48)/√2 → 25.6 dB and fails it."""
    src = sinusoid(17, H, W)
    x, report = conform_frames(src, 4, 16, resize_to=(64, 64), fit="pad")
    back = unconform_frames(x, report)
    sinc = math.sin(math.pi / 32) / (math.pi / 32)
    attenuation_db = -20 * math.log10(0.4 * (1 - sinc**8) / math.sqrt(2))
    assert attenuation_db == pytest.approx(48.8, abs=0.1)
    assert 40 < psnr(back, src) < attenuation_db
    shifted = torch.roll(x, 1, dims=1)  # the content one working pixel low
    assert psnr(unconform_frames(shifted, report), src) < 30


def test_sizes_that_are_multiples_stay_and_others_pad_and_crop_back_exactly():
    """A real editor (no native size): a multiple of 16 is left alone (a view, no copy); 99x45 is edge-padded to
    112x48 (left 6, right 7, top 1, bottom 2) and cropped back bit-exactly."""
    src = torch.rand(10, 45, 99, 3, generator=torch.Generator().manual_seed(0))
    same, report = conform_frames(torch.rand(9, 32, 48, 3), 4, 16, fit="pad")
    assert not report.changed and report.message() == "unchanged"
    x, report = conform_frames(src, 4, 16, fit="pad")
    expected = np.pad(src[:9].numpy(), ((0, 0), (1, 2), (6, 7), (0, 0)), mode="edge")
    assert x.shape == (9, 48, 112, 3) and torch.equal(x, torch.from_numpy(expected))
    assert torch.equal(unconform_frames(x, report), src[:9])
    assert report.message() == (
        "9 frames kept of 10 (4k+1); edited at 112x48 (99x45, edge-padded); output cropped back to 99x45"
    )
    reflect, _ = conform_frames(src, 4, 16, fit="pad", pad_mode="reflect")
    assert torch.equal(
        reflect, torch.from_numpy(np.pad(src[:9].numpy(), ((0, 0), (1, 2), (6, 7), (0, 0)), mode="reflect"))
    )


def test_unconform_refuses_what_it_cannot_undo():
    x, cropped = conform_frames(torch.rand(5, 40, 40, 3), 4, 16)
    with pytest.raises(InputError, match="center-cropped"):
        unconform_frames(x, cropped)
    x, padded = conform_frames(torch.rand(5, 40, 40, 3), 4, 16, fit="pad")
    with pytest.raises(InputError, match="48x48"):
        unconform_frames(x[:, :32], padded)


def test_sizes_read_width_by_height():
    assert format_size(48, 96) == "96x48"
    _, report = conform_frames(torch.rand(18, H, W, 3), 4, 16, resize_to=(64, 64), fit="pad")
    assert report.message() == (
        "17 frames kept of 18 (4k+1); edited at 64x64 (96x48 scaled to 64x32, aspect kept, "
        "edge-padded); output scaled back to 96x48"
    )


@pytest.fixture(scope="module")
def small_editor():
    return load_editor(bundled.path(bundled.EDITOR), options=EditorOptions(dtype="fp32", device="cpu"))


def test_bundled_editor_returns_a_non_square_source_at_its_size(small_editor):
    """96x48 through the 64x64 bundled editor (fp32 CPU, 2 steps): out at 96x48 with 17 frames, equal to editing
    the working frame built by hand (PIL scale to 64x32, numpy edge pad) and un-conforming that by hand; the
    summary says 96x48; the VAE round trip comes back at the source's size and near it."""
    clip = torch.from_numpy(np.asarray(_synth_clip())).float() / 255
    src = clip[:, 24:72].contiguous()  # a 96x96 world cut to 96x48
    assert src.shape == (T, H, W, 3)
    cond = small_editor.encode_text("Invert the colours.")
    settings = EditSettings(steps=2, cfg=1.0, seed=0)
    result = edit(small_editor, src, cond, settings=settings, fps=8.0)
    assert result.frames.shape == (T, H, W, 3)
    assert "17 frames 96x48 @ 8 fps" in result.summary() and "output scaled back to 96x48" in result.summary()
    working = torch.from_numpy(
        np.pad(pil_resize(src, (32, 64)).numpy(), ((0, 0), (16, 16), (0, 0), (0, 0)), mode="edge")
    )
    by_hand = pil_resize(edit(small_editor, working, cond, settings=settings).frames[:, 16:48], (H, W))
    assert (result.frames - by_hand).abs().max() < 1e-3
    recon = reconstruct(small_editor, src)
    assert recon.shape == src.shape and psnr(recon, src) > 22


def _synth_clip() -> np.ndarray:
    from viva_core.synth import make_clip

    return make_clip(np.random.default_rng(1000), size=96, category="basic").source
