"""recipes/small/codec_ceiling.py: its codec against a direct block mean, and the ceilings it reports."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "recipes" / "small" / "codec_ceiling.py"
spec = importlib.util.spec_from_file_location("codec_ceiling", SCRIPT)
codec = importlib.util.module_from_spec(spec)
spec.loader.exec_module(codec)


def test_nearest_codec_is_the_block_mean_repeated():
    frames = torch.rand(3, 8, 12, 3, generator=torch.Generator().manual_seed(0))
    out = codec.box_codec(frames, 4, "nearest").numpy()
    x = frames.numpy()
    means = x.reshape(3, 2, 4, 3, 4, 3).mean(axis=(2, 4))  # [T, H/4, W/4, C]
    expected = np.repeat(np.repeat(means, 4, axis=1), 4, axis=2)
    assert np.allclose(out, expected, atol=1e-6)
    assert torch.equal(codec.box_codec(frames, 1, "bilinear"), frames)


def test_smooth_codec_stays_in_the_input_range_and_blurs_an_edge():
    frames = torch.full((1, 16, 16, 3), 0.1)
    frames[:, 4:12, 4:12] = 0.9  # a square with edges off the 4-pixel grid
    out = codec.box_codec(frames, 4, "bicubic")
    assert float(out.min()) >= 0.1 - 1e-6 and float(out.max()) <= 0.9 + 1e-6
    assert 0.2 < float(out[0, 4, 8, 0]) < 0.8  # the edge pixel is now a mix of the two colours


@pytest.mark.parametrize("bad", ["0:bilinear", "2:lanczos", "x:nearest"])
def test_bad_codec_names_the_item(bad):
    with pytest.raises(SystemExit, match=bad.split(",")[0]):
        codec.parse_codecs(bad)


def test_lossless_codec_scores_the_ground_truth_and_a_blur_scores_less(tmp_path, monkeypatch):
    from viva_core.synth import generate

    manifest = generate(tmp_path / "d", n=4, seed=11, format="npz", splits=(1, 0, 0), frames=5)["train"]
    report = tmp_path / "codec"
    monkeypatch.setattr(sys, "argv", ["x", str(manifest), "--report", str(report), "--codecs", "1:nearest,8:bicubic"])
    codec.main()
    exact = json.loads((report / "1_nearest" / "report.json").read_text())["overall"]
    blurred = json.loads((report / "8_bicubic" / "report.json").read_text())["overall"]
    assert exact["ea"] == pytest.approx(1.0) and exact["pc"] == pytest.approx(1.0)
    assert blurred["pc"] < 0.9 and blurred["ea"] < exact["ea"]


def test_a_bare_vae_scores_as_the_editors_ceiling_through_the_same_vae(tmp_path, monkeypatch):
    """`--vae label=FOLDER` (no editor: a VAE of another latent shape has none yet) gives the report `viva eval
    --ceiling` gives through an editor holding that VAE, on the same clips."""
    from viva_core import bundled
    from viva_core.cli import main
    from viva_core.synth import generate

    manifest = generate(tmp_path / "d", n=2, seed=11, format="npz", splits=(1, 0, 0), frames=5)["train"]
    editor = bundled.path(bundled.EDITOR)
    report = tmp_path / "codec"
    argv = ["x", str(manifest), "--report", str(report), "--vae", f"shipped={editor}/vae", "--device", "cpu"]
    monkeypatch.setattr(sys, "argv", argv)
    codec.main()
    assert [p.name for p in report.iterdir()] == ["vae_shipped"]  # no box codecs unless asked for
    args = ["eval", str(manifest), "--editor", editor, "--ceiling", "--no-outputs", "--device", "cpu"]
    args += ["--dtype", "fp32"]
    assert main([*args, "--report", str(tmp_path / "ceiling")]) == 0
    bare = json.loads((report / "vae_shipped" / "report.json").read_text())["scores"]
    via_editor = json.loads((tmp_path / "ceiling" / "report.json").read_text())["scores"]
    for a, b in zip(bare, via_editor, strict=True):
        for key in ("ea", "pc", "gn", "gr", "psnr"):
            assert a[key] == pytest.approx(b[key], abs=1e-3), key
    monkeypatch.setattr(sys, "argv", ["x", str(manifest), "--report", str(report), "--vae", str(tmp_path)])
    with pytest.raises(SystemExit, match="LABEL=FOLDER"):
        codec.main()
