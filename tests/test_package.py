"""The pack's entry file (__init__.py) inside a ComfyUI without the V3 node API: it says why it registers nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = f"""
import importlib.util, logging, sys, types
logging.basicConfig(level=logging.WARNING, format="%(message)s")
if sys.argv[1] == "comfyui":
    sys.modules["folder_paths"] = types.ModuleType("folder_paths")  # as ComfyUI's process has it
spec = importlib.util.spec_from_file_location("viva_pack", {str(ROOT / "__init__.py")!r},
                                              submodule_search_locations=[{str(ROOT)!r}])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print("registered" if module.ComfyExtension is not None else "nothing")
"""


def _run(where: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT, where], capture_output=True, text=True, timeout=60)


def test_old_comfyui_gets_a_reason_and_plain_imports_stay_quiet():
    old = _run("comfyui")  # no comfy_api in this environment: an old ComfyUI
    assert old.returncode == 0 and old.stdout.strip() == "nothing"
    assert "no V3 node API" in old.stderr and "0.3.48" in old.stderr and "Update ComfyUI" in old.stderr
    plain = _run("python")  # imported outside ComfyUI (pytest, tools): no warning
    assert plain.returncode == 0 and plain.stdout.strip() == "nothing" and plain.stderr == ""


def test_training_curves_are_optional(tmp_path, monkeypatch, caplog):
    """matplotlib is the "plot" extra: without it training logs its metrics, draws no PNG and says so once."""
    import logging

    from viva_core.train.metrics import MetricsLog

    metrics = MetricsLog(tmp_path, tensorboard=False)
    metrics.log(1, {"loss": 1.0})
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    with caplog.at_level(logging.WARNING, logger="viva_core.train.metrics"):
        assert metrics.plot(tmp_path / "curves.png") is None and metrics.plot(tmp_path / "curves.png") is None
    notices = [r.getMessage() for r in caplog.records if "matplotlib" in r.getMessage()]
    assert len(notices) == 1 and "comfyui-viva[plot]" in notices[0], notices
    assert not (tmp_path / "curves.png").exists() and metrics.rows() == [{"step": 1, "loss": 1.0}]


def _requirements(lines) -> dict[str, tuple[str, str]]:
    """{normalized name: (specifier, marker)} of requirement strings, duplicates refused."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    out: dict[str, tuple[str, str]] = {}
    for line in lines:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name not in out, f"{name} listed twice"
        out[name] = (str(req.specifier), str(req.marker or ""))
    return out


def test_requirements_txt_is_pyprojects_dependencies_without_torch():
    """requirements.txt (for ComfyUI Manager, which brings its own torch) cannot drift from pyproject.toml: the same
    names, specifiers and markers, torch (and torchvision/torchaudio) left out."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    wanted = _requirements(project["dependencies"])
    assert "torch" in wanted
    lines = [line.split("#", 1)[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    listed = _requirements(line for line in lines if line)
    assert not {"torch", "torchvision", "torchaudio"} & set(listed)
    assert listed == {name: spec for name, spec in wanted.items() if name != "torch"}


def test_lowest_versions_constraints_pin_pyprojects_floors():
    """tests/constraints-lowest.txt (the lowest-versions check, docs/dependencies.md) pins every floor of pyproject's
    dependencies and of the plot extra (torch excepted: the command installs it), and nothing else."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import Version

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    floors = {}
    for line in project["dependencies"] + project["optional-dependencies"]["plot"]:
        req = Requirement(line)
        lows = [Version(s.version) for s in req.specifier if s.operator == ">="]
        if canonicalize_name(req.name) not in ("torch", "tomli"):
            assert len(lows) == 1, f"{line}: no floor"
            floors[canonicalize_name(req.name)] = lows[0]
    lines = [line.split("#", 1)[0].strip() for line in (ROOT / "tests/constraints-lowest.txt").read_text().splitlines()]
    pins = {}
    for line in filter(None, lines):
        name, _, version = line.partition("==")
        pins[canonicalize_name(name)] = Version(version)
    assert pins == floors
