"""Step caching (viva_core.step_cache, diffusers' First Block Cache) on the tiny editor, on the CPU: threshold 0 is the
uncached edit bit for bit, a large threshold skips DiT calls (counted here by hooks on the last block, apart from the
cache's own count), the hooks are gone after every sampling run, best-of-N candidates start with an empty cache, and
bad specs or combinations fail with the fix named."""

from __future__ import annotations

import argparse
import dataclasses
import types

import pytest
import torch
from safetensors.torch import save_file
from tiny_editor import build_editor_folder, tiny_transformer

from viva_core.best_of_n import best_of_n
from viva_core.cli import build_parser
from viva_core.editor import EditorOptions, load_editor
from viva_core.errors import InputError
from viva_core.judge import DIMENSIONS
from viva_core.pipeline import edit, edit_encoded_batch, encode_source
from viva_core.settings import EditSettings
from viva_core.step_cache import StepCache, parse_step_cache, step_cache_for, step_cached
from viva_core.video import Video

PROMPT = "make the square red"
SETTINGS = EditSettings(steps=6, seed=0, sampler="unipc")  # CFG on: cond and negative rows in one DiT call
SKIPPING = StepCache("first_block", 0.2)  # skips some of the 6 calls on the tiny editor (1-3 computed)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_editor_folder(tmp_path_factory.mktemp("step_cache") / "editor")


@pytest.fixture(scope="module")
def editor(folder):
    return load_editor(str(folder), options=EditorOptions(dtype="fp32", device="cpu"))


@pytest.fixture(scope="module")
def frames():
    return torch.rand(5, 32, 32, 3, generator=torch.Generator().manual_seed(4))


@pytest.fixture(scope="module")
def cond(editor):
    return editor.encode_text(PROMPT)


def cache_hooks(dit: torch.nn.Module) -> list[str]:
    """Every diffusers hook left on the DiT or its modules."""
    return [
        f"{name}: {hook}"
        for name, m in dit.named_modules()
        if getattr(m, "_diffusers_hook", None) is not None
        for hook in m._diffusers_hook.hooks
    ]


class Counter:
    """DiT calls, and calls in which the last block really ran (a hook on its FFN, which a skipped block never
    reaches): independent of the cache's own count."""

    def __init__(self, dit: torch.nn.Module):
        self.calls = self.computed = 0
        self.handles = [
            dit.register_forward_hook(lambda *_: setattr(self, "calls", self.calls + 1)),
            dit.blocks[-1].ffn.register_forward_hook(lambda *_: setattr(self, "computed", self.computed + 1)),
        ]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


# ---------------------------------------------------------------------------------------------------- specs


def test_specs_parse_and_bad_ones_name_the_form():
    assert parse_step_cache("first_block:0.05") == StepCache("first_block", 0.05)
    assert parse_step_cache(" First-Block:0 ") == StepCache("first_block", 0.0)
    assert parse_step_cache("first_block") == StepCache("first_block", 0.05)  # diffusers' default
    assert parse_step_cache("off") is None and parse_step_cache("") is None
    assert step_cache_for("off", 0.3) is None and step_cache_for("first_block", 0.3) == StepCache("first_block", 0.3)
    for bad, words in (
        ("teacache:0.1", "unknown method 'teacache'"),
        ("taylorseer:3", "unknown method 'taylorseer'"),
        ("first_block:abc", "'abc' is not a number"),
        ("first_block:-0.1", "0..10"),
        ("first_block:nan", "0..10"),
        ("first_block:11", "0..10"),
        ("off:0.1", "unknown method 'off'"),
    ):
        with pytest.raises(InputError, match=words) as e:
            parse_step_cache(bad)
        assert "first_block" in str(e.value), e.value  # the form to write
    with pytest.raises(InputError, match="0..10"):
        StepCache("first_block", -1.0)
    with pytest.raises(InputError, match="not one of"):
        StepCache("magcache")


def test_cli_flag_parses_and_refuses_a_bad_spec(capsys):
    base = ["edit", "example", "make it red", "-o", "out.mp4"]
    assert build_parser().parse_args(base).step_cache is None  # default off
    assert build_parser().parse_args([*base, "--step-cache", "first_block:0.1"]).step_cache == StepCache(
        "first_block", 0.1
    )
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([*base, "--step-cache", "first_block:-1"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--step-cache" in err and "0..10" in err, err
    help_text = build_parser()._subparsers._group_actions[0].choices["edit"].format_help()
    assert "bench/RESULTS.md" in help_text and "quality" in help_text


# ---------------------------------------------------------------------------------------------------- edits


def test_threshold_zero_is_the_uncached_edit_bit_for_bit(editor, frames, cond):
    plain = edit(editor, frames, cond, settings=SETTINGS)
    cached = edit(editor.with_step_cache(StepCache("first_block", 0.0)), frames, cond, settings=SETTINGS)
    assert torch.equal(cached.frames, plain.frames)
    assert cached.step_cache.summary() == "step cache first_block 0: 6 of 6 DiT calls computed"
    assert (
        cached.step_cache.summary() in cached.summary()
        and plain.step_cache is None
        and "step cache" not in plain.summary()
    )


def test_a_large_threshold_skips_calls_and_reports_the_count_it_ran(editor, frames, cond):
    plain = edit(editor, frames, cond, settings=SETTINGS)
    counter = Counter(editor.transformer)
    try:
        cached = edit(editor.with_step_cache(SKIPPING), frames, cond, settings=SETTINGS)
    finally:
        counter.remove()
    assert counter.calls == SETTINGS.steps and 1 <= counter.computed < counter.calls, vars(counter)
    assert (cached.step_cache.calls, cached.step_cache.computed) == (6, counter.computed)
    assert cached.step_cache.summary() == f"step cache first_block 0.2: {counter.computed} of 6 DiT calls computed"
    diff = (cached.frames - plain.frames).abs()
    assert 0 < float(diff.max()) < 0.5, float(diff.max())  # a different edit, not a broken one


def test_no_hooks_are_left_and_the_next_edit_is_a_fresh_one(editor, frames, cond):
    fresh = edit(editor, frames, cond, settings=SETTINGS).frames
    cached_editor = editor.with_step_cache(SKIPPING)
    first = edit(cached_editor, frames, cond, settings=SETTINGS)
    assert cache_hooks(editor.transformer) == [] and editor.transformer._cache_config is None
    assert torch.equal(edit(editor, frames, cond, settings=SETTINGS).frames, fresh)
    second = edit(cached_editor, frames, cond, settings=SETTINGS)  # its cache starts empty again
    assert torch.equal(second.frames, first.frames) and second.step_cache == first.step_cache

    def stop(done, total, preview=None):
        if done == 2:
            raise RuntimeError("stopped by the app")

    with pytest.raises(RuntimeError, match="stopped by the app"):
        edit(cached_editor, frames, cond, settings=SETTINGS, progress=stop)
    assert cache_hooks(editor.transformer) == [] and editor.transformer._cache_config is None
    assert torch.equal(edit(editor, frames, cond, settings=SETTINGS).frames, fresh)


def test_editor_with_step_cache_shares_the_modules_and_leaves_the_original(editor):
    cached = editor.with_step_cache(SKIPPING)
    assert cached.transformer is editor.transformer and cached.vae is editor.vae
    assert editor.step_cache is None and cached.step_cache == SKIPPING
    assert "step cache first_block 0.2" in cached.describe() and "step cache" not in editor.describe()
    assert cached.with_step_cache(None).step_cache is None


def test_best_of_n_candidates_each_start_with_an_empty_cache(editor, frames, cond):
    cached = editor.with_step_cache(SKIPPING)
    seen = []

    def score(source, edited, instruction, num_frames):
        seen.append(edited)
        return types.SimpleNamespace(overall=len(seen) * 0.1, scores={}, caveat_lines=lambda width: [])

    judge = types.SimpleNamespace(score=score)
    out = best_of_n(cached, judge, Video(frames, 16.0, None), cond, PROMPT, n=3, settings=SETTINGS)
    assert out.seeds == [0, 1, 2] and len(seen) == 3
    for seed, candidate in zip(out.seeds, seen):
        alone = edit(cached, frames, cond, settings=dataclasses.replace(SETTINGS, seed=seed)).frames
        assert torch.equal(candidate, alone), seed
    assert "step cache first_block 0.2" in out.best.summary()


def test_batched_candidates_share_one_cache_run(editor, frames, cond):
    """Candidates sampled together are one sampling run: one decision per DiT call for all rows, counted once."""
    counter = Counter(editor.transformer)
    try:
        results = edit_encoded_batch(
            editor.with_step_cache(SKIPPING), encode_source(editor, frames), cond, [3, 4], settings=SETTINGS
        )
    finally:
        counter.remove()
    assert counter.calls == SETTINGS.steps and counter.computed < counter.calls, vars(counter)
    expected = f"step cache first_block 0.2: {counter.computed} of 6 DiT calls computed"
    assert [r.step_cache.summary() for r in results] == [expected] * 2
    assert cache_hooks(editor.transformer) == []


# ---------------------------------------------------------------------------------------------------- combinations


def _lora(path, dit) -> str:
    g, tensors = torch.Generator().manual_seed(3), {}
    for name in ("blocks.0.attn1.to_q", "blocks.1.ffn.net.2"):
        out_dim, in_dim = dit.get_submodule(name).weight.shape
        tensors[f"{name}.lora_A.weight"] = 0.3 * torch.randn(4, in_dim, generator=g)
        tensors[f"{name}.lora_B.weight"] = 0.3 * torch.randn(out_dim, 4, generator=g)
        tensors[f"{name}.alpha"] = torch.tensor(4.0)
    save_file(tensors, str(path))
    return str(path)


@pytest.mark.parametrize("fp8", [False, True], ids=["merged", "fp8-side-path"])
def test_lora_stacks_with_the_cache(folder, frames, tmp_path, fp8):
    if fp8 and not hasattr(torch, "float8_e4m3fn"):
        pytest.skip("no float8 in this torch")
    ed = load_editor(str(folder), options=EditorOptions(dtype="fp32", device="cpu", fp8_storage=fp8))
    cond = ed.encode_text(PROMPT)
    weights = {k: v.clone() for k, v in ed.transformer.state_dict().items()}
    hooks = cache_hooks(ed.transformer)  # fp8: diffusers' layerwise casting hooks, which must stay
    lora = ed.with_lora(_lora(tmp_path / "l.safetensors", ed.transformer), 1.0)
    plain = edit(lora, frames, cond, settings=SETTINGS).frames
    zero = edit(lora.with_step_cache(StepCache("first_block", 0.0)), frames, cond, settings=SETTINGS)
    assert torch.equal(zero.frames, plain)
    skipped = edit(lora.with_step_cache(SKIPPING), frames, cond, settings=SETTINGS)
    no_lora = edit(ed.with_step_cache(SKIPPING), frames, cond, settings=SETTINGS)
    assert not torch.equal(skipped.frames, no_lora.frames)  # the LoRA still acts on the cached edit
    assert all(torch.equal(v, ed.transformer.state_dict()[k]) for k, v in weights.items())  # restored
    assert cache_hooks(ed.transformer) == hooks and bool(hooks) == fp8


def test_group_offloading_hooks_on_the_same_blocks(folder, frames, cond):
    """offload=block puts diffusers' group offloading hooks on the blocks (on a GPU; here CPU to CPU): the cache's
    hooks wrap them for the run and leave them in place."""
    from diffusers.hooks import apply_group_offloading

    ed = load_editor(str(folder), options=EditorOptions(dtype="fp32", device="cpu"))
    plain = edit(ed, frames, cond, settings=SETTINGS).frames
    cpu = torch.device("cpu")
    try:
        apply_group_offloading(
            ed.transformer, onload_device=cpu, offload_device=cpu, offload_type="block_level", num_blocks_per_group=1
        )
    except AttributeError:  # diffusers 0.40 asks torch.accelerator for the device type, None without a GPU
        pytest.skip("this diffusers' group offloading needs a GPU")
    before = cache_hooks(ed.transformer)
    zero = edit(ed.with_step_cache(StepCache("first_block", 0.0)), frames, cond, settings=SETTINGS)
    assert torch.equal(zero.frames, plain)
    counter = Counter(ed.transformer)
    try:
        skipped = edit(ed.with_step_cache(SKIPPING), frames, cond, settings=SETTINGS)
    finally:
        counter.remove()
    assert skipped.step_cache.summary().endswith(f"{counter.computed} of 6 DiT calls computed") and counter.computed < 6
    assert cache_hooks(ed.transformer) == before and before


@pytest.mark.slow  # torch.compile on the CPU
def test_compiled_blocks_cache_like_the_uncompiled_dit(folder, frames, cond):
    """compile=blocks compiles each block's forward (editor.compile_dit), so the cache's hooks wrap the compiled
    forward: the same skips and the same edit up to kernel rounding as the uncompiled DiT, hooks gone afterwards, and
    `uncompile_dit` leaves the plain forward."""
    from viva_core.editor import uncompile_dit

    plain = load_editor(str(folder), options=EditorOptions(dtype="fp32", device="cpu"))
    compiled = load_editor(str(folder), options=EditorOptions(dtype="fp32", device="cpu", compile="blocks"))
    assert all(hasattr(b.__dict__.get("forward"), "_torchdynamo_orig_callable") for b in compiled.transformer.blocks)
    want = edit(plain.with_step_cache(SKIPPING), frames, cond, settings=SETTINGS)
    got = edit(compiled.with_step_cache(SKIPPING), frames, cond, settings=SETTINGS)
    assert got.step_cache.summary() == want.step_cache.summary() and want.step_cache.computed < 6
    torch.testing.assert_close(got.frames, want.frames, rtol=0, atol=1e-4)
    assert cache_hooks(compiled.transformer) == cache_hooks(plain.transformer)
    uncompile_dit(compiled.transformer)
    assert not any("forward" in b.__dict__ for b in compiled.transformer.blocks)


def test_refused_combinations_name_the_reason(editor):
    assert editor.with_step_cache(None).step_cache is None  # off is always fine
    one_block = dataclasses.replace(editor, transformer=_one_block_dit())
    with pytest.raises(InputError, match="at least 2 blocks"):
        one_block.with_step_cache(SKIPPING)


def _one_block_dit():
    dit = tiny_transformer()
    dit.blocks = dit.blocks[:1]
    return dit


def test_context_set_before_the_cache_existed(editor):
    """A cache_context entered before any cache hook existed (LucyEditPipeline does, per call) made diffusers 0.40 /
    0.41 keep a list of hook registries without the blocks', so the cache's hooks never got a context ("No context
    is set"); compat.invalidate_hook_registries rebuilds it. Run with diffusers 0.40 first on the path to check."""
    dit = tiny_transformer().eval()
    x, text = torch.randn(2, 32, 2, 4, 4), torch.randn(2, 5, 64)

    def call():
        with torch.no_grad():
            dit(hidden_states=x, timestep=torch.tensor([900.0, 900.0]), encoder_hidden_states=text, return_dict=False)

    with dit.cache_context("cond"):
        call()
    with step_cached(dit, StepCache("first_block", 10.0)) as count:
        call()
        call()
    assert (count.calls, count.computed) == (2, 1) and cache_hooks(dit) == []


def test_step_cache_arg_is_an_argparse_type():
    from viva_core.cli import step_cache_arg

    assert step_cache_arg("first_block:0.1") == StepCache("first_block", 0.1)
    with pytest.raises(argparse.ArgumentTypeError, match="unknown method"):
        step_cache_arg("fbc")


def test_viva_eval_scores_the_cached_editor(tmp_path, folder, capsys):
    """`viva eval --editor ... --step-cache` scores the edits of the cached editor (the same as evaluating it
    in-process), not the uncached ones; without --editor, or with --ceiling, the flag is refused."""
    import json

    from viva_core.cli import main
    from viva_core.eval import evaluate
    from viva_core.synth import generate

    manifest = generate(tmp_path / "d", n=2, seed=1, format="npz", splits=(1, 0, 0), frames=5, size=32)["train"]
    args = ["eval", str(manifest), "--editor", str(folder), "--no-outputs", "--steps", "4", "--sampler", "euler"]
    cpu = ["--dtype", "fp32", "--device", "cpu"]
    assert main([*args, "--report", str(tmp_path / "r"), *cpu, "--step-cache", "first_block:10"]) == 0
    got = [s["psnr"] for s in json.loads((tmp_path / "r" / "report.json").read_text())["scores"]]
    editor = load_editor(str(folder), options=EditorOptions(dtype="fp32", device="cpu"))
    negative, settings = editor.encode_text(""), EditSettings(steps=4, sampler="euler")

    def psnrs(ed) -> list[float]:
        def run(record, frames):
            return edit(ed, frames, ed.encode_text(record.instruction), negative=negative, settings=settings).frames

        return [s.psnr for s in evaluate(manifest, run).scores]

    assert got == pytest.approx(psnrs(editor.with_step_cache(StepCache("first_block", 10.0))), abs=1e-4)
    assert got != pytest.approx(psnrs(editor), abs=1e-4)
    assert (
        main(
            [
                "eval",
                str(manifest),
                "--outputs",
                str(tmp_path),
                "--report",
                str(tmp_path / "x"),
                "--step-cache",
                "first_block",
            ]
        )
        == 2
    )
    assert main([*args, "--ceiling", "--report", str(tmp_path / "y"), *cpu, "--step-cache", "first_block"]) == 2
    assert capsys.readouterr().err.count("it goes with --editor, not --ceiling") == 2


def test_best_of_n_judges_cached_previews_and_renders_only_the_winner(editor, frames, cond):
    """`previews`: every candidate is its seed's cached edit (what the judge sees), the kept video is the winning
    seed's plain edit bit for bit, rendered once more without the cache; not together with shared steps."""
    big = StepCache("first_block", 10.0)
    seen, marks = [], [0.1, 0.3, 0.2]

    def score(source, edited, instruction, num_frames):
        seen.append(edited)
        mark = marks[len(seen) - 1]
        return types.SimpleNamespace(
            overall=mark, scores=dict.fromkeys(DIMENSIONS, mark), caveat_lines=lambda width: []
        )

    judge = types.SimpleNamespace(score=score)
    out = best_of_n(editor, judge, Video(frames, 16.0, None), cond, PROMPT, n=3, settings=SETTINGS, previews=big)
    assert out.seeds == [0, 1, 2] and out.best.seed == 1 and out.best.step_cache is None
    calls = computed = 0
    for seed, preview in zip(out.seeds, seen):
        at = dataclasses.replace(SETTINGS, seed=seed)
        alone = edit(editor.with_step_cache(big), frames, cond, settings=at)
        assert torch.equal(preview, alone.frames), seed
        assert not torch.equal(preview, edit(editor, frames, cond, settings=at).frames), seed  # previews differ
        calls, computed = calls + alone.step_cache.calls, computed + alone.step_cache.computed
    assert (out.previews.calls, out.previews.computed) == (calls, computed) and computed < calls
    assert f"previews (first_block 10: {computed} of {calls} DiT calls computed); the video kept is seed 1's" in (
        out.table()
    )
    seen.clear()  # sampled together, the candidates share their DiT calls: counted once per batch
    together = best_of_n(
        editor, judge, Video(frames, 16.0, None), cond, PROMPT, n=2, batch=2, settings=SETTINGS, previews=big
    )
    assert together.previews.calls == SETTINGS.steps
    plain = edit(editor, frames, cond, settings=dataclasses.replace(SETTINGS, seed=1)).frames
    assert torch.equal(out.best.frames, plain)
    with pytest.raises(InputError, match="use one of them"):
        best_of_n(
            editor, judge, Video(frames, 16.0, None), cond, PROMPT, n=2, settings=SETTINGS, previews=big, shared_steps=2
        )
