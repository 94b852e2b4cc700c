"""The pack inside a real ComfyUI: nodes listed, the edit and best-of-N prompts run, a bad LoRA fails cleanly.

Needs a ComfyUI checkout outside the repo (DESIGN §4):

    COMFYUI_DIR=/path/to/ComfyUI [COMFY_PY=/path/to/its/venv/bin/python] [COMFY_HARNESS=.../harness.sh] pytest tests/test_comfyui.py

COMFY_PY defaults to <COMFYUI_DIR>/../venv/bin/python when that exists, else this Python. The harness
(symlinks the pack into custom_nodes, starts ComfyUI with only this pack, posts a prompt, stops it) defaults
to ../shared/comfy/harness.sh beside the repo. Each prompt runs in its own ComfyUI process (about 20 s of
start-up each on 2 CPU cores); the models are the tiny ones of tests/make_comfy_models.py.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PROMPTS = Path(__file__).resolve().parent / "comfy_prompts"
PACK_NAME = "comfyui-viva"  # folder name under custom_nodes ([project].name, so the JS is served once)
NODE_IDS = ("VIVA_LoadEditor", "VIVA_LoadVLM", "VIVA_LoraLoader", "VIVA_LoadVideo", "VIVA_EncodeInstruction",
            "VIVA_EditVideo", "VIVA_BestOfN", "VIVA_Judge")
EXIT_OK, EXIT_EXEC = 0, 3

COMFYUI_DIR = os.environ.get("COMFYUI_DIR", "")
pytestmark = pytest.mark.skipif(not COMFYUI_DIR, reason="COMFYUI_DIR is not set: point it at a ComfyUI checkout "
                                "(and COMFY_PY at the python of its venv) to run the ComfyUI integration tests")


def _comfy_py() -> str:
    if os.environ.get("COMFY_PY"):
        return os.environ["COMFY_PY"]
    venv_py = Path(COMFYUI_DIR).resolve().parent / "venv" / "bin" / "python"
    return str(venv_py) if venv_py.exists() else sys.executable


def _harness() -> Path:
    return Path(os.environ.get("COMFY_HARNESS", REPO.parent / "shared" / "comfy" / "harness.sh"))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    if not (Path(COMFYUI_DIR) / "main.py").is_file():
        pytest.skip(f"COMFYUI_DIR={COMFYUI_DIR!r} has no main.py")
    if not _harness().is_file():
        pytest.skip(f"harness not found at {_harness()} (set COMFY_HARNESS)")
    from make_comfy_models import build_all

    return build_all(tmp_path_factory.mktemp("comfy_models"))


def run_harness(models: dict, tmp_path: Path, *prompts: str, timeout: int = 240) -> tuple[int, str, dict]:
    """Runs the harness on the given prompt files; returns (exit code, stdout+stderr, the --report JSON)."""
    report = tmp_path / "report.json"
    cmd = [str(_harness()), str(REPO), "--name", PACK_NAME, "--input-dir", models["input_dir"],
           "--extra-arg=--extra-model-paths-config", f"--extra-arg={models['yaml']}",
           "--run-dir", str(tmp_path / "run"), "--report", str(report), "-t", "150"]
    for name in prompts:
        cmd += ["-w", str(PROMPTS / name)]
    env = dict(os.environ, COMFYUI_DIR=COMFYUI_DIR, COMFY_PY=_comfy_py())
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                          timeout=timeout)
    data = json.loads(report.read_text()) if report.is_file() else {}
    return proc.returncode, proc.stdout, data


def output_text(stdout: str, node_id: str) -> str:
    """The text a node showed (`output node N text: ...`, possibly several lines; the harness cuts it at 200
    characters)."""
    m = re.search(rf"^    output node {node_id} text: (.*?)(?=^    output node |^\[harness\]|\Z)", stdout,
                  re.M | re.S)
    assert m, f"no text output of node {node_id} in:\n{stdout[-3000:]}"
    return m.group(1)


def check_mp4(path: str, frames: int, fps: float) -> None:
    import av

    with av.open(path) as c:
        assert c.streams.video, f"{path}: no video stream"
        v = c.streams.video[0]
        assert float(v.average_rate) == pytest.approx(fps), f"{path}: fps {v.average_rate}"
        assert sum(1 for _ in c.decode(video=0)) == frames
    with av.open(path) as c:
        assert len(c.streams.audio) == 1, f"{path}: expected one audio stream"


def saved_mp4s(report: dict) -> list[str]:
    files = report.get("execution", {}).get("files", [])
    return [f["path"] for f in files if f["path"].endswith(".mp4") and f["exists"]]


def test_edit_prompt_runs(models, tmp_path):
    rc, out, report = run_harness(models, tmp_path, "edit.json")
    assert rc == EXIT_OK, out[-4000:]
    assert set(NODE_IDS) <= set(report["nodes"]), sorted(report["nodes"])
    assert report["js_files"], "web/js/viva.js is not served"
    assert report["execution"]["status"] == "success"
    mp4s = saved_mp4s(report)
    assert len(mp4s) == 1, report["execution"]
    check_mp4(mp4s[0], frames=9, fps=8)
    assert "20/20 modules matched" in output_text(out, "3")  # LoRA key report shown on the LoRA loader
    assert "9 frames 32x32 @ 8 fps" in output_text(out, "5")  # Edit Video's report


def test_best_of_n_and_judge_prompt_runs(models, tmp_path):
    rc, out, report = run_harness(models, tmp_path, "edit_best_of_n.json")
    assert rc == EXIT_OK, out[-4000:]
    mp4s = saved_mp4s(report)
    assert len(mp4s) == 1, report["execution"]
    check_mp4(mp4s[0], frames=9, fps=8)
    prompt = json.loads((PROMPTS / "edit_best_of_n.json").read_text())
    judge_preview = next(k for k, n in prompt.items()
                         if n["class_type"] == "PreviewAny" and prompt[n["inputs"]["source"][0]]["class_type"] == "VIVA_Judge")
    judge_json = output_text(out, judge_preview)
    scores = {k: float(v) for k, v in re.findall(r'"(EA|PC|GN|GR)": ([-+0-9.eE]+)', judge_json)}
    assert set(scores) == {"EA", "PC", "GN", "GR"}, judge_json
    assert all(0.0 <= s <= 1.0 for s in scores.values()), scores
    table = output_text(out, "8")
    assert re.search(r"seed\s+EA\s+PC\s+GN\s+GR\s+overall", table) and "*" in table, table


def test_lora_matching_no_key_is_an_execution_error_and_comfyui_keeps_running(models, tmp_path):
    bad = Path(models["bad_lora"]).name
    rc, out, report = run_harness(models, tmp_path, "bad_lora.json", "edit.json")
    assert rc == EXIT_EXEC, out[-4000:]
    errors = [line for line in out.splitlines() if "EXECUTION ERROR in node" in line]
    assert len(errors) == 1, out[-4000:]
    assert "(VIVA_LoraLoader)" in errors[0] and "LoraError" in errors[0] and bad in errors[0], errors[0]
    assert "server died" not in out
    # the next prompt in the same server still runs
    assert report["execution"]["status"] == "success", report.get("execution")
    assert len(saved_mp4s(report)) == 1
