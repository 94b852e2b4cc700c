"""The shipped templates (workflows/) and the example files the pack copies into ComfyUI's input folder.

No ComfyUI needed: these check the files themselves. tests/test_workflows_frontend.py loads the templates in the
real frontend and runs the bundled ones in a real ComfyUI.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from viva_core import bundled
from viva_core.data import dataset_from_folder, load_manifest

WORKFLOWS = Path(__file__).resolve().parent.parent / "workflows"
TEMPLATES = sorted(WORKFLOWS.glob("*.json"))
OUR_NODES = {
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
}
CORE_NODES = {"SaveVideo", "MarkdownNote", "PrimitiveStringMultiline", "PreviewAny"}
BYPASSED = 4  # LiteGraph node mode
# The templates that must run as loaded on a fresh install (only bundled models and the example files).
BUNDLED = ("VIVA - Edit the example (small models)", "VIVA - Train a LoRA from a folder")


def nodes_of(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["nodes"]


def test_the_four_templates_are_there():
    names = [p.stem for p in TEMPLATES]
    assert len(names) == 4, names
    for name in BUNDLED:
        assert name in names


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.stem)
def test_template_is_a_readable_ui_workflow_with_a_thumbnail(path):
    # The Templates menu shows the file name as the title and description (frontend 1.27 and 1.58 alike).
    assert re.fullmatch(r"VIVA - [A-Z][\w .,()-]+", path.stem) and "_" not in path.stem, path.stem
    data = json.loads(path.read_text(encoding="utf-8"))
    assert {"nodes", "links", "version"} <= set(data), sorted(data)
    types = {n["type"] for n in data["nodes"]}
    assert types <= OUR_NODES | CORE_NODES, types - OUR_NODES - CORE_NODES
    notes = [n for n in data["nodes"] if n["type"] == "MarkdownNote"]
    assert len(notes) == 1 and len(notes[0]["widgets_values"][0]) > 200, "one Read me note that says what to do"
    with Image.open(path.with_suffix(".jpg")) as thumb:
        assert thumb.format == "JPEG" and min(thumb.size) >= 200, (thumb.format, thumb.size)
    for n in data["nodes"]:
        if n["type"] == "VIVA_Judge":  # rationale off: a Yes/No judge cannot write one (Judge node, README)
            assert n["widgets_values"][-1] is False, n["widgets_values"]
        if n["type"] in ("VIVA_EditVideo", "VIVA_BestOfN"):
            assert "fixed" in n["widgets_values"], f"{n['type']}: the seed stays fixed, so a rerun is the same edit"


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_templates_name_only_bundled_models_and_the_example(name):
    nodes = {n["type"]: n for n in nodes_of(WORKFLOWS / f"{name}.json") if n.get("mode") != BYPASSED}
    values = [v for n in nodes.values() for v in n.get("widgets_values") or [] if isinstance(v, str)]
    for v in values:
        if v.startswith("folder: "):
            assert (bundled.ROOT / "diffusers" / v[len("folder: ") :]).is_dir(), v
        if v.startswith("viva-small-") and not v.endswith(".safetensors"):
            assert (bundled.ROOT / "vlm" / v).is_dir(), v
        if v.endswith(".safetensors"):  # a LoRA or a token refiner
            assert any((bundled.ROOT / sub / v).is_file() for sub in ("loras", "refiners")), v
    if "VIVA_LoadVideo" in nodes:
        assert nodes["VIVA_LoadVideo"]["widgets_values"][0] == bundled.EXAMPLE_INPUT_CLIP
    if "VIVA_DatasetFromFolder" in nodes:
        assert nodes["VIVA_DatasetFromFolder"]["widgets_values"][0] == bundled.EXAMPLE_INPUT_FOLDER


def test_install_examples_gives_a_clip_and_a_one_edit_training_folder(tmp_path):
    written = bundled.install_examples(tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == sorted(bundled.example_inputs())
    assert (tmp_path / bundled.EXAMPLE_INPUT_CLIP).read_bytes() == bundled.EXAMPLE.read_bytes()
    # the folder reads as a data set through the same code as VIVA Dataset From Folder
    reference = json.loads((bundled.EXAMPLE.parent / "shapes.jsonl").read_text().splitlines()[0])
    records = load_manifest(dataset_from_folder(tmp_path / bundled.EXAMPLE_INPUT_FOLDER))
    assert len(records) == 1
    r = records[0]
    assert r.instruction == reference["instruction"] == "Invert the colours."
    assert Path(r.target_video).read_bytes() == (bundled.EXAMPLE.parent / reference["target_video"]).read_bytes()
    assert Path(r.mask_video).read_bytes() == (bundled.EXAMPLE.parent / reference["mask_video"]).read_bytes()
    assert not list(tmp_path.rglob(".*.tmp*")), "no temp files left behind"


def test_install_examples_never_replaces_a_file(tmp_path):
    mine = tmp_path / bundled.EXAMPLE_INPUT_CLIP
    mine.write_bytes(b"the user's own video")
    (tmp_path / bundled.EXAMPLE_INPUT_FOLDER).mkdir()
    (tmp_path / bundled.EXAMPLE_INPUT_FOLDER / "shapes.txt").write_text("make it red\n")
    written = {p.relative_to(tmp_path).as_posix() for p in bundled.install_examples(tmp_path)}
    assert bundled.EXAMPLE_INPUT_CLIP not in written and f"{bundled.EXAMPLE_INPUT_FOLDER}/shapes.txt" not in written
    assert mine.read_bytes() == b"the user's own video"
    assert (tmp_path / bundled.EXAMPLE_INPUT_FOLDER / "shapes.txt").read_text() == "make it red\n"
    assert bundled.install_examples(tmp_path) == []  # a second start-up writes nothing


def test_frontend_extension_imports_only_the_public_api():
    """scripts/app.js and scripts/api.js are the public entry points; other modules such as scripts/widgets.js are
    internal and the newest frontend warns that they may break (issue 12)."""
    js = (WORKFLOWS.parent / "web" / "js" / "viva.js").read_text(encoding="utf-8")
    imports = re.findall(r'^import .* from "(.+)";$', js, re.M)
    assert imports == ["../../../scripts/api.js", "../../../scripts/app.js"], imports
