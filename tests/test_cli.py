"""`viva edit` / `viva judge` end to end on tiny checkpoints in the real formats."""

import json
import math
import re

import pytest
import torch
from tiny_editor import build_editor_folder
from tiny_vlm import build_tiny_vlm

from viva_core.cli import main, parse_lora_arg
from viva_core.errors import InputError
from viva_core.instructor import RefinerConfig, TokenRefiner, save_refiner
from viva_core.lora import LoraLayer, lora_target_names, save_lora
from viva_core.video import Audio, probe_video, read_video, write_video


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    editor = build_editor_folder(root / "editor")
    vlm = build_tiny_vlm(root / "vlm")
    frames = torch.zeros(11, 36, 40, 3)
    for i in range(11):  # a bright square moving right on a gradient
        frames[i] = torch.linspace(0, 0.5, 40).view(1, 40, 1)
        frames[i, 10:20, 2 + 2 * i : 12 + 2 * i] = 1.0
    sr = 16000
    wave = torch.sin(2 * math.pi * 440 * torch.arange(int(sr * 11 / 8)) / sr).unsqueeze(0) * 0.3
    src = write_video(root / "src.mp4", frames, 8.0, Audio(wave, sr))
    from diffusers import WanTransformer3DModel

    dit = WanTransformer3DModel.from_pretrained(str(editor), subfolder="transformer")
    g = torch.Generator().manual_seed(0)
    layers = {}
    for name in lora_target_names(dit):
        w = dit.get_submodule(name).weight
        layers[name] = LoraLayer(
            torch.randn(4, w.shape[1], generator=g) * 0.1, torch.randn(w.shape[0], 4, generator=g) * 0.1, 4.0
        )
    lora = save_lora(root / "style.safetensors", layers, metadata={"rank": 4})
    refiner = save_refiner(
        root / "refiner.safetensors",
        TokenRefiner(RefinerConfig(in_dim=32, out_dim=64, hidden_dim=32, depth=1, heads=4)),
    )
    return dict(root=root, editor=editor, vlm=vlm, src=src, lora=lora, refiner=refiner)


def _edit_args(a, out, *extra):
    return [
        "edit",
        str(a["src"]),
        "make the square red",
        "-o",
        str(out),
        "--editor",
        str(a["editor"]),
        "--steps",
        "2",
        "--dtype",
        "fp32",
        "--device",
        "cpu",
        "--sampler",
        "euler",
        *extra,
    ]


def test_edit_writes_mp4_with_source_fps_and_audio(assets, capsys):
    out = assets["root"] / "out.mp4"
    assert main(_edit_args(assets, out, "--lora", f"{assets['lora']}:0.8")) == 0
    info = probe_video(out)
    assert info.num_frames == 9 and math.isclose(info.fps, 8.0) and info.has_audio  # 11 -> 4k+1 = 9
    assert (info.width, info.height) == (40, 36)  # the source's W x H: padded to 48x48 for the editor, cropped back
    video = read_video(out)
    assert abs(video.audio.waveform.shape[-1] / video.audio.sample_rate - 9 / 8) < 0.1  # trimmed to 9 frames
    text = capsys.readouterr().out
    assert "9 frames kept of 11" in text and "style.safetensors" in text and "matched" in text
    assert "9 frames 40x36 @ 8 fps" in text and "output cropped back to 40x36" in text


def test_lora_changes_the_edit_and_strength_zero_does_not(assets):
    outs = {}
    for tag, extra in (
        ("base", []),
        ("zero", ["--lora", f"{assets['lora']}:0"]),
        ("lora", ["--lora", str(assets["lora"])]),
    ):
        out = assets["root"] / f"{tag}.mp4"
        assert main(_edit_args(assets, out, *extra)) == 0
        outs[tag] = read_video(out, with_audio=False).frames
    assert torch.equal(outs["base"], outs["zero"])
    assert not torch.equal(outs["base"], outs["lora"])


def test_an_edit_says_when_a_grpo_lora_meets_another_cfg(assets, capsys, caplog):
    """A LoRA trained on rollouts at CFG 1 sampled at CFG 5 overshoots (docs/small_models.md, section 61): the edit
    runs and its summary (the ComfyUI node's report, `viva edit`'s output) names the file and both scales; at its own
    CFG it says nothing. `viva eval` says it once a run, not once an edit."""
    from viva_core.lora import read_lora

    layers, _, _ = read_lora(assets["lora"])
    meta = {"method": "grpo", "rollout_cfg": 1}
    grpo = save_lora(assets["root"] / "grpo_unguided.safetensors", layers, metadata=meta)
    said = {}
    for cfg in ("1", "5"):
        assert main(_edit_args(assets, assets["root"] / f"g{cfg}.mp4", "--lora", str(grpo), "--cfg", cfg)) == 0
        said[cfg] = [line for line in capsys.readouterr().out.splitlines() if "grpo_unguided.safetensors: this" in line]
    assert said["1"] == [] and len(said["5"]) == 1
    assert "CFG 1" in said["5"][0] and "CFG 5" in said["5"][0]
    from viva_core.synth import generate

    manifest = generate(assets["root"] / "d", n=2, seed=1, format="npz", splits=(1, 0, 0), frames=5, size=32)["train"]
    flags = ["--editor", str(assets["editor"]), "--steps", "1", "--dtype", "fp32", "--device", "cpu"]
    report = assets["root"] / "eval_g5"
    with caplog.at_level("WARNING", logger="viva"):
        assert main(["eval", str(manifest), "--report", str(report), "--no-outputs", *flags, "--lora", str(grpo)]) == 0
    notes = [r.getMessage() for r in caplog.records if "grpo_unguided.safetensors: this" in r.getMessage()]
    assert notes == [], "without --cfg, eval samples at the LoRA's own CFG 1"
    with caplog.at_level("WARNING", logger="viva"):
        args = ["eval", str(manifest), "--report", str(report) + "b", "--no-outputs", *flags, "--lora", str(grpo)]
        assert main([*args, "--cfg", "5"]) == 0
    notes = [r.getMessage() for r in caplog.records if "grpo_unguided.safetensors: this" in r.getMessage()]
    assert len(notes) == 1, notes  # two edits, one note


def test_without_cfg_an_edit_samples_at_the_grpo_loras_trained_guidance(assets, capsys):
    """No --cfg: the scale the --lora stack's Edit-GRPO LoRAs trained at (their `rollout_cfg`), said on the console;
    LoRAs that disagree or record none leave the default; --cfg always wins."""
    from viva_core.cli import build_parser, sampling_settings
    from viva_core.lora import read_lora
    from viva_core.settings import DEFAULTS

    layers, _, _ = read_lora(assets["lora"])
    one = save_lora(assets["root"] / "rollout1.safetensors", layers, metadata={"method": "grpo", "rollout_cfg": 1})
    two = save_lora(assets["root"] / "rollout2.safetensors", layers, metadata={"method": "grpo", "rollout_cfg": 2})
    parser = build_parser()

    def cfg(*flags):
        return sampling_settings(parser.parse_args(_edit_args(assets, assets["root"] / "x.mp4", *flags))).cfg

    assert cfg("--lora", str(one)) == 1.0 and "cfg 1: the guidance the LoRA's Edit-GRPO" in capsys.readouterr().out
    assert cfg("--lora", str(one), "--lora", str(assets["lora"])) == 1.0  # the other records none
    assert cfg("--lora", str(one), "--lora", str(two)) == DEFAULTS.cfg  # they disagree
    assert cfg("--lora", f"{one}:0") == DEFAULTS.cfg  # switched off
    assert cfg("--lora", str(one), "--cfg", "3") == 3.0
    assert cfg("--lora", str(assets["lora"])) == DEFAULTS.cfg


def test_lora_bundled_and_none_and_the_bundled_editors_default(tmp_path):
    """`viva edit` with no --editor adds the bundled editor's Edit-GRPO LoRA unless --lora is given; 'bundled' names
    that LoRA (its :STRENGTH kept) in edit and eval; 'none' means no LoRA at all; eval's `--editor bundled` is the
    editor alone, as the benchmark's rows name it."""
    from viva_core import bundled
    from viva_core.cli import build_parser, resolve_loras, use_bundled_models

    parser = build_parser()
    shipped = str(bundled.EDITOR_LORA)

    def edit_loras(*flags):
        args = parser.parse_args(["edit", "example", "x", "-o", str(tmp_path / "o.mp4"), *flags])
        use_bundled_models(args)
        return [parse_lora_arg(x) for x in args.lora]

    assert edit_loras() == [(shipped, 1.0)]
    assert edit_loras("--lora", "none") == []
    assert edit_loras("--lora", "bundled:0.5") == [(shipped, 0.5)]
    assert edit_loras("--lora", "mine.safetensors") == [("mine.safetensors", 1.0)]  # the user's instead
    assert edit_loras("--editor", "/models/Lucy-Edit-Dev") == []
    with pytest.raises(InputError, match="--lora none means no LoRA"):
        edit_loras("--lora", "none", "--lora", "bundled")
    assert resolve_loras(None, bundled_default=False) == []
    assert resolve_loras(["bundled", "a.safetensors:0.3"], bundled_default=False) == [
        f"{shipped}:1",
        "a.safetensors:0.3",
    ]


def test_edit_with_instructor_and_judge(assets, capsys):
    out = assets["root"] / "instr.mp4"
    args = _edit_args(
        assets,
        out,
        "--instructor",
        str(assets["vlm"]),
        "--refiner",
        str(assets["refiner"]),
        "--judge",
        str(assets["vlm"]),
        "--vlm-dtype",
        "fp32",
        "--candidates",
        "2",
    )
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "overall" in text and "*" in text  # best-of-N table with the best row marked
    report = json.loads(text[text.index("{") : text.rindex("}") + 1])
    assert set(report["scores"]) == {"EA", "PC", "GN", "GR"}
    assert probe_video(out).num_frames == 9


def test_best_of_n_on_previews_keeps_the_winners_plain_edit(assets, capsys):
    """--candidate-previews: the judge scores step-cached previews, the video written is the winning seed's edit
    as a plain `viva edit --seed` makes it, and the table says what was judged."""
    judge = ["--judge", str(assets["vlm"]), "--vlm-dtype", "fp32", "--candidates", "3"]
    out = assets["root"] / "previews.mp4"
    assert main(_edit_args(assets, out, *judge, "--candidate-previews", "first_block:10")) == 0
    text = capsys.readouterr().out
    assert "scores of step-cached previews (first_block 10: " in text
    best = int(re.search(r"^seed (\d+), ", text, re.M).group(1))  # the written edit's summary line
    plain = assets["root"] / "plain.mp4"
    assert main(_edit_args(assets, plain, "--seed", str(best))) == 0
    assert torch.equal(read_video(out, with_audio=False).frames, read_video(plain, with_audio=False).frames)


def test_rewrite_mode_without_refiner(assets, capsys):
    out = assets["root"] / "rewrite.mp4"
    assert main(_edit_args(assets, out, "--instructor", str(assets["vlm"]), "--vlm-dtype", "fp32")) == 0
    assert out.is_file()


def test_judge_command_writes_report(assets, capsys):
    report = assets["root"] / "judge.json"
    assert (
        main(
            [
                "judge",
                str(assets["src"]),
                str(assets["src"]),
                "make the square red",
                "--judge",
                str(assets["vlm"]),
                "--vlm-dtype",
                "fp32",
                "--device",
                "cpu",
                "--frames",
                "3",
                "--report",
                str(report),
            ]
        )
        == 0
    )
    data = json.loads(report.read_text())
    assert all(0.0 <= data["scores"][d] <= 1.0 for d in ("EA", "PC", "GN", "GR"))
    assert math.isclose(data["overall"], sum(data["scores"].values()) / 4, rel_tol=1e-6)


@pytest.mark.parametrize("case", ["corrupt", "empty", "missing", "pickle_lora", "foreign_lora", "no_editor"])
def test_bad_inputs_fail_cleanly_without_output(assets, capsys, case):
    root = assets["root"]
    out = root / f"bad_{case}.mp4"
    args = _edit_args(assets, out)
    if case == "corrupt":
        bad = root / "corrupt.mp4"
        bad.write_bytes(b"\x00\x01garbage" * 100)
        args[1] = str(bad)
    elif case == "empty":
        bad = root / "empty.mp4"
        bad.write_bytes(b"")
        args[1] = str(bad)
    elif case == "missing":
        args[1] = str(root / "nope.mp4")
    elif case == "pickle_lora":
        bad = root / "evil.pt"
        bad.write_bytes(b"not really a pickle")
        args += ["--lora", str(bad)]
    elif case == "foreign_lora":
        from safetensors.torch import save_file

        bad = root / "sdxl_lora.safetensors"
        save_file(
            {
                "lora_unet_down_blocks_0_attn.lora_down.weight": torch.zeros(4, 8),
                "lora_unet_down_blocks_0_attn.lora_up.weight": torch.zeros(8, 4),
            },
            str(bad),
        )
        args += ["--lora", str(bad)]
    elif case == "no_editor":
        args[args.index("--editor") + 1] = str(root / "no_such_editor")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "viva: error:" in err
    named = {
        "corrupt": "corrupt.mp4",
        "empty": "empty.mp4",
        "missing": "nope.mp4",
        "pickle_lora": "evil.pt",
        "foreign_lora": "sdxl_lora.safetensors",
        "no_editor": "no_such_editor",
    }[case]
    assert named in err
    assert not out.exists() and not list(root.glob(f".bad_{case}*"))


def test_parse_lora_arg():
    assert parse_lora_arg("a.safetensors:0.5") == ("a.safetensors", 0.5)
    assert parse_lora_arg("a.safetensors") == ("a.safetensors", 1.0)
    assert parse_lora_arg("C:\\loras\\a.safetensors") == ("C:\\loras\\a.safetensors", 1.0)


def test_cli_help_does_not_import_torch():
    """`viva --help` answers at once: the CLI module imports torch (1-9 s) only inside the commands."""
    import subprocess
    import sys

    code = "import sys, viva_core.cli as c; assert 'torch' not in sys.modules, 'torch imported at start'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_readme_node_table_uses_the_ui_names():
    """The README's node table names each node as the ComfyUI menu shows it (display_name in nodes/)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    shown = set(
        re.findall(r'display_name="(VIVA[^"]*)"', "".join(p.read_text() for p in (root / "nodes").glob("*.py")))
    )
    table = set(re.findall(r"^\| (VIVA (?!- )[^|]*?) \|", (root / "README.md").read_text(), flags=re.M))
    assert shown and table == shown, (sorted(table - shown), sorted(shown - table))


def test_bundled_editor_defaults_to_its_steps_and_flags_show_their_defaults(capsys):
    """Without --steps: the bundled small editor samples BUNDLED_STEPS, any other editor EditSettings' default;
    --help shows every sampling default (read from the one EditSettings); without --shift / --sampler they stay
    None, for the edit to take the editor's (its folder's scheduler config, else the default)."""
    from viva_core import bundled
    from viva_core.cli import build_parser, sampling_settings
    from viva_core.settings import BUNDLED_STEPS, DEFAULTS

    parser = build_parser()
    base = ["edit", "example", "x", "-o", "o.mp4"]
    assert sampling_settings(parser.parse_args(base + ["--editor", str(bundled.EDITOR)])).steps == BUNDLED_STEPS
    assert sampling_settings(parser.parse_args(base + ["--editor", "/models/Lucy-Edit-Dev"])).steps == DEFAULTS.steps
    assert sampling_settings(parser.parse_args(base + ["--editor", str(bundled.EDITOR), "--steps", "7"])).steps == 7
    assert BUNDLED_STEPS != DEFAULTS.steps
    with pytest.raises(SystemExit):
        parser.parse_args(["edit", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"(default {DEFAULTS.seed})" in text.rsplit("--seed", 1)[1][:200]  # its entry, after the usage line
    assert f"(default {DEFAULTS.cfg}, or with an Edit-GRPO --lora" in text.rsplit("--cfg", 1)[1][:200]
    assert sampling_settings(parser.parse_args(base)).cfg == DEFAULTS.cfg
    for flag, default in (("--shift", DEFAULTS.shift), ("--sampler", DEFAULTS.sampler)):
        assert (
            f"(default: from the model folder's scheduler config, else {default})" in text.rsplit(flag, 1)[1][:200]
        ), flag
    args = parser.parse_args(base + ["--editor", "/models/Lucy-Edit-Dev"])
    assert (sampling_settings(args).shift, sampling_settings(args).sampler) == (None, None)  # the editor's, at edit
    args = parser.parse_args(base + ["--editor", "/models/Lucy-Edit-Dev", "--shift", "3", "--sampler", "euler"])
    assert (sampling_settings(args).shift, sampling_settings(args).sampler) == (3.0, "euler")
    assert f"default {DEFAULTS.steps}; {BUNDLED_STEPS} for the bundled small editor" in text


def test_log_lines_go_to_the_stderr_of_each_call():
    """In-process callers swap sys.stderr between calls: the CLI's log handler must write to the current one, not
    to a stream an earlier call saw (closed by then: "--- Logging error ---")."""
    import io
    import logging
    import sys

    from viva_core.cli import configure_logging

    for _ in range(2):
        swapped = io.StringIO()
        old, sys.stderr = sys.stderr, swapped
        try:
            configure_logging(verbose=False)
            logging.getLogger("viva").warning("where does this go")
        finally:
            sys.stderr = old
        assert swapped.getvalue().count("viva: where does this go") == 1  # one handler, however many calls


def test_the_edit_path_imports_no_model_library_until_a_model_loads():
    """The modules `viva edit` runs through import torch, not diffusers / transformers / peft (a few seconds on 2
    CPU cores, e.g. for `viva --help`, ComfyUI's start or a failing argument check): those load with the first
    model. Without --instructor the VLM module is not imported either. (Once the editor loads, diffusers itself
    imports peft and torch._dynamo, whatever viva_core does: diffusers 0.42 imports every model class with one.)"""
    import subprocess
    import sys

    code = """
import sys
import viva_core.cli as cli, viva_core.pipeline, viva_core.conditioning, viva_core.editor, viva_core.video
assert cli.load_instructor_from_args(cli.argparse.Namespace(instructor=None)) == (None, "text")
print(sorted(m for m in ("diffusers", "transformers", "peft", "torch._dynamo", "viva_core.vlm") if m in sys.modules))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[-2] == "[]", proc.stdout


def test_commands_run_with_fewer_gc_passes_and_restore_the_callers_setting(monkeypatch):
    """main raises the cyclic GC's first two thresholds while a command runs (the imports of torch, diffusers and
    transformers otherwise cost ~1,000 collections, 1.3 s CPU of README command 1) and restores them afterwards, also
    when the command fails; a caller's higher threshold or disabled collection (0) is left as it is."""
    import gc

    import viva_core.cli as cli

    seen = []

    def command(args):
        seen.append(gc.get_threshold())
        if args.instruction == "fail":
            raise InputError("no")
        return 0

    monkeypatch.setattr(cli, "cmd_edit", command)
    before = gc.get_threshold()
    try:
        raised = (cli.GC_THRESHOLD, cli.GC_MIDDLE_THRESHOLD, 10)
        for start, during in ((700, raised), (50_000, (50_000, 10, 10)), (0, (0, 10, 10))):
            gc.set_threshold(start, 10, 10)
            for instruction, code in (("x", 0), ("fail", 2)):
                assert main(["edit", "in.mp4", instruction, "-o", "out.mp4"]) == code
                assert seen.pop() == during and gc.get_threshold() == (start, 10, 10)
    finally:
        gc.set_threshold(*before)


@pytest.mark.parametrize("amx", [False, True])
def test_bundled_models_on_a_cpu_run_bf16_only_where_the_cpu_multiplies_bf16(monkeypatch, amx):
    """Without --editor on a CPU: fp32 (bf16 matmuls are slow on most CPUs), but with AMX the editor keeps the bf16
    default (faster there); the judge stays fp32 either way. An explicit --dtype other than bf16 is kept."""
    import viva_core.cli as cli
    import viva_core.runtime as runtime

    monkeypatch.setattr(cli, "_cuda", lambda: False)
    monkeypatch.setattr(runtime, "cpu_has_bf16_matmul", lambda: amx)
    parser = cli.build_parser()
    args = parser.parse_args(["edit", "example", "x", "-o", "o.mp4", "--judge", "bundled"])
    cli.use_bundled_models(args)
    assert (args.dtype, args.vlm_dtype) == ("bf16" if amx else "fp32", "fp32")
    args = parser.parse_args(["edit", "example", "x", "-o", "o.mp4", "--dtype", "fp16"])
    cli.use_bundled_models(args)
    assert (args.dtype, args.vlm_dtype) == ("fp16", "bf16")


def test_a_command_process_freezes_its_objects_at_exit():
    """main has gc.freeze run at exit: CPython's exit then skips full collections over the ~400k objects torch,
    diffusers and transformers leave (1.3 s of README command 1's wall on 2 cores). In-process callers keep normal
    collection until their exit."""
    import subprocess
    import sys

    code = """
import atexit, gc
atexit.register(lambda: print("frozen at exit", gc.get_freeze_count() > 0))  # runs after main's handler
import viva_core.cli as cli
cli.cmd_edit = lambda args: 0
assert cli.main(["edit", "in.mp4", "x", "-o", "out.mp4"]) == cli.main(["edit", "in.mp4", "x", "-o", "out.mp4"]) == 0
print("frozen before exit", gc.get_freeze_count() > 0)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == "frozen before exit False frozen at exit True".split()
