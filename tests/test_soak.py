"""Soak (opt-in, ~3 min on 2 cores): 50 edits + 10 judgements in one process on the bundled models, resident
memory after the last within 5% of after the fifth (bench/soak.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(not os.environ.get("VIVA_SOAK"), reason="soak test (minutes): set VIVA_SOAK=1")
def test_fifty_edits_in_one_process_do_not_grow_memory():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "50", "--judge"],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    last = proc.stdout.strip().splitlines()[-1]
    assert proc.returncode == 0 and "50 edits in" in last, (last, proc.stderr[-2000:])
