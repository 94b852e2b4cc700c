"""Editor loading from real on-disk formats and the edit pipeline, on tiny random checkpoints."""

import shutil

import pytest
import torch
from safetensors.torch import save_file
from tiny_editor import (
    WAN_SCHEDULER,
    build_editor_folder,
    build_single_file_dit,
    tiny_transformer,
    tiny_vae,
    write_scheduler_config,
)

from viva_core.editor import Conditioning, EditorOptions, available_attention_backends, load_editor
from viva_core.errors import InputError, ModelLoadError, NonFiniteError
from viva_core.pipeline import EditSettings, edit, encode_frames, pad_tokens

FP32 = EditorOptions(dtype="fp32", device="cpu")


@pytest.fixture(scope="module")
def editor_dir(tmp_path_factory):
    return build_editor_folder(tmp_path_factory.mktemp("editor") / "tiny-editor")


def frames(t=9, h=32, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(t, h, w, 3, generator=g)


def test_diffusers_folder_loads_with_geometry(editor_dir):
    ed = load_editor(str(editor_dir), options=FP32)
    assert ed.z_dim == 16 and ed.transformer.config.in_channels == 32
    assert ed.temporal_factor == 4 and ed.spatial_factor == 8 and ed.spatial_multiple == 16
    assert ed.text_encoder is not None and "tiny-editor" in ed.describe()
    cond = ed.encode_text("replace the dog with a fox")
    assert cond.embeds.shape == (1, 7, 64)  # 6 words + </s>


def test_single_file_dit_equals_its_diffusers_source(tmp_path, editor_dir):
    path, ref = build_single_file_dit(tmp_path / "wan_tiny.safetensors")
    ed = load_editor(transformer_file=str(path), vae_file=_vae_file(tmp_path), options=FP32)
    sd_loaded, sd_ref = ed.transformer.state_dict(), ref.state_dict()
    assert sd_loaded.keys() == sd_ref.keys()
    assert all(torch.equal(sd_loaded[k], sd_ref[k]) for k in sd_ref)


def _vae_file(tmp_path):
    """A Wan2.1-layout VAE in original keys, made by inverting diffusers' converter on a tiny model."""
    from tiny_editor import build_single_file_vae

    return str(build_single_file_vae(tmp_path / "vae.safetensors"))


def test_single_file_without_head_metadata_uses_wan_head_dim(tmp_path):
    path, _ = build_single_file_dit(tmp_path / "dit.safetensors", with_config_metadata=False)
    with pytest.raises(ModelLoadError, match="multiple of the head size"):
        load_editor(transformer_file=str(path), vae_file=_vae_file(tmp_path), options=FP32)


def test_t2v_checkpoint_is_rejected_unless_opted_in(tmp_path):
    root = build_editor_folder(tmp_path / "t2v", in_channels=16, with_text_encoder=False)
    with pytest.raises(ModelLoadError, match="not an editor"):
        load_editor(str(root), options=FP32)
    ed = load_editor(str(root), options=EditorOptions(dtype="fp32", device="cpu", allow_t2v=True))
    assert ed.transformer.config.in_channels == 32
    w = ed.transformer.patch_embedding.weight
    assert torch.count_nonzero(w[:, 16:]) == 0 and "zero-initialised" in ed.describe()


def test_broken_folders_name_the_missing_part(tmp_path, editor_dir):
    broken = tmp_path / "broken"
    shutil.copytree(editor_dir, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(ModelLoadError, match="vae/config.json"):
        load_editor(str(broken), options=FP32)
    with pytest.raises(ModelLoadError, match="not found"):
        load_editor(str(tmp_path / "nope"), options=FP32)
    pickled = tmp_path / "pickled"
    shutil.copytree(editor_dir, pickled)
    st = next((pickled / "transformer").glob("*.safetensors"))
    st.rename(st.with_suffix(".bin"))
    with pytest.raises(ModelLoadError, match="pickle"):
        load_editor(str(pickled), options=FP32)
    with pytest.raises(ModelLoadError, match="pickle"):
        load_editor(transformer_file=str(tmp_path / "x.ckpt"), vae_file="v.safetensors", options=FP32)


def test_mismatched_vae_is_named(tmp_path):
    root = tmp_path / "mix"
    tiny_transformer(in_channels=96, out_channels=48).save_pretrained(root / "transformer")
    tiny_vae().save_pretrained(root / "vae")
    with pytest.raises(ModelLoadError, match="different model families"):
        load_editor(str(root), options=FP32)


def test_not_a_wan_file_is_refused(tmp_path):
    bogus = tmp_path / "bogus.safetensors"
    save_file({"foo.weight": torch.zeros(2, 2)}, str(bogus))
    with pytest.raises(ModelLoadError, match="not a Wan DiT"):
        load_editor(transformer_file=str(bogus), vae_file=str(bogus), options=FP32)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ModelLoadError, match="corrupt"):
        load_editor(transformer_file=str(corrupt), vae_file=str(bogus), options=FP32)


def test_bad_options_are_refused(editor_dir):
    with pytest.raises(InputError, match="offload"):
        load_editor(str(editor_dir), options=EditorOptions(offload="sometimes", device="cpu"))
    with pytest.raises(InputError, match="compile 'blocks' cannot trace fp8"):  # dynamo fails on it (checked)
        load_editor(str(editor_dir), options=EditorOptions(fp8_storage=True, compile="blocks", device="cpu"))
    if "flash" in available_attention_backends():
        pytest.skip("flash_attn installed")
    with pytest.raises(InputError, match="attention"):
        load_editor(str(editor_dir), options=EditorOptions(attention="flash", device="cpu"))


def test_fa4_alone_offers_flash4_on_a_gpu_not_flash(tmp_path, monkeypatch):
    """flash-attn-4 installs flash_attn/cute/ with no flash_attn/__init__.py: a namespace, which is not FA2."""
    import viva_core.editor as editor_mod

    if editor_mod._installed("flash_attn"):
        pytest.skip("FA2 installed here")
    (tmp_path / "flash_attn" / "cute").mkdir(parents=True)
    (tmp_path / "flash_attn" / "cute" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert editor_mod._installed("flash_attn.cute") and not editor_mod._installed("flash_attn")
    assert not editor_mod._installed("flash_attn.nothing") and not editor_mod._installed("no_such_package.cute")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "flash4" not in available_attention_backends() and "flash" not in available_attention_backends()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    found = available_attention_backends()
    assert "flash4" in found and "flash" not in found
    (tmp_path / "flash_attn" / "__init__.py").write_text("")  # FA2's package beside it
    assert "flash" in available_attention_backends()


def test_edit_is_deterministic_and_snaps_frames(editor_dir):
    ed = load_editor(str(editor_dir), options=FP32)
    cond = ed.encode_text("make the ball red")
    src = frames(t=11, h=40, w=36)
    s = EditSettings(steps=3, cfg=3.0, seed=7, sampler="euler")
    steps_seen = []
    a = edit(ed, src, cond, settings=s, fps=12.0, progress=lambda d, t, p=None: steps_seen.append((d, t)))
    b = edit(ed, src, cond, settings=s, fps=12.0)
    assert a.frames.shape == (9, 40, 36, 3) and torch.equal(a.frames, b.frames)  # padded to 48x48, cropped back
    assert steps_seen == [(1, 3), (2, 3), (3, 3)]
    assert "9" in a.conform.message() and "11" in a.conform.message()
    assert a.frames.min() >= 0 and a.frames.max() <= 1
    c = edit(ed, src, cond, settings=EditSettings(steps=3, cfg=3.0, seed=8, sampler="euler"))
    assert not torch.equal(a.frames, c.frames)


def test_edit_uses_the_source_and_the_conditioning(editor_dir):
    ed = load_editor(str(editor_dir), options=FP32)
    s = EditSettings(steps=2, cfg=1.0, seed=0, sampler="euler")
    base = edit(ed, frames(seed=1), ed.encode_text("make the ball red"), settings=s).frames
    other_src = edit(ed, frames(seed=2), ed.encode_text("make the ball red"), settings=s).frames
    other_text = edit(ed, frames(seed=1), ed.encode_text("remove the dog"), settings=s).frames
    assert not torch.equal(base, other_src) and not torch.equal(base, other_text)


def test_cfg_matches_two_separate_passes(editor_dir, monkeypatch):
    """Batched CFG equals uncond + cfg * (cond - uncond) from two single-prompt DiT calls."""
    import viva_core.pipeline as pl

    ed = load_editor(str(editor_dir), options=FP32)
    cond, neg, src = ed.encode_text("make the ball red"), ed.encode_text("blurry"), frames()
    z = encode_frames(ed, src)
    x = torch.randn_like(z)
    inp, t = torch.cat([x, z], 1), torch.tensor([700.0])
    with torch.no_grad():
        vc = ed.transformer(inp, t, pad_tokens(cond.embeds, 512), return_dict=False)[0]
        vu = ed.transformer(inp, t, pad_tokens(neg.embeds, 512), return_dict=False)[0]
    captured = {}

    def fake_sample(velocity, noise, source, **kw):
        captured["v"] = velocity(x, 0.7)
        return noise

    monkeypatch.setattr(pl, "sample", fake_sample)
    edit(ed, src, cond, negative=neg, settings=EditSettings(steps=1, cfg=4.0, sampler="euler"))
    torch.testing.assert_close(captured["v"], vu + 4.0 * (vc - vu), rtol=1e-5, atol=1e-5)


def test_nan_from_the_model_is_reported(editor_dir):
    ed = load_editor(str(editor_dir), options=FP32)
    with torch.no_grad():
        ed.transformer.proj_out.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteError, match="NaN"):
        edit(ed, frames(), ed.encode_text("make it red"), settings=EditSettings(steps=2, sampler="euler"))


def test_bad_frames_and_conditioning(editor_dir):
    ed = load_editor(str(editor_dir), options=FP32)
    cond = ed.encode_text("make it red")
    with pytest.raises(InputError, match=r"\[T,H,W,3\]"):
        edit(ed, torch.rand(9, 32, 32), cond)
    bad = frames()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        edit(ed, bad, cond)
    with pytest.raises(InputError, match="text_dim"):
        cond.concat(Conditioning(torch.zeros(1, 3, 32)))


def test_auto_dtype_is_fp32_on_cpu_and_bf16_on_cuda(editor_dir):
    """The loader nodes default to "auto": bf16 matmuls are slow on CPUs (246 s vs 146 s for one ComfyUI graph,
    measured for the ComfyUI issue)."""
    from viva_core.runtime import parse_dtype

    assert parse_dtype("auto", "cpu") == torch.float32
    assert parse_dtype("auto", "cuda") == torch.bfloat16  # the dtype for that device, whether or not it is here
    editor = load_editor(str(editor_dir), options=EditorOptions(dtype="auto", device="cpu"))
    assert editor.dtype == torch.float32 and next(editor.transformer.parameters()).dtype == torch.float32
    with pytest.raises(InputError, match="auto"):
        parse_dtype("half-ish")


def test_auto_vae_dtype_is_bf16_on_a_gpu_unless_the_dit_runs_in_fp32(editor_dir, monkeypatch):
    """bf16 Wan VAEs decode at ~53 dB against fp32, 1.6x faster with 6 GiB less peak (bench/RESULTS.md); a CPU
    without AMX (slow bf16 convolutions) and an fp32 DiT keep the VAE in fp32."""
    import viva_core.runtime as runtime
    from viva_core.editor import vae_dtype_for

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert vae_dtype_for("auto", torch.bfloat16, cuda) == torch.bfloat16
    assert vae_dtype_for("auto", torch.float16, cuda) == torch.bfloat16  # Wan VAEs are not fp16-safe
    assert vae_dtype_for("auto", torch.float32, cuda) == torch.float32
    monkeypatch.setattr(runtime, "cpu_has_bf16_matmul", lambda: True)
    assert vae_dtype_for("auto", torch.bfloat16, cpu) == torch.bfloat16
    assert vae_dtype_for("auto", torch.float32, cpu) == torch.float32
    monkeypatch.setattr(runtime, "cpu_has_bf16_matmul", lambda: False)
    assert vae_dtype_for("auto", torch.bfloat16, cpu) == torch.float32
    assert vae_dtype_for("fp32", torch.bfloat16, cuda) == torch.float32  # an explicit choice wins
    assert vae_dtype_for("bf16", torch.float32, cpu) == torch.bfloat16
    editor = load_editor(str(editor_dir), options=EditorOptions(dtype="bf16", device="cpu"))
    assert next(editor.vae.parameters()).dtype == torch.float32
    editor = load_editor(str(editor_dir), options=EditorOptions(dtype="fp32", device="cpu", vae_dtype="bf16"))
    assert next(editor.vae.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize("offload", ["block", "block_prefetch"])
def test_block_offload_hands_diffusers_the_prefetch_setting(editor_dir, monkeypatch, offload):
    """offload "block" on a GPU places the DiT through diffusers' group offloading, one block a group, synchronous;
    "block_prefetch" asks for the side stream. The GPU is faked: only the hand-over is checked, with diffusers'
    function recorded."""
    import dataclasses

    import diffusers.hooks

    import viva_core.editor as editor_module

    calls = []
    monkeypatch.setattr(diffusers.hooks, "apply_group_offloading", lambda module, **kw: calls.append((module, kw)))
    editor = load_editor(str(editor_dir), options=EditorOptions(dtype="fp32", device="cpu", offload=offload))
    assert calls == []  # on the CPU there is nothing to offload to
    on_gpu = dataclasses.replace(editor, device=torch.device("cuda"))
    editor_module._place(on_gpu)
    [(module, kw)] = calls
    assert module is editor.transformer and getattr(module, "_viva_block_offload", False)
    assert kw["offload_type"] == "block_level" and kw["num_blocks_per_group"] == 1
    assert kw["onload_device"] == torch.device("cuda") and kw["offload_device"] == torch.device("cpu")
    prefetch = offload == "block_prefetch"
    assert kw.get("use_stream", False) is prefetch and kw.get("record_stream", False) is prefetch


@pytest.fixture
def sampled(monkeypatch):
    """The shift and sampler each edit samples with (the sampler itself runs as usual)."""
    import viva_core.pipeline as pipeline

    seen, real = [], pipeline.sample

    def spy(*args, **kw):
        seen.append((kw["shift"], kw["sampler"]))
        return real(*args, **kw)

    monkeypatch.setattr(pipeline, "sample", spy)
    return seen


def test_scheduler_config_gives_the_default_shift_and_sampler_and_options_override(tmp_path, editor_dir, sampled):
    """A folder's scheduler/scheduler_config.json (Wan2.1 1.3B ships UniPC with flow_shift 3.0) sets the shift and
    sampler of edits that leave them None; a shift or sampler given wins; without the file the old defaults
    (5.0, unipc) stay."""
    from viva_core.settings import DEFAULTS

    wan = tmp_path / "wan"
    shutil.copytree(editor_dir, wan)
    write_scheduler_config(wan, WAN_SCHEDULER)
    ed = load_editor(str(wan), options=FP32)
    assert ed.sampling_defaults == {"sampler": "unipc", "shift": 3.0}
    assert "shift 3" in ed.describe() and "scheduler_config.json" in ed.describe()
    cond, src = ed.encode_text("make the ball red"), frames()
    edit(ed, src, cond, settings=EditSettings(steps=1, cfg=1.0))
    edit(ed, src, cond, settings=EditSettings(steps=1, cfg=1.0, shift=7.0))
    edit(ed, src, cond, settings=EditSettings(steps=1, cfg=1.0, sampler="euler"))
    assert sampled == [(3.0, "unipc"), (7.0, "unipc"), (3.0, "euler")]
    assert ed.with_lora("unused.safetensors", 0.0).sampling_defaults == ed.sampling_defaults

    sampled.clear()
    plain = load_editor(str(editor_dir), options=FP32)
    assert plain.sampling_defaults == {}
    edit(plain, src, cond, settings=EditSettings(steps=1, cfg=1.0))
    assert sampled == [(DEFAULTS.shift, DEFAULTS.sampler)] == [(5.0, "unipc")]


def test_flow_match_euler_config_and_unknown_schedulers(tmp_path, editor_dir):
    """FlowMatchEulerDiscreteScheduler's `shift` and sampler are read; unknown keys are ignored; a scheduler VIVA
    has no sampler for gives no defaults; a shift that is resolution-dependent (dynamic) is not taken."""
    from viva_core.editor import scheduler_defaults

    root = tmp_path / "ed"
    root.mkdir()
    assert scheduler_defaults(root) == {}
    write_scheduler_config(root, {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3, "new_key": [1]})
    assert scheduler_defaults(root) == {"sampler": "euler", "shift": 3.0}
    write_scheduler_config(
        root, {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0, "use_dynamic_shifting": True}
    )
    assert scheduler_defaults(root) == {"sampler": "euler"}
    write_scheduler_config(root, {"_class_name": "DDIMScheduler", "flow_shift": 3.0})
    assert scheduler_defaults(root) == {}
    write_scheduler_config(root, {"_class_name": "UniPCMultistepScheduler", "flow_shift": 3.0})  # not flow sigmas
    assert scheduler_defaults(root) == {"sampler": "unipc"}


@pytest.mark.parametrize(
    "bad, words",
    [
        ('{"_class_name": "UniPCMultistepScheduler", ', "not readable JSON"),
        ("[1, 2]", "must be a JSON object"),
        ({**WAN_SCHEDULER, "flow_shift": "five"}, "flow_shift must be a number > 0"),
        ({**WAN_SCHEDULER, "flow_shift": 0}, "flow_shift must be a number > 0"),
    ],
)
def test_broken_scheduler_config_is_named(tmp_path, editor_dir, bad, words):
    ed = tmp_path / "ed"
    shutil.copytree(editor_dir, ed)
    path = write_scheduler_config(ed, bad)
    with pytest.raises(ModelLoadError, match="scheduler") as e:
        load_editor(str(ed), options=FP32)
    assert str(path) in str(e.value) and words in str(e.value) and "delete" in str(e.value)


def test_compile_on_a_cuda_machine_without_triton_says_what_to_install(monkeypatch) -> None:
    """torch.compile on a GPU needs Triton (often missing on Windows installs): the editor and the trainer say so
    before compiling, instead of inductor failing at the first step; a CPU machine compiles with its C++ backend."""
    import viva_core.editor as E

    monkeypatch.setattr(E, "_has_triton", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(InputError, match="compile 'blocks' on a CUDA machine needs Triton.*pip install triton"):
        E.compile_dit(torch.nn.Linear(2, 2), "blocks")
    E.compile_dit(torch.nn.Linear(2, 2), "off")  # nothing compiled, nothing needed
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match="names its repeated blocks"):  # past the Triton check on a CPU machine
        E.compile_dit(torch.nn.Linear(2, 2), "blocks")
