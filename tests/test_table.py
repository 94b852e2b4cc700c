"""recipes/small/table.py --paired's preservation-drift table, on hand-made reports, numbers worked out here."""

import json
import os
import subprocess
import sys
from pathlib import Path

TABLE = Path(__file__).resolve().parent.parent / "recipes" / "small" / "table.py"


def _report(folder: Path, scores: list[tuple[float, float]], spill: list | None = None) -> str:
    folder.mkdir()
    rows = [
        {
            "ea": ea,
            "pc": pc,
            "gn": 0.5,
            "gr": 0.5,
            "overall": 0.5,
            "psnr": 20.0,
            "operation": "move",
            "category": "basic",
        }
        for ea, pc in scores
    ]
    for row, value in zip(rows, spill or []):
        row["details"] = {"pc": {"spill": value}}
    (folder / "report.json").write_text(json.dumps({"manifest": "m.jsonl", "scores": rows}))
    return str(folder)


def test_paired_splits_the_pc_change_by_whether_ea_moved(tmp_path):
    base = [(0.2, 0.6), (0.3, 0.6), (0.4, 0.6), (0.5, 0.6), (None, 0.6)]
    # clip 0, 1: EA still, PC -0.04 and -0.02; clip 2: EA +0.1, PC -0.1; clip 3: EA +0.03 (neither), PC +0.01;
    # clip 4: no EA verifier (left out)
    other = [(0.2, 0.56), (0.305, 0.58), (0.5, 0.5), (0.53, 0.61), (None, 0.1)]
    out = subprocess.run(
        [
            sys.executable,
            str(TABLE),
            "--paired",
            f"base={_report(tmp_path / 'a', base)}",
            f"new={_report(tmp_path / 'b', other, spill=[0.5, 1.0, None, 2.0, 0.0])}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    row = next(line for line in out.splitlines() if line.startswith("| new | 4 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # PC down on 3 of 4; EA still: (-0.04 - 0.02) / 2; EA up: -0.1; Pearson r of dEA (0, .005, .1, .03) and
    # dPC (-.04, -.02, -.1, .01), written out: means .03375 and -.0375
    dx = [0 - 0.03375, 0.005 - 0.03375, 0.1 - 0.03375, 0.03 - 0.03375]
    dy = [-0.04 + 0.0375, -0.02 + 0.0375, -0.1 + 0.0375, 0.01 + 0.0375]
    r = sum(a * b for a, b in zip(dx, dy)) / (sum(a * a for a in dx) * sum(b * b for b in dy)) ** 0.5
    # spill: the base's reports have none ('-'); the new one's mean over the clips that have one, (0.5+1+2+0)/4
    assert cells[2:] == ["75%", "-0.030 (2)", "-0.100 (1)", f"{r:+.2f}", "- -> 0.88"]


def test_a_folder_without_a_report_names_itself_and_the_usage(tmp_path):
    """A mistyped report folder ends with what was expected, not a traceback; --help prints the usage."""
    run = subprocess.run(
        [sys.executable, str(TABLE), "--paired", f"base={tmp_path}"], capture_output=True, text=True, check=False
    )
    assert run.returncode == 1 and f"'base={tmp_path}'" in run.stderr and "report.json" in run.stderr
    assert "Traceback" not in run.stderr
    shown = subprocess.run([sys.executable, str(TABLE), "--help"], capture_output=True, text=True, check=True)
    assert "--paired" in shown.stdout


def test_paired_pools_several_sets_clip_by_clip(tmp_path):
    """Pooled reports ("label=DIR1,DIR2"): the paired mean is over all 5 clips, not the mean of the two sets'
    means; a label whose sets differ in count from the base's is refused."""
    base1, new1 = [(0.2, 0.6), (0.4, 0.6)], [(0.3, 0.6), (0.4, 0.6)]  # dEA +0.1, 0
    base2, new2 = [(0.1, 0.5)] * 3, [(0.1, 0.5), (0.1, 0.5), (0.4, 0.5)]  # dEA 0, 0, +0.3
    args = [
        f"base={_report(tmp_path / 'b1', base1)},{_report(tmp_path / 'b2', base2)}",
        f"new={_report(tmp_path / 'n1', new1)},{_report(tmp_path / 'n2', new2)}",
    ]
    out = subprocess.run([sys.executable, str(TABLE), "--paired", *args], capture_output=True, text=True, check=True)
    row = next(line for line in out.stdout.splitlines() if line.startswith("| new | 5 |"))
    assert row.split("|")[3].strip().startswith(f"{(0.1 + 0.3) / 5:+.3f} (")  # +0.080; the sets' means give +0.075
    short = subprocess.run(
        [sys.executable, str(TABLE), "--paired", args[0], f"new={tmp_path / 'n1'}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert short.returncode != 0 and "not the same clips" in short.stderr


def test_a_closed_pipe_ends_the_tables_quietly(tmp_path):
    """`table.py --paired ... | head -1`: the reader goes away mid-table; no BrokenPipeError traceback."""
    reports = [f"{n}={_report(tmp_path / n, [(0.2, 0.6), (0.3, 0.5)])}" for n in ("a", "b")]
    shell = f"{sys.executable} {TABLE} --paired {' '.join(reports)} | head -1"
    done = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, check=True)
    assert done.stdout.startswith("| vs a |")
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr


def test_select_takes_the_best_ea_whose_pc_holds(tmp_path):
    """--select: the highest mean EA among the candidates whose mean PC is at most 0.01 under the base's; a
    candidate with more EA but PC down 0.02 is passed over; None EAs are left out of the means."""
    base = [(0.2, 0.60), (0.4, 0.60), (None, 0.60)]  # EA 0.3, PC 0.6
    candidates = {
        "step-25": [(0.3, 0.60), (0.5, 0.59), (None, 0.60)],  # EA 0.4, PC 0.5967: eligible
        "step-50": [(0.6, 0.58), (0.6, 0.58), (None, 0.58)],  # EA 0.6, PC 0.58: PC down 0.02
        "step-75": [(0.4, 0.61), (0.5, 0.59), (None, 0.60)],  # EA 0.45, PC 0.60: eligible, best
    }
    args = [f"base={_report(tmp_path / 'base', base)}"]
    args += [f"{name}={_report(tmp_path / name, scores)}" for name, scores in candidates.items()]
    out = subprocess.run([sys.executable, str(TABLE), "--select", *args], capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    assert lines[-1] == "selected: step-75"
    assert "| step-50 | 0.600 | 0.580 | -0.020 | no |" in lines
    assert "| step-25 | 0.400 | 0.597 | -0.003 | yes |" in lines
    worse = [f"base={_report(tmp_path / 'b2', base)}", f"step-50={tmp_path / 'step-50'}"]
    out = subprocess.run([sys.executable, str(TABLE), "--select", *worse], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines()[-1] == "selected: none"


def test_select_names_a_report_without_the_scores_it_compares(tmp_path):
    base = f"base={_report(tmp_path / 'base', [(0.3, 0.6), (0.4, 0.6)])}"
    other = f"step-25={_report(tmp_path / 'step', [(None, 0.6), (None, 0.6)])}"  # no EA verifier on any clip
    done = subprocess.run([sys.executable, str(TABLE), "--select", base, other], capture_output=True, text=True)
    assert done.returncode != 0 and "m.jsonl: no clip of this report has a EA score" in done.stderr


def test_by_heldout_splits_ea_by_the_triples_each_clip_carries(tmp_path):
    """A hybrid carrying two held-out triples counts under both; a clip without a verifier (EA None) is left out."""
    held = [["move", "attribute", "top"], ["remove", "referring", "size"]]
    (tmp_path / "synth_config.json").write_text(json.dumps({"heldout": held}))
    records = [  # move top | move top + remove size | remove size (no EA) | recolour, carrying neither
        {"operation": "move", "attribute": "top", "referring": "colour"},
        {"operation": "move+remove", "attribute": "top+red", "referring": "speed+size"},
        {"operation": "remove", "attribute": "red", "referring": "size"},
        {"operation": "recolour", "attribute": "top", "referring": "size"},
    ]
    manifest = tmp_path / "heldout.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records))
    reports = []
    for name, eas in (("a", [0.1, 0.5, None, 0.9]), ("b", [0.2, 0.2, 0.7, 0.0])):
        folder = tmp_path / name
        folder.mkdir()
        scores = [{"index": i, "ea": ea} for i, ea in enumerate(eas)]
        (folder / "report.json").write_text(json.dumps({"manifest": str(manifest), "scores": scores}))
        reports.append(f"{name}={folder}")
    root = str(TABLE.parent.parent.parent)
    out = subprocess.run(
        [sys.executable, str(TABLE), "--by-heldout", str(manifest), *reports],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": root},
    ).stdout
    rows = [line for line in out.splitlines() if line.startswith("| move") or line.startswith("| remove")]
    assert rows == ["| move attribute top | 2 | 0.30 | 0.20 |", "| remove referring size | 1 | 0.50 | 0.45 |"]
