"""viva_core.lora: every file format merges to W + s·α/r·B@A, restores bit-exactly, reports keys, and the
files we write are read by diffusers' own converter. Files are written key by key in each test, with an
original-Wan <-> diffusers name table typed out here (independent of the module's table)."""

from __future__ import annotations

import copy
import json
import os
import stat

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from viva_core.errors import InputError, LoraError
from viva_core.lora import (
    WAN_NAME_TABLE,
    LoraLayer,
    LoraSpec,
    applied_loras,
    diffusers_to_wan,
    guidance_notes,
    key_report,
    lora_delta,
    lora_target_names,
    read_lora,
    sampling_cfg,
    save_lora,
    stack_cfg,
    trained_cfg,
    wan_to_diffusers,
)

diffusers = pytest.importorskip("diffusers")
from diffusers import WanTransformer3DModel  # noqa: E402

# diffusers name -> original Wan / ComfyUI name, by hand (diffusers' single-file and LoRA converters agree)
ORIG = {
    "blocks.0.attn1.to_q": "blocks.0.self_attn.q",
    "blocks.1.attn1.to_out.0": "blocks.1.self_attn.o",
    "blocks.0.attn2.to_k": "blocks.0.cross_attn.k",
    "blocks.1.attn2.to_v": "blocks.1.cross_attn.v",
    "blocks.0.ffn.net.0.proj": "blocks.0.ffn.0",
    "blocks.1.ffn.net.2": "blocks.1.ffn.2",
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.time_proj": "time_projection.1",
    "proj_out": "head.head",
}
RANK, ALPHA, STRENGTH = 4, 6.0, 0.7
TINY = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=16,
    in_channels=32,
    out_channels=16,
    text_dim=64,
    freq_dim=32,
    ffn_dim=64,
    num_layers=2,
    rope_max_seq_len=64,
)


def tiny_dit(seed: int = 0, **extra) -> WanTransformer3DModel:
    torch.manual_seed(seed)
    model = WanTransformer3DModel(**TINY, **extra).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model


def forward(model: torch.nn.Module) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    dtype = next(model.parameters()).dtype
    x = torch.randn(1, 32, 1, 4, 4, generator=g).to(dtype)
    text = torch.randn(1, 5, 64, generator=g).to(dtype)
    with torch.no_grad():
        return model(hidden_states=x, timestep=torch.tensor([500.0]), encoder_hidden_states=text).sample.float()


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert after[k].dtype == v.dtype and torch.equal(after[k], v), k


def random_layers(model, names, seed: int, rank: int = RANK, in_override: dict | None = None):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for n in names:
        o, i = model.get_submodule(n).weight.shape
        i = (in_override or {}).get(n, i)
        out[n] = (0.1 * torch.randn(rank, i, generator=g), 0.1 * torch.randn(o, rank, generator=g))  # (A, B)
    return out


def write_lora(path, fmt: str, layers, alpha: float = ALPHA):
    """Write {diffusers name: (A, B)} in one of the formats found in the wild."""
    t, meta = {}, {}
    for n, (a, b) in layers.items():
        if fmt == "comfyui":
            k, down, up = f"diffusion_model.{ORIG[n]}", "lora_A.weight", "lora_B.weight"
        elif fmt == "comfyui_updown":
            k, down, up = f"diffusion_model.{ORIG[n]}", "lora_down.weight", "lora_up.weight"
        elif fmt == "kohya":
            k, down, up = "lora_unet_" + ORIG[n].replace(".", "_"), "lora_down.weight", "lora_up.weight"
        elif fmt == "diffusers":  # alpha in diffusers' lora_adapter_metadata, as diffusers' trainers save it
            k, down, up = f"transformer.{n}", "lora_A.weight", "lora_B.weight"
        elif fmt == "diffusers_bare":  # no prefix, alpha keys
            k, down, up = n, "lora_A.weight", "lora_B.weight"
        elif fmt == "peft":  # PEFT model.state_dict() names; alpha in adapter_config.json beside the file
            k, down, up = f"base_model.model.{n}", "lora_A.default.weight", "lora_B.default.weight"
        else:
            raise AssertionError(fmt)
        t[f"{k}.{down}"], t[f"{k}.{up}"] = a.contiguous(), b.contiguous()
        if fmt in ("comfyui", "comfyui_updown", "kohya", "diffusers_bare"):
            t[f"{k}.alpha"] = torch.tensor(alpha)
    if fmt == "diffusers":
        meta["lora_adapter_metadata"] = json.dumps({"transformer.r": RANK, "transformer.lora_alpha": alpha})
    if fmt == "peft":
        (path.parent / "adapter_config.json").write_text(json.dumps({"r": RANK, "lora_alpha": alpha}))
    save_file(t, str(path), metadata=meta)
    return path


def expected_weights(before, layers, strength, alpha=ALPHA, rank=RANK):
    """Independent formula W + s·α/r·B@A in fp32."""
    return {n: before[f"{n}.weight"].float() + strength * alpha / rank * (b @ a) for n, (a, b) in layers.items()}


FORMATS = {
    "comfyui": "comfyui",
    "comfyui_updown": "comfyui",
    "kohya": "kohya",
    "diffusers": "diffusers",
    "diffusers_bare": "diffusers",
    "peft": "peft",
}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_each_format_merges_exact_formula_and_restores(tmp_path, fmt):
    model = tiny_dit()
    before = snapshot(model)
    base_out = forward(model)
    layers = random_layers(model, ORIG, seed=3)
    path = write_lora(tmp_path / f"{fmt}.safetensors", fmt, layers)
    expected = expected_weights(before, layers, STRENGTH)

    with applied_loras(model, [LoraSpec(str(path), STRENGTH)]) as reports:
        for n, w in expected.items():
            torch.testing.assert_close(model.get_submodule(n).weight, w, atol=1e-6, rtol=0)
        touched = {f"{n}.weight" for n in expected}
        for k, v in model.state_dict().items():
            if k not in touched:
                assert torch.equal(v, before[k]), k
        lora_out = forward(model)

    assert_same(model, before)
    (rep,) = reports
    assert rep.format == FORMATS[fmt]
    assert sorted(rep.matched) == sorted(ORIG) and rep.unmatched == [] and rep.shape_mismatch == []
    assert rep.rank == RANK and rep.alpha == ALPHA
    assert f"{len(ORIG)}/{len(ORIG)} modules matched" in rep.summary()

    ref = copy.deepcopy(model)
    with torch.no_grad():
        for n, w in expected.items():
            ref.get_submodule(n).weight.copy_(w)
    assert not torch.allclose(lora_out, base_out, atol=1e-3)
    torch.testing.assert_close(lora_out, forward(ref), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(forward(model), base_out, atol=0, rtol=0)


def test_bf16_merge_and_bit_exact_restore(tmp_path):
    model = tiny_dit().to(torch.bfloat16)
    before = snapshot(model)
    layers = random_layers(model, ORIG, seed=4)
    layers = {n: (a.bfloat16(), b.bfloat16()) for n, (a, b) in layers.items()}
    path = write_lora(tmp_path / "bf16.safetensors", "comfyui", layers)
    expected = expected_weights(before, {n: (a.float(), b.float()) for n, (a, b) in layers.items()}, STRENGTH)
    with applied_loras(model, [LoraSpec(str(path), STRENGTH)]):
        for n, w in expected.items():
            got = model.get_submodule(n).weight
            assert got.dtype == torch.bfloat16 and not torch.equal(got, before[f"{n}.weight"])
            torch.testing.assert_close(got, w.to(torch.bfloat16), atol=0, rtol=8e-3)  # one bf16 rounding
        forward(model)
    assert_same(model, before)


def test_restore_after_exception(tmp_path):
    model = tiny_dit()
    before = snapshot(model)
    path = write_lora(tmp_path / "x.safetensors", "comfyui", random_layers(model, ORIG, seed=5))
    with pytest.raises(RuntimeError, match="boom"):
        with applied_loras(model, [LoraSpec(str(path), 1.0)]):
            assert not torch.equal(model.get_submodule("proj_out").weight, before["proj_out.weight"])
            raise RuntimeError("boom")
    assert_same(model, before)


def test_strength_zero_changes_nothing(tmp_path):
    model = tiny_dit()
    before = snapshot(model)
    path = write_lora(tmp_path / "x.safetensors", "comfyui", random_layers(model, ORIG, seed=6))
    specs = [LoraSpec(str(path), 0.0), LoraSpec(str(tmp_path / "absent.safetensors"), 0.0)]  # not even read
    with applied_loras(model, specs) as reports:
        assert reports == []
        assert_same(model, before)
    assert_same(model, before)


def test_two_loras_stack_additively(tmp_path):
    model = tiny_dit()
    before = snapshot(model)
    names1 = ["blocks.0.attn1.to_q", "blocks.0.ffn.net.0.proj", "proj_out"]
    names2 = ["blocks.0.attn1.to_q", "blocks.1.attn2.to_v"]
    l1, l2 = random_layers(model, names1, seed=7), random_layers(model, names2, seed=8)
    p1 = write_lora(tmp_path / "one.safetensors", "comfyui", l1, alpha=6.0)
    p2 = write_lora(tmp_path / "two.safetensors", "kohya", l2, alpha=2.0)
    e1 = expected_weights(before, l1, 0.5, alpha=6.0)
    e2 = expected_weights(before, l2, -1.2, alpha=2.0)
    with applied_loras(model, [LoraSpec(str(p1), 0.5), LoraSpec(str(p2), -1.2)]) as reports:
        for n in set(names1) | set(names2):
            w0 = before[f"{n}.weight"]
            want = w0 + (e1[n] - w0 if n in e1 else 0) + (e2[n] - w0 if n in e2 else 0)
            torch.testing.assert_close(model.get_submodule(n).weight, want, atol=1e-6, rtol=0)
    assert [r.format for r in reports] == ["comfyui", "kohya"]
    assert_same(model, before)


def test_lora_delta_scale_and_missing_alpha():
    a, b = torch.randn(4, 8), torch.randn(6, 4)
    torch.testing.assert_close(lora_delta(LoraLayer(a, b, 8.0), 0.5), 0.5 * 2.0 * (b @ a))
    torch.testing.assert_close(
        lora_delta(LoraLayer(a.bfloat16(), b.bfloat16(), None), 2.0),
        2.0 * (b.bfloat16().float() @ a.bfloat16().float()),
    )  # no alpha: scale 1
    assert lora_delta(LoraLayer(a.bfloat16(), b.bfloat16()), 1.0).dtype == torch.float32


def test_save_read_round_trip_with_comfyui_keys(tmp_path):
    model = tiny_dit()
    layers = {
        n: LoraLayer(down=a.bfloat16(), up=b.bfloat16(), alpha=ALPHA)
        for n, (a, b) in random_layers(model, ORIG, seed=9).items()
    }
    layers["blocks.1.attn1.to_out.0"].alpha = None  # written as alpha = rank (same scale 1)
    meta = {"base_model": "Wan2.1-T2V-1.3B", "rank": RANK, "targets": ["q", "k"], "method": "edit-grpo"}
    out = save_lora(tmp_path / "sub" / "trained.safetensors", layers, metadata=meta)
    assert out == tmp_path / "sub" / "trained.safetensors"
    assert sorted(p.name for p in out.parent.iterdir()) == ["trained.safetensors"]  # no temporary left

    with safe_open(str(out), framework="pt") as f:
        keys, file_meta = set(f.keys()), f.metadata()
        alpha_t = f.get_tensor("diffusion_model.blocks.0.self_attn.q.alpha")
        alpha_rank = f.get_tensor("diffusion_model.blocks.1.self_attn.o.alpha")
    want = set()
    for n in ORIG:  # .alpha inside blocks; outside, diffusers' converter refuses .alpha: scale folded into A
        suffixes = ("lora_A.weight", "lora_B.weight") + (("alpha",) if n.startswith("blocks.") else ())
        want |= {f"diffusion_model.{ORIG[n]}.{s}" for s in suffixes}
    assert keys == want
    assert alpha_t.dtype == torch.float32 and alpha_t.dim() == 0 and alpha_t.item() == ALPHA
    assert alpha_rank.item() == RANK
    assert (
        file_meta["viva_format"] == "viva-lora-v1"
        and file_meta["format"] == "pt"
        and file_meta["base_model"] == "Wan2.1-T2V-1.3B"
    )
    assert json.loads(file_meta["rank"]) == RANK and json.loads(file_meta["targets"]) == ["q", "k"]

    back, fmt, back_meta = read_lora(out)
    assert fmt == "comfyui" and back_meta["method"] == "edit-grpo"
    assert back.keys() == layers.keys()
    for n, layer in layers.items():
        assert torch.equal(back[n].up, layer.up)
        if n.startswith("blocks."):
            assert torch.equal(back[n].down, layer.down)
            assert back[n].alpha == (RANK if layer.alpha is None else layer.alpha)
        else:
            assert back[n].alpha is None
            torch.testing.assert_close(back[n].down.float(), (layer.down.float() * ALPHA / RANK).bfloat16().float())
        torch.testing.assert_close(lora_delta(back[n], 1.0), lora_delta(layer, 1.0), atol=2e-3, rtol=1e-2)


def test_save_refuses_names_without_wan_equivalent(tmp_path):
    layer = LoraLayer(torch.zeros(2, 32), torch.zeros(32, 2), 2.0)
    with pytest.raises(LoraError, match="blocks.0.norm2"):
        save_lora(tmp_path / "x.safetensors", {"blocks.0.norm2": layer})
    with pytest.raises(LoraError, match="safetensors"):
        save_lora(tmp_path / "x.pt", {"blocks.0.attn1.to_q": layer})
    assert list(tmp_path.iterdir()) == []


def test_diffusers_reads_our_file(tmp_path):
    from diffusers import WanPipeline

    model = tiny_dit()
    raw = random_layers(model, ORIG, seed=10)
    path = save_lora(tmp_path / "ours.safetensors", {n: LoraLayer(a, b, ALPHA) for n, (a, b) in raw.items()})
    sd = WanPipeline.lora_state_dict(str(path))  # runs _convert_non_diffusers_wan_lora_to_diffusers
    assert set(sd) == {f"transformer.{n}.lora_{x}.weight" for n in ORIG for x in "AB"}
    for n, (a, b) in raw.items():  # diffusers folds alpha/r into A and B
        got = sd[f"transformer.{n}.lora_B.weight"] @ sd[f"transformer.{n}.lora_A.weight"]
        torch.testing.assert_close(got, ALPHA / RANK * (b @ a), atol=1e-6, rtol=1e-5)

    # and the model diffusers builds from it (PEFT layers, not merged) computes what our merge computes
    peft_model = copy.deepcopy(model)
    peft_model.load_lora_adapter(sd, prefix="transformer", adapter_name="viva")
    with applied_loras(model, [LoraSpec(str(path), 1.0)]):
        ours = forward(model)
    torch.testing.assert_close(forward(peft_model), ours, atol=1e-5, rtol=1e-5)


def test_name_table_agrees_with_diffusers_single_file_converter():
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    ckpt, want = {}, set()
    for orig, diff in WAN_NAME_TABLE:
        for i in (0, 1, 13):
            ckpt[f"model.diffusion_model.{orig.format(i=i)}.weight"] = torch.zeros(1)
            want.add(f"{diff.format(i=i)}.weight")
            assert wan_to_diffusers(orig.format(i=i)) == diff.format(i=i)
            assert diffusers_to_wan(diff.format(i=i)) == orig.format(i=i)
    assert set(convert_wan_transformer_to_diffusers(ckpt)) == want
    for orig, diff in WAN_NAME_TABLE:  # the two name sets do not overlap, so reading either is unambiguous
        assert wan_to_diffusers(diff.format(i=0)) is None and diffusers_to_wan(orig.format(i=0)) is None
    for n, o in ORIG.items():
        assert diffusers_to_wan(n) == o
    # every Linear of a T2V and an I2V model has an original name (so save_lora can write any of them)
    i2v = tiny_dit(image_dim=24, added_kv_proj_dim=32)
    for m in (tiny_dit(), i2v):
        for n in lora_target_names(m, blocks_only=False):
            assert diffusers_to_wan(n) is not None, n


def test_kohya_names_resolved_against_known_modules(tmp_path):
    model = tiny_dit(image_dim=24, added_kv_proj_dim=32)
    t = {}
    for kohya, shape_in in [
        ("blocks_0_cross_attn_k", 32),
        ("blocks_0_cross_attn_k_img", 32),
        ("blocks_1_ffn_2", 64),
        ("img_emb_proj_1", 24),
        ("blocks_0_self_attn_norm_q", 32),
    ]:
        t[f"lora_unet_{kohya}.lora_down.weight"] = torch.randn(2, shape_in)
        t[f"lora_unet_{kohya}.lora_up.weight"] = torch.randn(32, 2)
    save_file(t, str(tmp_path / "k.safetensors"))
    layers, fmt, _ = read_lora(tmp_path / "k.safetensors")
    assert fmt == "kohya"
    assert set(layers) == {
        "blocks.0.attn2.to_k",
        "blocks.0.attn2.add_k_proj",
        "blocks.1.ffn.net.2",
        "condition_embedder.image_embedder.ff.net.0.proj",
    }
    rep = key_report(tmp_path / "k.safetensors", model)
    assert "lora_unet_blocks_0_self_attn_norm_q" in rep.unmatched  # no such Linear: reported, not guessed
    assert any(s.startswith("condition_embedder.image_embedder.ff.net.0.proj:") for s in rep.shape_mismatch)


@pytest.mark.parametrize(
    "key,fmt",
    [
        ("blocks.0.self_attn.q.lora_A.default.weight", "peft"),  # DiffSynth: original names, PEFT adapter
        ("transformer.blocks.0.self_attn.q.lora_A.weight", "diffusers"),  # original names behind transformer.
        ("diffusion_model.blocks.0.attn1.to_q.lora_A.weight", "comfyui"),  # diffusers names behind diffusion_model.
        ("lycoris_blocks_0_self_attn_q.lora_A.weight", "kohya"),
    ],
)
def test_other_key_styles_resolve_to_the_same_module(tmp_path, key, fmt):
    path = tmp_path / "s.safetensors"
    save_file({key: torch.randn(2, 32), key.replace("lora_A", "lora_B"): torch.randn(32, 2)}, str(path))
    layers, got_fmt, _ = read_lora(path)
    assert list(layers) == ["blocks.0.attn1.to_q"] and got_fmt == fmt and layers["blocks.0.attn1.to_q"].rank == 2


def test_lora_for_another_model_raises_with_file_name(tmp_path):
    model = tiny_dit()
    before = snapshot(model)
    path = tmp_path / "flux_style.safetensors"
    save_file(
        {
            "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.randn(4, 32),
            "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.randn(96, 4),
            "lora_unet_double_blocks_0_img_attn_qkv.alpha": torch.tensor(4.0),
        },
        str(path),
    )
    with pytest.raises(LoraError, match=r"flux_style\.safetensors: matches none of the model's 26 LoRA-able") as e:
        with applied_loras(model, [LoraSpec(str(path))]):
            pass
    assert "format kohya" in str(e.value) and "double_blocks_0_img_attn_qkv" in str(e.value)
    assert_same(model, before)


def test_wrong_shape_raises_before_touching_weights(tmp_path):
    model = tiny_dit()
    before = snapshot(model)
    good = write_lora(tmp_path / "good.safetensors", "comfyui", random_layers(model, ORIG, seed=11))
    layers = random_layers(
        model, ["blocks.0.attn1.to_q", "blocks.0.ffn.net.0.proj"], seed=12, in_override={"blocks.0.ffn.net.0.proj": 48}
    )
    bad = write_lora(tmp_path / "bad.safetensors", "comfyui", layers)
    with pytest.raises(LoraError, match=r"bad\.safetensors") as e:
        with applied_loras(model, [LoraSpec(str(good)), LoraSpec(str(bad))]):
            pass
    msg = str(e.value)
    assert "blocks.0.ffn.net.0.proj" in msg and "[64, 32]" in msg and "[4, 48]" in msg
    assert_same(model, before)
    rep = key_report(bad, model)
    assert rep.matched == ["blocks.0.attn1.to_q"] and len(rep.shape_mismatch) == 1


def test_pickle_file_refused(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"diffusion_model.blocks.0.self_attn.q.lora_A.weight": torch.zeros(2, 32)}, path)
    with pytest.raises(LoraError, match="pickle"):
        read_lora(path)
    model = tiny_dit()
    before = snapshot(model)
    with pytest.raises(LoraError, match=r"old\.pt"):
        with applied_loras(model, [LoraSpec(str(path))]):
            pass
    assert_same(model, before)


def test_key_report_counts_and_partial_apply(tmp_path):
    model = tiny_dit()
    before = snapshot(model)
    good = random_layers(model, ["blocks.0.attn1.to_q", "blocks.1.ffn.net.2", "proj_out"], seed=13)
    t = {}
    for n, (a, b) in good.items():
        t |= {
            f"diffusion_model.{ORIG[n]}.lora_A.weight": a,
            f"diffusion_model.{ORIG[n]}.lora_B.weight": b,
            f"diffusion_model.{ORIG[n]}.alpha": torch.tensor(ALPHA),
        }
    for k in ("blocks.0.cross_attn.k_img", "patch_embedding"):  # I2V-only module; module with no Wan Linear
        t |= {
            f"diffusion_model.{k}.lora_A.weight": torch.randn(RANK, 32),
            f"diffusion_model.{k}.lora_B.weight": torch.randn(32, RANK),
            f"diffusion_model.{k}.alpha": torch.tensor(ALPHA),
        }
    t["diffusion_model.blocks.0.norm3.diff"] = torch.randn(32)
    t["diffusion_model.blocks.0.self_attn.q.diff_b"] = torch.randn(32)
    t["diffusion_model.blocks.1.ffn.0.lora_A.weight"] = torch.randn(RANK, 32)  # half a pair
    path = tmp_path / "wan_style.safetensors"
    save_file(t, str(path))

    rep = key_report(path, model)
    assert rep.format == "comfyui" and rep.modules == 5
    assert sorted(rep.matched) == sorted(good) and rep.rank == RANK and rep.alpha == ALPHA
    assert sorted(rep.unmatched) == sorted(
        [
            "diffusion_model.blocks.0.cross_attn.k_img",
            "diffusion_model.patch_embedding",
            "diffusion_model.blocks.0.norm3.diff",
            "diffusion_model.blocks.0.self_attn.q.diff_b",
            "diffusion_model.blocks.1.ffn.0.lora_A.weight",
        ]
    )
    line = rep.summary()
    assert line.startswith("wan_style.safetensors: comfyui format, 3/5 modules matched, rank 4, alpha 6; not applied: ")
    assert "(+1 more)" in line and "\n" not in line

    expected = expected_weights(before, good, 1.0)
    with applied_loras(model, [LoraSpec(str(path))]) as (applied_rep,):
        for n, w in expected.items():
            torch.testing.assert_close(model.get_submodule(n).weight, w, atol=1e-6, rtol=0)
        untouched = "blocks.1.ffn.net.0.proj"  # only half a pair in the file
        assert torch.equal(model.get_submodule(untouched).weight, before[f"{untouched}.weight"])
    assert applied_rep.unmatched == rep.unmatched
    assert_same(model, before)


def test_read_cache_follows_file_changes(tmp_path):
    model = tiny_dit()
    path = write_lora(tmp_path / "c.safetensors", "comfyui", random_layers(model, ["proj_out"], seed=14))
    first, _, _ = read_lora(path)
    again, _, _ = read_lora(path)
    assert again["proj_out"].down is first["proj_out"].down  # cached
    write_lora(path, "comfyui", random_layers(model, ["proj_out"], seed=15, rank=8))
    changed, _, _ = read_lora(path)
    assert changed["proj_out"].rank == 8


def test_target_names_and_spec_validation():
    model = tiny_dit()
    names = lora_target_names(model)
    assert len(names) == 20 and all(n.startswith("blocks.") for n in names)
    assert "blocks.1.attn1.to_out.0" in names and "blocks.0.ffn.net.0.proj" in names
    assert len(lora_target_names(model, blocks_only=False)) == 26
    with pytest.raises(InputError):
        LoraSpec("x.safetensors", float("nan"))


# ---------------------------------------------------------------------------------------------------------
# fp8 storage: LoRAs run unmerged; the reference is the same LoRA merged by formula into fp32 weights
# ---------------------------------------------------------------------------------------------------------
FP8 = getattr(torch, "float8_e4m3fn", None)
needs_fp8 = pytest.mark.skipif(FP8 is None, reason="this torch has no float8_e4m3fn")


def fp8_dit_and_fp32_twin(seed: int = 0):
    """A tiny DiT with fp8 weight storage (fp32 compute) and an fp32 copy holding the same (dequantized)
    values, so the two differ only in how a LoRA is applied."""
    fp8 = tiny_dit(seed)
    fp8.enable_layerwise_casting(storage_dtype=FP8, compute_dtype=torch.float32)
    twin = tiny_dit(seed)
    with torch.no_grad():
        for (name, p), (name2, q) in zip(twin.named_parameters(), fp8.named_parameters()):
            assert name == name2
            p.copy_(q.float())
    return fp8, twin


def small_layers(model, names, seed: int, rel: float = 0.01, rank: int = RANK):
    """{name: (A, B)} whose delta B@A has std ``rel`` x the weight's std (alpha = rank: scale 1)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for n in names:
        w = model.get_submodule(n).weight.float()
        a, b = torch.randn(rank, w.shape[1], generator=g), torch.randn(w.shape[0], rank, generator=g)
        k = (rel * w.std() / (b @ a).std()).sqrt()
        out[n] = (a * k, b * k)
    return out


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


@needs_fp8
def test_fp8_small_lora_keeps_its_effect_and_restores_bit_exact(tmp_path):
    model, twin = fp8_dit_and_fp32_twin()
    fp8_names = [n for n in lora_target_names(model, blocks_only=False) if model.get_submodule(n).weight.dtype == FP8]
    merged_names = ["condition_embedder.time_proj", "proj_out"]  # diffusers keeps these out of fp8: merged
    assert len(fp8_names) == 20 and all(model.get_submodule(n).weight.dtype == torch.float32 for n in merged_names)
    l1 = small_layers(twin, fp8_names + merged_names, seed=21)
    l2 = small_layers(twin, fp8_names[::3], seed=22)
    p1 = write_lora(tmp_path / "one.safetensors", "diffusers_bare", l1, alpha=RANK * 3.0)  # scale 3
    p2 = write_lora(tmp_path / "two.safetensors", "diffusers_bare", l2, alpha=RANK / 2)  # scale 0.5
    specs = [LoraSpec(str(p1), 0.25), LoraSpec(str(p2), -0.8)]  # net scales 0.75 and -0.4

    before, base_out = snapshot(model), forward(model)
    with applied_loras(model, specs) as reports:
        lora_out = forward(model)
        for n in fp8_names:  # the fp8 weights are never written
            assert torch.equal(model.get_submodule(n).weight.view(torch.uint8), before[f"{n}.weight"].view(torch.uint8))
    assert [len(r.matched) for r in reports] == [22, 7]
    after_out = forward(model)
    assert after_out.dtype == base_out.dtype and torch.equal(after_out, base_out)
    for k, v in before.items():  # bit-exact restore (fp8 compared as bytes)
        got = model.state_dict()[k]
        assert got.dtype == v.dtype and torch.equal(got.view(torch.uint8), v.view(torch.uint8)), k
    assert all(not m._forward_hooks for m in model.modules() if isinstance(m, torch.nn.Linear))

    ref_base = forward(twin)
    torch.testing.assert_close(base_out, ref_base, atol=1e-5, rtol=1e-5)  # the twin really is the same model
    with torch.no_grad():  # independent reference: W + 0.75·B1@A1 - 0.4·B2@A2 written into the fp32 twin
        for n, (a, b) in l1.items():
            twin.get_submodule(n).weight.add_(0.75 * (b @ a))
        for n, (a, b) in l2.items():
            twin.get_submodule(n).weight.add_(-0.4 * (b @ a))
    ref_effect = forward(twin) - ref_base
    effect = lora_out - base_out
    assert 0.003 < float(ref_effect.norm() / ref_base.norm()) < 0.03  # a small LoRA: ~1% of the output
    assert cosine(effect, ref_effect) >= 0.99
    torch.testing.assert_close(effect, ref_effect, atol=2e-5, rtol=0)


@needs_fp8
def test_fp8_side_path_is_the_exact_low_rank_formula_in_compute_dtype(tmp_path):
    """One Linear: fp8 weight, bf16 compute; y = x W8^T + b + s (x A^T) B^T, against a float64 evaluation."""
    from diffusers.hooks import apply_layerwise_casting

    torch.manual_seed(3)
    holder = torch.nn.Module()
    holder.lin = torch.nn.Linear(48, 40)
    apply_layerwise_casting(holder.lin, storage_dtype=FP8, compute_dtype=torch.bfloat16)
    w8, b8 = holder.lin.weight.double(), holder.lin.bias.double()
    a, b = torch.randn(4, 48), torch.randn(40, 4)
    path = tmp_path / "lin.safetensors"
    save_file({"lin.lora_A.weight": a, "lin.lora_B.weight": b, "lin.alpha": torch.tensor(2.0)}, str(path))
    x = torch.randn(5, 48).bfloat16()
    with applied_loras(holder, [LoraSpec(str(path), 1.5)]):
        y = holder.lin(x)
    assert y.dtype == torch.bfloat16
    want = x.double() @ w8.T + b8 + 1.5 * (2.0 / 4) * (x.double() @ a.double().T) @ b.double().T
    torch.testing.assert_close(y.double(), want, atol=0.05, rtol=0.02)  # bf16 rounding of a few steps
    torch.testing.assert_close(
        holder.lin(x), x @ holder.lin.weight.bfloat16().T + holder.lin.bias.bfloat16(), atol=0.05, rtol=0.02
    )  # off again


@needs_fp8
def test_fp8_permanent_hooks_from_editor_options_and_exception_restore(tmp_path):
    from viva_core.editor import EditorOptions, configure_dit
    from viva_core.lora import install_fp8_lora_hooks

    model, twin = fp8_dit_and_fp32_twin(seed=1)
    model2 = tiny_dit(seed=1)
    configure_dit(model2, EditorOptions(fp8_storage=True), torch.float32)  # the editor's fp8 path
    for m in (model, model2):
        assert install_fp8_lora_hooks(m) == 20 and install_fp8_lora_hooks(m) == 20  # idempotent
        hooks = {n: len(m._forward_hooks) for n, m in m.named_modules() if isinstance(m, torch.nn.Linear)}
        assert sorted(set(hooks.values())) == [0, 1]
    torch.testing.assert_close(forward(model2), forward(model), atol=0, rtol=0)
    layers = small_layers(twin, ["blocks.0.attn1.to_q", "proj_out"], seed=23)
    path = write_lora(tmp_path / "h.safetensors", "diffusers_bare", layers, alpha=RANK)
    base = forward(model)
    with applied_loras(model, [LoraSpec(str(path), 1.0)]):
        with_hooks = forward(model)
    with pytest.raises(RuntimeError, match="boom"):
        with applied_loras(model, [LoraSpec(str(path), 1.0)]):
            raise RuntimeError("boom")
    assert torch.equal(forward(model), base)
    assert all(len(m._forward_hooks) == hooks[n] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear))
    with torch.no_grad():
        for n, (a, b) in layers.items():
            twin.get_submodule(n).weight.add_(b @ a)
    torch.testing.assert_close(with_hooks, forward(twin), atol=2e-5, rtol=1e-5)


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_written_lora_gets_umask_mode_not_0600(tmp_path):
    """safetensors writes through its own 0600 temp file; our atomic write gives the plain-write mode."""
    layers = {"proj_out": LoraLayer(torch.randn(2, 32), torch.randn(64, 2), 2.0)}
    old = os.umask(0o022)
    try:
        assert stat.S_IMODE(save_lora(tmp_path / "a.safetensors", layers).stat().st_mode) == 0o644
        os.umask(0o027)
        assert stat.S_IMODE(save_lora(tmp_path / "b.safetensors", layers).stat().st_mode) == 0o640
        (tmp_path / "c.safetensors").write_bytes(b"")
        os.chmod(tmp_path / "c.safetensors", 0o600)  # overwriting keeps an existing file's mode
        assert stat.S_IMODE(save_lora(tmp_path / "c.safetensors", layers).stat().st_mode) == 0o600
    finally:
        os.umask(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "b.safetensors", "c.safetensors"]


@needs_fp8
@pytest.mark.parametrize("permanent", [False, True])
def test_fp8_nested_loras_stack_and_unwind(tmp_path, permanent):
    """An applied_loras inside another adds to it (as merges do) and leaves the outer one in place on exit."""
    from viva_core.lora import install_fp8_lora_hooks

    model, twin = fp8_dit_and_fp32_twin(seed=2)
    if permanent:
        install_fp8_lora_hooks(model)
    names = ["blocks.0.attn1.to_q", "blocks.1.ffn.net.2", "proj_out"]  # two fp8 layers, one merged
    l1, l2 = small_layers(twin, names, seed=31), small_layers(twin, names[:2], seed=32)
    p1 = write_lora(tmp_path / "one.safetensors", "diffusers_bare", l1, alpha=RANK)
    p2 = write_lora(tmp_path / "two.safetensors", "diffusers_bare", l2, alpha=RANK)
    ref = {}
    base = forward(twin)
    with torch.no_grad():
        for n, (a, b) in l1.items():
            twin.get_submodule(n).weight.add_(b @ a)
        ref["outer"] = forward(twin)
        for n, (a, b) in l2.items():
            twin.get_submodule(n).weight.add_(-2.0 * (b @ a))
        ref["both"] = forward(twin)
    before = forward(model)
    hooks = [len(m._forward_hooks) for m in model.modules()]
    with applied_loras(model, [LoraSpec(str(p1), 1.0)]):
        torch.testing.assert_close(forward(model), ref["outer"], atol=2e-5, rtol=1e-5)
        with applied_loras(model, [LoraSpec(str(p2), -2.0)]):
            torch.testing.assert_close(forward(model), ref["both"], atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(forward(model), ref["outer"], atol=2e-5, rtol=1e-5)
    assert torch.equal(forward(model), before) and [len(m._forward_hooks) for m in model.modules()] == hooks
    torch.testing.assert_close(before, base, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "meta, want",
    [
        ({"rollout_cfg": 1.0}, 1.0),  # save_lora JSON-encodes it: "1.0"
        ({"rollout_cfg": "5"}, 5.0),
        ({"rollout_cfg": None}, None),  # an SFT LoRA: "null"
        ({"rollout_cfg": "high"}, None),  # not JSON
        ({"rollout_cfg": "true"}, None),
        ({"rollout_cfg": "NaN"}, None),
        ({}, None),
    ],
)
def test_trained_cfg_reads_the_rollout_guidance_from_the_metadata(tmp_path, meta, want):
    layers = {n: LoraLayer(down=a, up=b) for n, (a, b) in random_layers(tiny_dit(), ORIG, seed=2).items()}
    path = save_lora(tmp_path / "l.safetensors", layers, metadata={"method": "grpo", **meta})
    assert trained_cfg(path) == want


def test_guidance_notes_name_each_lora_trained_at_another_cfg(tmp_path):
    """An Edit-GRPO LoRA trained on unguided rollouts overshoots under CFG 5 (docs/small_models.md, section 61):
    the note names the file and the scale to use; the same scale, strength 0 or an unrecorded one give none."""
    layers = {n: LoraLayer(down=a, up=b) for n, (a, b) in random_layers(tiny_dit(), ORIG, seed=3).items()}
    grpo = save_lora(tmp_path / "grpo.safetensors", layers, metadata={"method": "grpo", "rollout_cfg": 1.0})
    sft = save_lora(tmp_path / "sft.safetensors", layers, metadata={"method": "sft", "rollout_cfg": None})
    stack = [LoraSpec(str(grpo), 1.0), LoraSpec(str(sft), 1.0)]
    (note,) = guidance_notes(stack, 5.0)
    assert note.startswith("grpo.safetensors:") and "CFG 1" in note and "CFG 5" in note and "cfg to 1" in note
    assert guidance_notes(stack, 1.0) == []
    assert guidance_notes([LoraSpec(str(grpo), 0.0)], 5.0) == []


@pytest.mark.parametrize(
    "meta, want",
    [
        ({"rollout_cfg": 1.0}, 1.0),  # written before kl_beta was recorded: unanchored, as grpo_v13
        ({"rollout_cfg": 1.0, "kl_beta": 0.0}, 1.0),
        ({"rollout_cfg": 1.0, "kl_beta": 0.05}, None),  # anchored, as grpo_v14: gains at the base's CFG 5
        ({"rollout_cfg": 1.0, "kl_beta": "junk"}, 1.0),  # unreadable anchor: the rollouts' CFG, as before
        ({"rollout_cfg": None, "kl_beta": None}, None),  # SFT
    ],
)
def test_an_anchored_grpo_lora_binds_no_cfg(tmp_path, meta, want):
    """A KL-anchored Edit-GRPO LoRA moved little, and CFG 5 turns that move into its gain (grpo_v14: held-out EA
    0.357 at CFG 5, 0.301 at CFG 1; docs/small_models.md, section 63): no CFG is forced on it and no note says to
    change it. An unanchored one (grpo_v13) overshoots at CFG 5: `viva edit` samples it at its rollouts' CFG."""
    layers = {n: LoraLayer(down=a, up=b) for n, (a, b) in random_layers(tiny_dit(), ORIG, seed=4).items()}
    path = save_lora(tmp_path / "l.safetensors", layers, metadata={"method": "grpo", **meta})
    assert sampling_cfg(path) == want
    assert stack_cfg([LoraSpec(str(path), 1.0)]) == want
    assert bool(guidance_notes([LoraSpec(str(path), 1.0)], 5.0)) == (want is not None)
