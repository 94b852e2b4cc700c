"""recipes/small/compare_grid.py: which clips it shows, and that each cell is that variant's frame of that clip."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "recipes" / "small" / "compare_grid.py"
spec = importlib.util.spec_from_file_location("compare_grid", SCRIPT)
grid = importlib.util.module_from_spec(spec)
spec.loader.exec_module(grid)


def test_rows_are_the_largest_gains_then_the_largest_losses():
    first = {i: {"ea": 0.5} for i in range(6)}
    last = {0: {"ea": 0.6}, 1: {"ea": 0.9}, 2: {"ea": 0.1}, 3: {"ea": 0.5}, 4: {"ea": 0.3}, 5: {"ea": None}}
    assert grid.pick_rows(first, last, 4) == [1, 0, 2, 4]  # gains +0.4, +0.1; losses -0.4, -0.2; 5 has no EA
    assert grid.pick_rows(first, last, 3) == [1, 2, 4]


def test_each_cell_is_the_variants_frame_of_the_clip(tmp_path):
    from PIL import Image

    from viva_core.data import load_manifest
    from viva_core.synth import generate
    from viva_core.video import write_video

    manifest = generate(tmp_path / "d", n=3, seed=1, format="npz", splits=(1, 0, 0), frames=5)["train"]
    records = load_manifest(manifest)
    variants = []
    for name, shade in (("base", 0.2), ("new", 0.8)):
        outputs, report = tmp_path / f"out_{name}", tmp_path / f"rep_{name}"
        outputs.mkdir()
        report.mkdir()
        scores = []
        for k, r in enumerate(records):  # a flat frame per clip and variant, so each cell's colour says whose it is
            frames = torch.full((5, 64, 64, 3), shade)
            frames[..., 0] = 0.1 * (k + 1)
            write_video(outputs / f"{r.index}.mp4", frames, 8.0)
            scores.append({"index": r.index, "ea": shade * (k + 1) / 3, "pc": 0.5})
        (report / "report.json").write_text(json.dumps({"scores": scores}))
        variants.append(f"{name}={report}={outputs}")
    out = tmp_path / "g.png"
    grid.main([str(manifest), str(out), *variants, "--rows", "2", "--frame", "2", "--scale", "2"])
    img = np.asarray(Image.open(out).convert("RGB")).astype(float) / 255
    assert img.shape == (30 + 2 * (128 + 30), 4 * 128, 3)
    # row 0: the largest gain (clip 2: +0.6 * 3 / 3), row 1: the largest loss (none: the least gain, clip 0)
    for row, k in enumerate((2, 0)):
        y = 30 + row * (128 + 30) + 64
        for col, shade in ((2, 0.2), (3, 0.8)):
            pixel = img[y, col * 128 + 64]
            assert abs(pixel[1] - shade) < 0.06 and abs(pixel[0] - 0.1 * (k + 1)) < 0.06
