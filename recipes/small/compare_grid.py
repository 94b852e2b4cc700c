"""A picture of what a change does to the edits: source, target and each variant's edit of the same clips, side by side.

    python recipes/small/compare_grid.py MANIFEST OUT.png "label=REPORT_DIR=OUTPUTS_DIR" ... [--rows 6] [--frame 8]

Each variant is a `viva eval --report REPORT_DIR --outputs OUTPUTS_DIR` run on MANIFEST (edits named <index>.mp4).
Rows: the clips where the last variant's EA gained most over the first's, then those where it lost most (half each),
so a grid shows the failures beside the wins; each cell is frame `--frame`, labelled with the clip's EA and PC.
"""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path

import numpy as np


def read_variant(spec: str) -> tuple[str, dict[int, dict], Path]:
    label, report, outputs = spec.split("=", 2)
    scores = json.loads((Path(report) / "report.json").read_text())["scores"]
    return label, {int(s["index"]): s for s in scores}, Path(outputs)


def pick_rows(first: dict[int, dict], last: dict[int, dict], n: int) -> list[int]:
    """The n/2 clips with the largest EA gain of `last` over `first`, then the n - n/2 with the largest loss."""
    both = [i for i in first if i in last and first[i]["ea"] is not None and last[i]["ea"] is not None]
    by_gain = sorted(both, key=lambda i: (last[i]["ea"] - first[i]["ea"], i), reverse=True)
    wins = by_gain[: n // 2]
    losses = [i for i in reversed(by_gain) if i not in wins][: n - len(wins)]
    return wins + losses


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("manifest")
    ap.add_argument("out")
    ap.add_argument("variants", nargs="+", help="label=REPORT_DIR=OUTPUTS_DIR, the first one the baseline")
    ap.add_argument("--rows", type=int, default=6)
    ap.add_argument("--frame", type=int, default=8)
    ap.add_argument("--scale", type=int, default=3)
    a = ap.parse_args(argv)
    from PIL import Image, ImageDraw

    from viva_core.data import load_manifest, read_frames
    from viva_core.video import read_video

    variants = [read_variant(v) for v in a.variants]
    records = {r.index: r for r in load_manifest(a.manifest)}
    rows = pick_rows(variants[0][1], variants[-1][1], a.rows)
    heads = ["source", "target"] + [label for label, _, _ in variants]
    h = w = None
    cells: list[list[tuple[np.ndarray, str]]] = []
    for i in rows:
        r = records[i]
        src = read_frames(r.source_video)[0].numpy()
        tgt = read_frames(r.target_video, None, "target_video")[0].numpy()
        t = min(a.frame, len(src) - 1)
        row = [(src[t], textwrap.shorten(r.instruction, 60)), (tgt[t], "")]
        for _, scores, outputs in variants:
            out = read_video(outputs / f"{i}.mp4", with_audio=False).frames.numpy()
            s = scores[i]
            row.append((out[t], f"EA {s['ea']:.2f} PC {s['pc']:.2f}"))
        cells.append(row)
        h, w = src.shape[1:3]
    cw, ch, lh = w * a.scale, h * a.scale, 30
    grid = Image.new("RGB", (cw * len(heads), lh + len(rows) * (ch + lh)), "white")
    draw = ImageDraw.Draw(grid)
    for c, head in enumerate(heads):
        draw.text((c * cw + 3, 8), head, fill="black")
    for rix, row in enumerate(cells):
        y = lh + rix * (ch + lh)
        for c, (frame, label) in enumerate(row):
            img = Image.fromarray((np.clip(frame, 0, 1) * 255).round().astype(np.uint8))
            grid.paste(img.resize((cw, ch), Image.NEAREST), (c * cw, y))
            lines = textwrap.wrap(label, width=max(cw // 6, 8))[:2]
            draw.multiline_text((c * cw + 3, y + ch + 1), "\n".join(lines), fill="black", spacing=1)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    grid.save(a.out)
    print(f"wrote {a.out}: clips {rows}")


if __name__ == "__main__":
    main()
