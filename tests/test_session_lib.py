"""recipes/small/session_lib.sh's pack_on_stop: a GPU session stopped by its call's timeout still packs what exists
(docs/small_models.md, section 81), under GNU timeout as the device command runs it."""

from __future__ import annotations

import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parent.parent / "recipes" / "small" / "session_lib.sh"

pytestmark = pytest.mark.skipif(
    shutil.which("bash") is None or shutil.which("timeout") is None or shutil.which("tar") is None,
    reason="needs bash, GNU timeout and tar",
)


def _session(tmp_path: Path, body: str, seconds: int = 3) -> subprocess.CompletedProcess:
    """Run a session script's start (source the library, set the trap) then `body`, under `timeout` as a device call
    does; OUT is where a device call's files come back."""
    out = tmp_path / "out"
    out.mkdir()
    script = f"""set -uo pipefail
PHASES="pack"
source {LIB}
mkdir -p $R/vae_z32/vae && echo weights > $R/vae_z32/vae/model.bin && echo '{{}}' > $R/vae_z32/metrics.jsonl
echo "trained" > runs/vae.log
has pack && pack_on_stop pack_results vae_z32/vae
{body}
"""
    return subprocess.run(
        ["timeout", str(seconds), "bash", "-c", script],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "OUT": str(out)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_session_stopped_mid_phase_packs_what_exists(tmp_path):
    r = _session(tmp_path, "sleep 30  # a phase's process, killed with the group\necho never")
    assert r.returncode == 124, r.stderr
    assert "== stopped: packing what exists" in r.stdout and "never" not in r.stdout
    out = tmp_path / "out"
    with tarfile.open(out / "results.tar") as t:
        assert {"runs/vae.log", "runs/small/vae_z32/metrics.jsonl"} <= set(t.getnames())
    with tarfile.open(out / "models.tar.00") as t:
        assert "vae_z32/vae/model.bin" in t.getnames()


def test_a_session_that_ends_in_time_packs_only_when_asked(tmp_path):
    r = _session(tmp_path, "echo finished")
    assert r.returncode == 0 and "finished" in r.stdout and "stopped" not in r.stdout
    assert list((tmp_path / "out").iterdir()) == []  # the trap did not fire; this script never called pack itself
