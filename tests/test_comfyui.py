"""The pack inside a real ComfyUI: nodes listed, the edit and best-of-N prompts run, a bad LoRA fails cleanly,
a LoRA trained by a prompt loads in the next one, an interrupted training run resumes from its checkpoint, and
our models live under ComfyUI's model management (registry, POST /free, LoRA patches undone, latent previews,
POST /interrupt within a step, Train LoRA on the graph's loaded editor).

Needs a ComfyUI checkout outside the repo (README.md, "Set-up"):

    COMFYUI_DIR=/path/to/ComfyUI [COMFY_PY=/path/to/its/venv/bin/python] [COMFY_HARNESS=.../harness.sh] \\
        pytest tests/test_comfyui.py

COMFY_PY defaults to <COMFYUI_DIR>/../venv/bin/python when that exists, else this Python. The harness
(symlinks the pack into custom_nodes, starts ComfyUI with only this pack, posts a prompt, stops it) is
COMFY_HARNESS, else shared/comfy/harness.sh in the repo's parent folder. Whatever is missing skips the tests
with a reason that names the variable to set (shown in the summary: pyproject's addopts has -ra). Each prompt runs
in its own ComfyUI process (about 20 s of start-up each on 2 CPU cores); the models are the tiny ones of
tests/make_comfy_models.py.
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
NODE_IDS = (
    "VIVA_LoadEditor",
    "VIVA_LoadVLM",
    "VIVA_LoraLoader",
    "VIVA_StepCache",
    "VIVA_LoadVideo",
    "VIVA_EncodeInstruction",
    "VIVA_EditVideo",
    "VIVA_BestOfN",
    "VIVA_Judge",
    "VIVA_DatasetFromFolder",
    "VIVA_TrainLoRA",
)
EXIT_OK, EXIT_EXEC, EXIT_TIMEOUT = 0, 3, 4

COMFYUI_DIR = os.environ.get("COMFYUI_DIR", "")
pytestmark = pytest.mark.skipif(
    not COMFYUI_DIR,
    reason="COMFYUI_DIR is not set: point it at a ComfyUI checkout "
    "(and COMFY_PY at the python of its venv) to run the ComfyUI integration tests",
)


def _comfy_py() -> str:
    if os.environ.get("COMFY_PY"):
        return os.environ["COMFY_PY"]
    venv_py = Path(COMFYUI_DIR).resolve().parent / "venv" / "bin" / "python"
    return str(venv_py) if venv_py.exists() else sys.executable


def _harness() -> Path:
    """COMFY_HARNESS, else shared/comfy/harness.sh in the repo's parent (the layout of a workspace with a shared/
    folder beside the checkout; a clone inside ComfyUI/custom_nodes has none, so set COMFY_HARNESS there)."""
    if os.environ.get("COMFY_HARNESS"):
        return Path(os.environ["COMFY_HARNESS"])
    return REPO.parent / "shared" / "comfy" / "harness.sh"


@pytest.fixture(scope="module")
def comfy() -> Path:
    """The ComfyUI checkout and its python, or a skip whose reason names the variable to set."""
    root = Path(COMFYUI_DIR)
    if not (root / "main.py").is_file():
        pytest.skip(f"COMFYUI_DIR={COMFYUI_DIR!r} has no main.py: set COMFYUI_DIR to a ComfyUI checkout")
    py = _comfy_py()
    if not os.access(py, os.X_OK):
        pytest.skip(f"COMFY_PY={py!r} is not an executable: set COMFY_PY to the python of ComfyUI's venv")
    return root


@pytest.fixture(scope="module")
def models(comfy, tmp_path_factory):
    harness = _harness()
    if not harness.is_file():
        how = (
            "COMFY_HARNESS points to no file"
            if os.environ.get("COMFY_HARNESS")
            else "COMFY_HARNESS is not set and the repo's parent has no shared/comfy/harness.sh"
        )
        pytest.skip(f"harness not found at {harness} ({how}): set COMFY_HARNESS to the path of harness.sh")
    from make_comfy_models import build_all

    return build_all(tmp_path_factory.mktemp("comfy_models"))


def run_harness(
    models: dict, tmp_path: Path, *prompts: str | Path, timeout: int = 240, prompt_timeout: int = 150
) -> tuple[int, str, dict]:
    """Runs the harness on the given prompt files (names in tests/comfy_prompts, or paths); returns (exit code,
    stdout+stderr, the --report JSON). Runs in one test share tmp_path/run, so the output folder carries over.
    A prompt still running after `prompt_timeout` seconds is interrupted (POST /interrupt)."""
    report = tmp_path / "report.json"
    cmd, env = harness_command(models, tmp_path, report, prompts, prompt_timeout)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, timeout=timeout)
    data = json.loads(report.read_text()) if report.is_file() else {}
    return proc.returncode, proc.stdout, data


def harness_command(models: dict, tmp_path: Path, report: Path, prompts, prompt_timeout: int) -> tuple[list, dict]:
    cmd = [
        str(_harness()),
        str(REPO),
        "--name",
        PACK_NAME,
        "--input-dir",
        models["input_dir"],
        "--extra-arg=--extra-model-paths-config",
        f"--extra-arg={models['yaml']}",
        "--run-dir",
        str(tmp_path / "run"),
        "--report",
        str(report),
        "-t",
        str(prompt_timeout),
    ]
    for name in prompts:
        cmd += ["-w", str(PROMPTS / name)]
    return cmd, dict(os.environ, COMFYUI_DIR=COMFYUI_DIR, COMFY_PY=_comfy_py())


def output_text(stdout: str, node_id: str) -> str:
    """The text a node showed (`output node N text: ...`, possibly several lines; the harness cuts it at 200
    characters)."""
    m = re.search(rf"^    output node {node_id} text: (.*?)(?=^    output node |^\[harness\]|\Z)", stdout, re.M | re.S)
    assert m, f"no text output of node {node_id} in:\n{stdout[-3000:]}"
    return m.group(1)


def prompt_sections(stdout: str) -> list[str]:
    """The harness output of each submitted prompt, in order (node ids repeat across prompts)."""
    return stdout.split("[harness] submitting workflow ")[1:]


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
    judge_preview = next(
        k
        for k, n in prompt.items()
        if n["class_type"] == "PreviewAny" and prompt[n["inputs"]["source"][0]]["class_type"] == "VIVA_Judge"
    )
    judge_json = output_text(out, judge_preview)
    scores = {k: float(v) for k, v in re.findall(r'"(EA|PC|GN|GR)": ([-+0-9.eE]+)', judge_json)}
    assert set(scores) == {"EA", "PC", "GN", "GR"}, judge_json
    assert all(0.0 <= s <= 1.0 for s in scores.values()), scores
    table = output_text(out, "8")
    assert re.search(r"seed\s+EA\s+PC\s+GN\s+GR\s+overall", table) and "*" in table, table


def test_best_of_n_on_previews_prompt_runs(models, tmp_path):
    """preview_cache > 0 (appended optional input): the candidates are judged as step-cached previews, the winner
    is rendered in full, and the table says so (viva_core's test checks the kept video is the plain edit)."""
    prompt = json.loads((PROMPTS / "edit_best_of_n.json").read_text())
    prompt["8"]["inputs"].update(preview_cache=10.0, candidate_batch=1)
    path = tmp_path / "previews.json"
    path.write_text(json.dumps(prompt))
    rc, out, report = run_harness(models, tmp_path, path)
    assert rc == EXIT_OK, out[-4000:]
    check_mp4(saved_mp4s(report)[0], frames=9, fps=8)
    table = output_text(out, "8")
    assert re.search(r"scores of step-cached previews \(first_block 10: \d+ of 4 DiT calls computed\)", table), table


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


# 20 bad prompts, each one input of tests/comfy_prompts/edit.json changed: (node, input, value).
BAD_INPUTS = [
    ("1", "video", "nope.mp4"),
    ("1", "video", "../../etc/passwd"),
    ("1", "max_frames", -5),
    ("1", "stride", 0),
    ("1", "start_frame", 500_000),
    ("2", "editor", "folder: nope"),
    ("2", "dtype", "fp64"),
    ("2", "offload", "always"),
    ("3", "lora", "../outside.safetensors"),
    ("3", "strength", 1e9),
    ("4", "instruction", ""),
    ("4", "instruction", "   \n "),
    ("4", "mode", "telepathy"),
    ("5", "steps", 0),
    ("5", "cfg", -1.0),
    ("5", "shift", 0.0),
    ("5", "strength", 0.0),
    ("5", "sampler", "ddim"),
    ("5", "fps", 0.0),
    ("5", "seed", -1),
]
VIVA_ERRORS = ("InputError", "VideoError", "ModelLoadError", "LoraError", "NonFiniteError")


def test_twenty_bad_prompts_then_a_good_one_in_one_server(models, tmp_path):
    """Each bad prompt is either rejected by ComfyUI's validation (widget ranges, combo lists) or fails on the
    node it reached with one of our error types, whose message names the value; the server keeps running and the
    good prompt after them still edits (issue 11, item 2)."""
    base = json.loads((PROMPTS / "edit.json").read_text())
    files = []
    for i, (node, name, value) in enumerate(BAD_INPUTS):
        prompt = json.loads(json.dumps(base))
        prompt[node]["inputs"][name] = value
        files.append(tmp_path / f"bad_{i:02d}.json")
        files[-1].write_text(json.dumps(prompt))
    rc, out, report = run_harness(models, tmp_path, *files, "edit.json", timeout=900)
    sections = prompt_sections(out)
    assert len(sections) == len(BAD_INPUTS) + 1, out[-3000:]
    assert "server died" not in out
    ours = 0
    for (node, name, value), text in zip(BAD_INPUTS, sections):
        where = f"node {node} {name}={value!r}"
        errors = [line for line in text.splitlines() if "EXECUTION ERROR in node" in line]
        if "prompt REJECTED" in text:
            assert not errors and f"node {node} " in text, (where, text[-1500:])
            continue
        assert len(errors) == 1 and any(f"viva_core.errors.{e}" in errors[0] for e in VIVA_ERRORS), (
            where,
            text[-1500:],
        )
        ours += 1
    assert ours >= 5  # the values ComfyUI cannot check (files, folders, empty text) reach our checks
    assert "status=success" in sections[-1] and report["execution"]["status"] == "success", report.get("execution")
    assert len(saved_mp4s(report)) == 1


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


@pytest.mark.skipif(not os.environ.get("VIVA_SOAK"), reason="soak test (minutes): set VIVA_SOAK=1")
def test_twenty_queued_edits_do_not_grow_the_servers_memory(models, tmp_path):
    """20 edit prompts (seeds 0..19, so none is cached) in one ComfyUI server; its resident memory, read from
    /proc after each prompt finishes, grows by at most 5% from the fifth to the last."""
    base = json.loads((PROMPTS / "edit.json").read_text())
    files = []
    for i in range(20):
        prompt = json.loads(json.dumps(base))
        prompt["5"]["inputs"]["seed"] = i
        files.append(tmp_path / f"edit_{i:02d}.json")
        files[-1].write_text(json.dumps(prompt))
    cmd, env = harness_command(models, tmp_path, tmp_path / "report.json", files, 150)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    pid, rss, log = None, [], []
    for line in proc.stdout:
        log.append(line)
        if (m := re.search(r"server pid (\d+)", line)) and pid is None:
            pid = int(m.group(1))
        if "prompt finished: status=success" in line and pid is not None:
            rss.append(_rss_mib(pid))
    assert proc.wait(timeout=900) == EXIT_OK, "".join(log[-80:])
    assert len(rss) == 20, "".join(log[-80:])
    growth = (rss[-1] - rss[4]) / rss[4]
    print(
        f"ComfyUI RSS after prompt 5: {rss[4]:.1f} MiB, after 20: {rss[-1]:.1f} MiB ({100 * growth:+.2f}%); "
        f"min {min(rss):.1f}, max {max(rss):.1f}"
    )
    assert growth <= 0.05, rss


def lora_metadata(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def test_trained_lora_is_listed_and_loads_in_the_next_prompt(models, tmp_path):
    """Dataset From Folder -> Train LoRA (sft, 3 steps) -> PreviewAny; then VIVA LoRA Loader picks the new file by
    name (a combo value ComfyUI checks against the folder's list) and the edit runs with it."""
    rc, out, report = run_harness(models, tmp_path, "train.json", "train_edit.json")
    assert rc == EXIT_OK, out[-4000:]
    train, edit = prompt_sections(out)
    assert output_text(train, "4").startswith("3 edits: 3 with target, 3 with mask\nviva_edits/manifest.jsonl")
    assert output_text(train, "3").strip() == "viva_test_lora.safetensors"
    metrics = output_text(train, "2")
    assert "viva_test_lora.safetensors: sft, 3 steps, rank 4" in metrics and re.search(r"loss \d", metrics), metrics
    lora = Path(models["models"]) / "loras" / "viva_test_lora.safetensors"
    meta = lora_metadata(lora)
    assert meta.get("trainer") == "viva_core" and meta.get("steps") == "3" and meta.get("method") == "sft", meta
    run = tmp_path / "run" / "output" / "viva_training" / "viva_test_lora"
    assert (run / "checkpoints" / "step-0000003").is_dir() and (run / "metrics.jsonl").is_file()
    # the next prompt loads it: all of its modules match the DiT, and the edit is saved
    assert "viva_test_lora.safetensors: comfyui format, 16/16 modules matched, rank 4" in output_text(edit, "3")
    assert report["execution"]["status"] == "success"
    mp4s = saved_mp4s(report)
    assert len(mp4s) == 1, report["execution"]
    check_mp4(mp4s[0], frames=9, fps=8)


def test_interrupted_training_keeps_a_checkpoint_and_resume_continues_it(models, tmp_path):
    # a run of a million steps, interrupted by the harness after 12 s (POST /interrupt, as the UI's cancel)
    rc, out, _ = run_harness(models, tmp_path, "train_interrupt.json", prompt_timeout=12)
    assert rc == EXIT_TIMEOUT, out[-4000:]
    assert "execution_interrupted at node 2 (VIVA_TrainLoRA)" in out, out[-4000:]
    run = tmp_path / "run" / "output" / "viva_training" / "viva_interrupted_lora"
    checkpoints = sorted((run / "checkpoints").glob("step-*"))
    assert checkpoints, out[-4000:]
    step = int(checkpoints[-1].name.removeprefix("step-"))
    assert (run / "viva_interrupted_lora_interrupted.safetensors").is_file()
    loras = Path(models["models"]) / "loras"
    assert not (loras / "viva_interrupted_lora.safetensors").exists()  # only a finished run lands in models/loras

    prompt = json.loads((PROMPTS / "train_interrupt.json").read_text())
    outside = json.loads(json.dumps(prompt))
    outside["2"]["inputs"]["manifest"] = "../../../../etc/hosts"
    resume = json.loads(json.dumps(prompt))
    resume["2"]["inputs"].update(steps=step + 2, resume=True)
    for name, p in (("outside.json", outside), ("resume.json", resume)):
        (tmp_path / name).write_text(json.dumps(p))
    # same output folder: a fresh start would mix with the old checkpoints and is refused; a manifest outside
    # ComfyUI's folders is refused; resume continues from the checkpoint to step+2
    rc, out, report = run_harness(
        models, tmp_path, "train_interrupt.json", tmp_path / "outside.json", tmp_path / "resume.json"
    )
    fresh, bad, resumed = prompt_sections(out)
    for section, says in ((fresh, "turn on resume to continue it"), (bad, "leaves ComfyUI's input/output folders")):
        errors = [line for line in section.splitlines() if "EXECUTION ERROR in node 2 (VIVA_TrainLoRA)" in line]
        assert len(errors) == 1 and "InputError" in errors[0] and says in errors[0], section[-3000:]
    assert report["execution"]["status"] == "success", resumed
    assert f"viva_interrupted_lora.safetensors: sft, {step + 2} steps" in output_text(resumed, "2")
    logged = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, step + 3)), logged  # one row per step, no gap or repeat across the interrupt
    assert lora_metadata(loras / "viva_interrupted_lora.safetensors").get("steps") == str(step + 2)


def test_lora_written_by_viva_loads_in_native_comfyui(comfy, tmp_path):
    """ComfyUI's own Wan loader and LoRA code read our LoRA files: every module mapped, none unloaded, and the
    patched weights equal W + alpha/r * B @ A."""
    import json as _json

    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_editor import build_single_file_dit, comfy_native_wan

    from viva_core.lora import LoraLayer, lora_target_names, save_lora

    dit_path, dit = build_single_file_dit(tmp_path / "wan_tiny.safetensors", prefix="", model=comfy_native_wan())
    g = torch.Generator().manual_seed(0)
    layers = {
        n: LoraLayer(
            torch.randn(4, dit.get_submodule(n).weight.shape[1], generator=g) * 0.1,
            torch.randn(dit.get_submodule(n).weight.shape[0], 4, generator=g) * 0.1,
            8.0,
        )
        for n in lora_target_names(dit, blocks_only=False)
    }
    lora = save_lora(tmp_path / "viva_lora.safetensors", layers, metadata={"rank": 4})
    proc = subprocess.run(
        [_comfy_py(), str(Path(__file__).parent / "comfy_native_lora.py"), str(dit_path), str(lora)],
        cwd=COMFYUI_DIR,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = _json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["modules"] == len(layers) and result["mapped"] == len(layers), result
    assert result["unloaded"] == [] and result["max_diff"] < 1e-3, result


def test_bundled_small_models_are_listed_and_edit(models, tmp_path):
    """The package's small models appear in the loaders' lists (beside the user's) and run an instructor edit, with
    the bundled editor's Edit-GRPO LoRA at CFG 5: the edit runs, and its report on the node says that the LoRA
    learned at CFG 1 (a note in the server's log alone would not reach the user)."""
    rc, out, report = run_harness(models, tmp_path, "bundled_edit.json")
    assert rc == EXIT_OK, out[-4000:]
    assert report["execution"]["status"] == "success"
    mp4s = saved_mp4s(report)
    assert len(mp4s) == 1, report["execution"]
    edited = output_text(out, "5")
    assert "64x64" in edited  # resized to the small editor's native size
    assert "viva-small-editor-grpo.safetensors: this Edit-GRPO LoRA learned" in edited  # the harness keeps 200 chars
    judged = output_text(out, "9")  # the small judge was asked for a rationale it cannot write: a note, no junk
    assert re.search(r"EA \d\.\d{3}", judged) and "(no rationale: this judge answers Yes/No only" in judged, judged
    assert "assistant" not in judged, judged


def test_models_are_under_comfyuis_model_management(models):
    """In-process in ComfyUI (tests/comfy_model_management.py): each part is loaded through ComfyUI's registry when
    it runs, `unload_all_models` (POST /free) takes all out, the next edit reloads them and is identical; the LoRA
    is ComfyUI patches, undone bit-exactly on unload and when the base model loads; hosted edits equal
    viva_core's own; the bar gets latent previews (the bundled small VAE's own factors) and an interrupt stops the
    edit at the next step."""
    proc = subprocess.run(
        [_comfy_py(), str(Path(__file__).parent / "comfy_model_management.py"), str(REPO), models["root"]],
        cwd=COMFYUI_DIR,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    dit, vae, te = "VivaWanTransformer3DModel", "VivaAutoencoderKLWan", "VivaUMT5EncoderModel"
    assert r["after_load"] == [] and r["after_encode"] == [te], r  # loaded when used, not at load time
    assert r["after_edit"] == sorted([dit, vae, te]), r
    assert r["after_unload"] == [] and r["after_final_unload"] == [], r
    assert r["after_second_edit"] == sorted([dit, vae]) and r["second_edit_identical"], r
    assert r["patched_while_loaded"] and r["unpatched_after_unload"] and r["base_weights_after_plain_edit"], r
    assert r["plain_differs_from_lora"], r  # the LoRA changes the edit, so the comparisons above can fail
    assert r["core_max_diff_lora"] < 1e-6 and r["core_max_diff_plain"] < 1e-6, r
    assert r["fp8_core_max_diff_lora"] < 1e-6 and r["fp8_lora_changes_edit"] and r["fp8_weights_untouched"], r
    # VIVA Step Cache: threshold 0 = no cache; 10 computes only the first of 4 calls, as viva_core alone does it
    assert r["step_cache_zero_identical"] and r["step_cache_changes_edit"] and r["step_cache_core_max_diff"] < 1e-6, r
    assert r["step_cache_report"] == "step cache first_block 10: 1 of 4 DiT calls computed", r
    assert r["step_cache_hooks_left"] == [] and r["step_cache_off_is_none"] and r["step_cache_after_identical"], r
    assert r["progress"] == [[i, 4] for i in range(1, 5)], r
    assert r["previews"] == [["JPEG", [4, 4]]] * 4, r  # one latent2rgb image per step, at the latents' 4x4
    assert r["latent_formats"] == ["VivaLatentFormat", "Wan21"], r  # the small VAE's own factors (issue 12)
    assert r["small_previewer"] == "Latent2RGBPreviewer" and r["small_previewer_factors"], r
    size, pixel, bias_colour = r["small_zero_preview"]
    assert size == [16, 16] and max(abs(a - b) for a, b in zip(pixel, bias_colour)) <= 1, r  # 1 px a latent
    assert r["interrupted"] and r["updates_before_interrupt"] == [1, 2], r
    assert "VivaQwen2_5_VLForConditionalGeneration" in r["after_instructor"], r
    assert "VivaTokenRefiner" in r["after_instructor"], r
    assert r["after_judge"].count("VivaQwen2_5_VLForConditionalGeneration") == 2, r  # instructor + judge
    assert r["auto_dtypes_on_cpu"] == ["torch.float32"] * 3, r  # the loaders' dtype "auto" on a CPU


class HeldServer:
    """A ComfyUI started by the harness with `--hold` and driven here over HTTP (POST /prompt, /free, /interrupt),
    for what the harness does not do between prompts. Stopped with SIGTERM to the harness, which stops the server."""

    def __init__(self, models: dict, tmp_path: Path) -> None:
        cmd, env = harness_command(models, tmp_path, tmp_path / "report.json", [], 60)
        self.log_path = tmp_path / "run" / "server.log"
        self.proc = subprocess.Popen(
            cmd + ["--hold", "1800"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        self.base, lines = None, []
        for line in self.proc.stdout:
            lines.append(line)
            if m := re.search(r"--hold: server stays up for \S+ at (\S+)", line):
                self.base = m.group(1)
                break
        assert self.base, "".join(lines[-40:])

    def call(self, method: str, path: str, body=None):
        import urllib.request

        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.base + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=60) as r:
            text = r.read().decode()
        return json.loads(text) if text.strip().startswith(("{", "[")) else text

    def queue(self, prompt: dict) -> str:
        return self.call("POST", "/prompt", {"prompt": prompt, "client_id": "viva-test"})["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 300) -> dict:
        import time

        end = time.time() + timeout
        while time.time() < end:
            entry = self.call("GET", f"/history/{prompt_id}").get(prompt_id)
            if entry and entry.get("status", {}).get("status_str") in ("success", "error"):
                return entry
            time.sleep(0.2)
        raise AssertionError(f"prompt {prompt_id} did not finish in {timeout} s:\n{self.log()[-3000:]}")

    def running(self) -> bool:
        return bool(self.call("GET", "/queue").get("queue_running"))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        import signal

        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


def decoded_frames(entry: dict, run_dir: Path):
    """The frames of the one mp4 a prompt saved (decoded: identical edits give identical frames)."""
    import av
    import numpy as np

    files = [
        it
        for out in entry["outputs"].values()
        for items in out.values()
        if isinstance(items, list)
        for it in items
        if isinstance(it, dict) and str(it.get("filename", "")).endswith(".mp4")
    ]
    assert len(files) == 1, entry["outputs"]
    path = run_dir / "output" / files[0].get("subfolder", "") / files[0]["filename"]
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def test_unload_models_and_interrupt_in_a_running_server(models, tmp_path):
    """POST /free {"unload_models": true} between two edits: the second loads the DiT again (ComfyUI logs
    "Requested to load" only for a model not in its registry) and saves the identical video. POST /interrupt
    during a 200-step edit ends it as interrupted on the Edit node within seconds, and the next prompt runs."""
    import time

    import numpy as np

    base = json.loads((PROMPTS / "edit.json").read_text())
    requested = "Requested to load VivaWanTransformer3DModel"
    server = HeldServer(models, tmp_path)
    try:
        first = server.wait(server.queue(base))
        assert first["status"]["status_str"] == "success", server.log()[-3000:]
        assert server.log().count(requested) == 1
        again = json.loads(json.dumps(base))
        again["5"]["inputs"]["seed"] = 1  # the Edit node runs again, the loaders are cached
        assert server.wait(server.queue(again))["status"]["status_str"] == "success"
        assert server.log().count(requested) == 1  # still in ComfyUI's registry: not loaded again
        server.call("POST", "/free", {"unload_models": True})
        time.sleep(2)  # the prompt worker handles the flag when it wakes
        same = json.loads(json.dumps(base))
        same["5"]["inputs"]["max_frames"] = 10  # reruns the Edit node only; the clip has 9 frames: the same edit
        after = server.wait(server.queue(same))
        assert after["status"]["status_str"] == "success", server.log()[-3000:]
        assert server.log().count(requested) == 2  # unloaded by /free, loaded again
        assert np.array_equal(decoded_frames(first, tmp_path / "run"), decoded_frames(after, tmp_path / "run"))

        long = json.loads(json.dumps(base))
        long["7"] = {
            "class_type": "ImageScale",
            "inputs": {
                "image": ["1", 0],
                "upscale_method": "nearest-exact",
                "width": 512,
                "height": 512,
                "crop": "disabled",
            },
        }
        long["5"]["inputs"].update(steps=200, seed=2, images=["7", 0])
        del long["5"]["inputs"]["video"]
        server.call("POST", "/free", {"unload_models": True})  # so the DiT's load is logged right before sampling
        time.sleep(2)
        loads = server.log().count(requested)
        pid = server.queue(long)
        deadline = time.time() + 120
        while server.log().count(requested) == loads and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(1)  # a few steps into sampling (200 take 18 s on 2 idle cores)
        t0 = time.time()
        server.call("POST", "/interrupt", {})
        entry = server.wait(pid, timeout=120)
        kinds = {kind: msg for kind, msg in entry["status"]["messages"]}
        assert "execution_interrupted" in kinds, entry["status"]
        assert kinds["execution_interrupted"]["node_type"] == "VIVA_EditVideo", kinds["execution_interrupted"]
        # the server's own time stamp of the interruption (ms, same clock): polling a busy server adds seconds
        waited = kinds["execution_interrupted"]["timestamp"] / 1000 - t0
        durations = []  # the same edit uninterrupted with 2 and 12 steps: what one step costs right now
        for steps in (2, 12):
            timed = json.loads(json.dumps(long))
            timed["5"]["inputs"].update(steps=steps, seed=10 + steps)
            stamps = dict(server.wait(server.queue(timed), timeout=300)["status"]["messages"])
            durations.append((stamps["execution_success"]["timestamp"] - stamps["execution_start"]["timestamp"]) / 1e3)
        step = (durations[1] - durations[0]) / 10
        print(f"interrupted {waited:.2f} s after POST /interrupt; a step took {step:.2f} s then")
        assert waited < 10, waited
        good = server.wait(server.queue(again))  # cached: the server is usable; a new seed runs the Edit node
        assert good["status"]["status_str"] == "success"
        fresh = json.loads(json.dumps(base))
        fresh["5"]["inputs"]["seed"] = 3
        assert server.wait(server.queue(fresh))["status"]["status_str"] == "success", server.log()[-3000:]
    finally:
        server.stop()


def test_train_lora_on_the_graphs_loaded_editor(models, tmp_path):
    """VIVA Train LoRA with `loaded_editor` connected trains the editor the graph already holds (its Load Editor
    node comes from the cache; no second load), with its blocks compiled (`compile` "blocks"), writes the LoRA, and
    gives the editor back unchanged and uncompiled: the same edit before and after training saves the identical
    video."""
    import numpy as np

    plain = json.loads((PROMPTS / "edit.json").read_text())
    del plain["3"]  # no LoRA
    plain["4"]["inputs"]["editor"] = plain["5"]["inputs"]["editor"] = ["2", 0]
    train = {"2": plain["2"]}
    for node_id, node in json.loads((PROMPTS / "train.json").read_text()).items():
        node = json.loads(json.dumps(node))
        for name, value in node["inputs"].items():
            if isinstance(value, list):
                node["inputs"][name] = [str(10 + int(value[0])), value[1]]
        train[str(10 + int(node_id))] = node
    train["12"]["inputs"].update(output_name="viva_lent_lora", loaded_editor=["2", 0], compile="blocks")
    server = HeldServer(models, tmp_path)
    try:
        before = server.wait(server.queue(plain))
        assert before["status"]["status_str"] == "success", server.log()[-3000:]
        trained = server.wait(server.queue(train))
        assert trained["status"]["status_str"] == "success", server.log()[-3000:]
        cached = [m for kind, m in trained["status"]["messages"] if kind == "execution_cached"]
        assert cached and "2" in cached[0]["nodes"], trained["status"]  # the graph's editor, not a new load
        assert "training on the loaded editor tiny-editor (torch.float32 on cpu), no second copy" in server.log()
        assert (Path(models["models"]) / "loras" / "viva_lent_lora.safetensors").is_file()
        run = tmp_path / "run" / "output" / "viva_training" / "viva_lent_lora" / "checkpoints" / "step-0000003"
        assert json.loads((run / "state.json").read_text())["config"]["model"]["compile"] == "blocks"
        plain["5"]["inputs"]["max_frames"] = 10  # reruns the Edit node only: the same edit
        after = server.wait(server.queue(plain))
        assert after["status"]["status_str"] == "success", server.log()[-3000:]
        assert np.array_equal(decoded_frames(before, tmp_path / "run"), decoded_frames(after, tmp_path / "run"))
        # the same run on a copy the trainer loads itself, eager, gives the same LoRA, up to float noise: the lent
        # weights are copies out of inference mode (model_management.usable_by_autograd), whose new allocations take
        # another CPU BLAS path (the DiT's forward moves by 3.6e-7), and the compiled blocks round in another order;
        # 3 Adam steps of lr 1e-3 make B about 3e-3
        own = json.loads((PROMPTS / "train.json").read_text())
        own["2"]["inputs"]["output_name"] = "viva_own_lora"
        assert server.wait(server.queue(own))["status"]["status_str"] == "success", server.log()[-3000:]
    finally:
        server.stop()
    import torch
    from safetensors.torch import load_file

    loras = Path(models["models"]) / "loras"
    lent, own_copy = load_file(loras / "viva_lent_lora.safetensors"), load_file(loras / "viva_own_lora.safetensors")
    assert lent.keys() == own_copy.keys()
    assert all(torch.allclose(lent[k], own_copy[k], rtol=1e-2, atol=1e-5) for k in lent), max(
        float((lent[k] - own_copy[k]).abs().max()) for k in lent
    )
