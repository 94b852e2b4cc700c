"""viva_core.compat: the one home of library internals. Each accessor works on the installed versions, falls back
when the private spelling is gone, and otherwise fails with an error naming the package and version to install."""

from __future__ import annotations

import logging
import sys

import pytest
import torch

from viva_core import compat
from viva_core.compat import DependencyError


def _hide(monkeypatch, module: str) -> None:
    """Make `from <module> import ...` fail, as in a release that moved the module."""
    monkeypatch.setitem(sys.modules, module, None)


def test_image_text_to_text_model_types_from_the_private_table_or_the_public_mapping(monkeypatch):
    assert "qwen2_5_vl" in compat.image_text_to_text_model_types()
    _hide(monkeypatch, "transformers.models.auto.modeling_auto")  # home of the private table and the public mapping
    assert compat.image_text_to_text_model_types() is None  # unknown: the folder check is skipped, loading reports


def test_processor_class_for_falls_back_to_the_naming_convention(monkeypatch):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLProcessor

    assert compat.processor_class_for(Qwen2_5_VLConfig()) is Qwen2_5_VLProcessor
    _hide(monkeypatch, "transformers.models.auto.processing_auto")
    assert compat.processor_class_for(Qwen2_5_VLConfig()) is Qwen2_5_VLProcessor

    class OddConfig:
        pass

    with pytest.raises(DependencyError, match=r"transformers >= 5\.18"):
        compat.processor_class_for(OddConfig())


def test_pil_image_processor_and_attention_implementation():
    cls = compat.qwen2_vl_pil_image_processor()
    assert cls.__name__ == "Qwen2VLImageProcessorPil"
    from transformers import Qwen2_5_VLConfig

    vision = Qwen2_5_VLConfig().vision_config
    compat.set_attn_implementation(vision, "sdpa")
    assert compat.attn_implementation(vision) == "sdpa"
    assert compat.attn_implementation(object()) is None
    with pytest.raises(DependencyError, match="transformers >= "):
        compat.set_attn_implementation(object(), "sdpa")


def test_attention_backend_names(monkeypatch, caplog):
    assert compat.diffusers_attention_backend("sdpa") == "native"
    assert compat.diffusers_attention_backend("sdpa_cudnn") == "_native_cudnn"
    # A diffusers without the private kernel names: plain SDPA, with a warning; flash/sage: a clear error.
    monkeypatch.setattr(compat, "_diffusers_backend_names", lambda: frozenset({"native"}))
    with caplog.at_level(logging.WARNING, logger="viva_core.compat"):
        assert compat.diffusers_attention_backend("sdpa_flash") == "native"
    assert "_native_flash" in caplog.text
    with pytest.raises(DependencyError, match=r"attention 'sage'.*diffusers >= 0\.40"):
        compat.diffusers_attention_backend("sage")
    with pytest.raises(DependencyError, match=f"diffusers >= {compat.MIN_DIFFUSERS}"):
        compat.set_attention_backend(torch.nn.Linear(1, 1), "sdpa")  # no set_attention_backend method


def test_keep_in_fp32_modules_falls_back_to_wans_list():
    from diffusers import WanTransformer3DModel

    assert {"time_embedder", "norm2"} <= compat.keep_in_fp32_modules(WanTransformer3DModel)

    class WanTransformer3DModel(torch.nn.Module):  # a release without the private class attribute
        pass

    assert compat.keep_in_fp32_modules(WanTransformer3DModel()) == frozenset(compat._WAN_KEEP_IN_FP32)
    assert compat.keep_in_fp32_modules(torch.nn.Linear(1, 1)) == frozenset()


def test_wan_converters_and_fully_shard(monkeypatch):
    assert callable(compat.wan_single_file_converter("transformer"))
    assert callable(compat.wan_single_file_converter("vae"))
    with pytest.raises(DependencyError, match=f"diffusers >= {compat.MIN_DIFFUSERS}"):
        compat.wan_single_file_converter("refiner")
    if torch.distributed.is_available():
        assert callable(compat.fully_shard())
    _hide(monkeypatch, "torch.distributed.fsdp")
    with pytest.raises(DependencyError, match=r"torch >= 2\.6 \(installed: "):
        compat.fully_shard()


def test_the_floors_named_in_errors_are_pyprojects():
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    from pathlib import Path

    deps = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"]
    for package, floor in (
        ("torch", compat.MIN_TORCH),
        ("transformers", compat.MIN_TRANSFORMERS),
        ("diffusers", compat.MIN_DIFFUSERS),
    ):
        assert f"{package}>={floor}" in deps["dependencies"]


def test_flash4_attention_runs_the_installed_fa4_function_in_the_dit(fake_flash_attn_4):
    from tiny_editor import tiny_transformer

    model = tiny_transformer().eval()
    x = torch.randn(1, 32, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    text = torch.randn(1, 7, model.config.text_dim, generator=torch.Generator().manual_seed(1))
    t = torch.full((1,), 500.0)

    def forward():
        with torch.no_grad():
            return model(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)[0]

    compat.set_attention_backend(model, "sdpa")
    reference = forward()
    compat.set_attention_backend(model, "flash4")  # no `kernels` package, no Hub: the installed function
    out = forward()
    heads, dim = model.config.num_attention_heads, model.config.attention_head_dim
    tokens = 3 * 4 * 4
    per_block = [(1, tokens, heads, dim), (1, tokens, heads, dim)]  # self-attention, then cross-attention
    assert fake_flash_attn_4 == per_block * model.config.num_layers
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
    compat.set_attention_backend(model, "sdpa")  # and back: SDPA again, FA4 not called
    torch.testing.assert_close(forward(), reference, rtol=0, atol=0)
    assert len(fake_flash_attn_4) == 2 * model.config.num_layers


def test_flash4_attention_without_the_package_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn.cute", None)
    from tiny_editor import tiny_transformer

    with pytest.raises(DependencyError, match=r"pip install flash-attn-4.*Hopper or Blackwell"):
        compat.set_attention_backend(tiny_transformer(), "flash4")


def test_flash4_attention_is_one_custom_op_under_compile_with_gradients(fake_flash_attn_4):
    """FA4 runs as torch.ops.viva.flash_attn_4 (and its backward op), which dynamo keeps in one graph (fullgraph: a
    graph break would raise), forward and backward; the scale passes through; the gradients are attention's."""
    fa4 = compat._flash_attn_4_func()
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 6, 2, 8, generator=g) for _ in "qkv")

    def sdpa(q, k, v, **kw):
        return torch.nn.functional.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v)), **kw)

    compiled = torch.compile(lambda q, k, v: fa4(q, k, v) * 2, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(q, k, v), 2 * sdpa(q, k, v).transpose(1, 2), rtol=1e-5, atol=1e-5)
        scaled = sdpa(q, k, v, scale=0.5).transpose(1, 2)
        torch.testing.assert_close(fa4(q, k, v, softmax_scale=0.5), scaled, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="non-causal"):
        fa4(q, k, v, causal=True)
    qr, kr, vr = (x.clone().requires_grad_(True) for x in (q, k, v))
    sdpa(qr, kr, vr).square().sum().backward()
    for run, factor in ((fa4, 1), (compiled, 4)):  # compiled: (2 a)^2, four times the loss and its gradients
        qg, kg, vg = (x.clone().requires_grad_(True) for x in (q, k, v))
        run(qg, kg, vg).square().sum().backward()
        for got, want in ((qg, qr), (kg, kr), (vg, vr)):
            torch.testing.assert_close(got.grad, factor * want.grad, rtol=1e-5, atol=1e-5)
