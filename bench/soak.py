"""Soak: many edits in one process on the bundled models; resident memory must not grow (issue 11, item 5).

    python bench/soak.py [EDITS] [--judge]

Loads the bundled editor once (fp32, CPU), then edits the bundled example clip EDITS times
(default 50, seeds 0..EDITS-1, the bundled editor's steps, CFG 5; every 5th edit also judged with --judge), reading
the process's
resident set size (RSS, /proc/self/status VmRSS) after each. Prints the RSS after edit 5 and at the end, and the
growth between them; exits 1 if it exceeds 5%. tests/test_soak.py runs it (VIVA_SOAK=1).
"""

from __future__ import annotations

import gc
import sys
import time


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def main(argv: list[str]) -> int:
    from viva_core import bundled
    from viva_core.conditioning import build_conditioning
    from viva_core.editor import EditorOptions, load_editor
    from viva_core.judge import Judge
    from viva_core.pipeline import edit
    from viva_core.settings import BUNDLED_STEPS, EditSettings
    from viva_core.video import read_video
    from viva_core.vlm import load_vlm

    edits = next((int(a) for a in argv if a.isdigit()), 50)
    editor = load_editor(str(bundled.EDITOR), options=EditorOptions(dtype="fp32", device="cpu"))
    judge = Judge(load_vlm(str(bundled.JUDGE), dtype="fp32", device="cpu")) if "--judge" in argv else None
    video = read_video(str(bundled.EXAMPLE))
    after_5 = None
    t0 = time.perf_counter()
    for i in range(edits):
        cond, _ = build_conditioning(editor, "Invert the colours.", video.frames[0], mode="text")
        result = edit(editor, video.frames, cond, settings=EditSettings(steps=BUNDLED_STEPS, seed=i))
        if judge is not None and i % 5 == 4:
            judge.score(video.frames, result.frames, "Invert the colours.")
        del result, cond
        gc.collect()
        rss = rss_mib()
        if i == 4:
            after_5 = rss
        print(f"edit {i + 1}/{edits}: RSS {rss:.1f} MiB", flush=True)
    growth = (rss - after_5) / after_5 if after_5 else 0.0
    print(
        f"{edits} edits in {time.perf_counter() - t0:.1f} s; RSS after 5: {after_5:.1f} MiB, after {edits}: "
        f"{rss:.1f} MiB, growth {100 * growth:+.2f}%"
    )
    return 0 if growth <= 0.05 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
