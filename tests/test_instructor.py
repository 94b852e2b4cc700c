"""VLM instructor: grounded tokens through the token refiner, caching, refiner files, rewrite mode."""

from __future__ import annotations

import functools
import json
import logging
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from safetensors import safe_open
from tiny_vlm import build_tiny_vlm

import viva_core.instructor as instructor_mod
from viva_core.errors import ModelLoadError
from viva_core.instructor import Instructor, RefinerConfig, TokenRefiner, load_refiner, save_refiner
from viva_core.vlm import build_inputs, load_vlm, to_pil_image

OUT_DIM = 64  # the tiny DiT's text_dim


@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    return load_vlm(build_tiny_vlm(tmp_path_factory.mktemp("instructor") / "vlm"), dtype="fp32", device="cpu")


@pytest.fixture
def refiner():
    torch.manual_seed(0)
    return TokenRefiner(RefinerConfig(in_dim=32, out_dim=OUT_DIM, hidden_dim=32, depth=2, heads=4)).eval()


@pytest.fixture(autouse=True)
def fresh_cache():
    instructor_mod._CACHES.clear()
    yield
    instructor_mod._CACHES.clear()


@pytest.fixture
def frames():
    g = torch.Generator().manual_seed(3)
    return torch.rand(3, 56, 56, 3, generator=g), torch.rand(56, 56, 3, generator=g)


@pytest.fixture
def forward_count(vlm, monkeypatch):
    calls = []
    real = vlm.model.forward

    @functools.wraps(real)  # generate() inspects the forward signature
    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(vlm.model, "forward", counting)
    return calls


def test_tokens_shape_is_the_whole_prompt(vlm, refiner, frames):
    clip, _ = frames
    tokens = Instructor(vlm, refiner).encode("make the sky red", clip[0])
    prompt = Instructor.messages("make the sky red", to_pil_image(clip[0]), None)
    length = build_inputs(vlm, prompt)["input_ids"].shape[1]
    assert tokens.shape == (1, length, OUT_DIM) and tokens.dtype == torch.float32
    assert torch.isfinite(tokens).all()


def test_hidden_states_are_the_last_layer(vlm, frames):
    clip, _ = frames
    inst = Instructor(vlm)
    hidden = inst.hidden_states("make the sky red", clip)  # a whole clip: its first frame is used
    inputs = build_inputs(vlm, Instructor.messages("make the sky red", to_pil_image(clip[0]), None))
    with torch.no_grad():
        expected = vlm.model(**inputs, output_hidden_states=True).hidden_states[-1]
    torch.testing.assert_close(hidden, expected.float())


def test_deterministic_and_sensitive_to_inputs(vlm, refiner, frames):
    clip, ref = frames
    inst = Instructor(vlm, refiner)
    a = inst.encode("make the sky red", clip[0])
    instructor_mod._CACHES.clear()
    b = Instructor(vlm, refiner).encode("make the sky red", clip[0])
    assert torch.equal(a, b)
    with_ref = inst.encode("make the sky red", clip[0], ref)
    assert with_ref.shape != a.shape or not torch.allclose(with_ref, a)
    other = inst.encode("turn the car blue", clip[0])
    assert other.shape != a.shape or not torch.allclose(other, a)
    other_frame = inst.encode("make the sky red", clip[1])
    assert not torch.allclose(other_frame, a)


def test_cache_hit_skips_the_vlm(vlm, refiner, frames, forward_count):
    clip, ref = frames
    first = Instructor(vlm, refiner).encode("add a dog", clip[0], ref)
    assert len(forward_count) == 1
    first.add_(1.0)  # the caller's copy; must not touch the cache
    again = Instructor(vlm, refiner).encode("add a dog", clip[0].clone(), ref.clone())  # new object, same bytes
    assert len(forward_count) == 1
    torch.testing.assert_close(again + 1.0, first)
    Instructor(vlm, refiner).encode("add a cat", clip[0], ref)
    assert len(forward_count) == 2


def test_encode_needs_a_refiner(vlm, frames):
    with pytest.raises(ModelLoadError, match="rewrite"):
        Instructor(vlm, None).encode("make the sky red", frames[0][0])


def test_refiner_in_dim_must_match_the_vlm(vlm):
    wrong = TokenRefiner(RefinerConfig(in_dim=48, out_dim=OUT_DIM, hidden_dim=32, depth=1, heads=4))
    with pytest.raises(ModelLoadError, match="48") as err:
        Instructor(vlm, wrong)
    assert "32" in str(err.value)


def test_refiner_save_load_round_trip(refiner, tmp_path):
    path = save_refiner(tmp_path / "sub" / "refiner.safetensors", refiner, {"method": "sft", "steps": 12})
    assert sorted(p.name for p in path.parent.iterdir()) == ["refiner.safetensors"]  # no temp file left
    loaded = load_refiner(path, in_dim=32)
    assert loaded.config == refiner.config
    for (k1, v1), (k2, v2) in zip(refiner.state_dict().items(), loaded.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    x = torch.randn(1, 7, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(refiner(x), loaded(x))
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert json.loads(meta["config"]) == {"in_dim": 32, "out_dim": OUT_DIM, "hidden_dim": 32, "depth": 2, "heads": 4}
    assert meta["method"] == "sft" and meta["steps"] == "12" and meta["format"] == "viva-token-refiner"


def test_refiner_in_dim_checked_on_load(refiner, tmp_path):
    path = save_refiner(tmp_path / "refiner.safetensors", refiner)
    with pytest.raises(ModelLoadError) as err:
        load_refiner(path, in_dim=2048)
    assert "32" in str(err.value) and "2048" in str(err.value)


def test_missing_refiner_message(tmp_path):
    with pytest.raises(ModelLoadError) as err:
        load_refiner(tmp_path / "nope.safetensors")
    msg = str(err.value)
    assert "nope.safetensors" in msg and "viva train" in msg and "sft" in msg and '"rewrite"' in msg


def test_refiner_shapes():
    r = TokenRefiner(RefinerConfig(in_dim=16, out_dim=24, hidden_dim=32, depth=3, heads=4))
    assert len(r.blocks) == 3 and r.blocks[0].norm_first
    assert r(torch.zeros(2, 5, 16)).shape == (2, 5, 24)


def test_rewrite_returns_text_and_is_cached(vlm, frames, forward_count):
    clip, ref = frames
    inst = Instructor(vlm)
    text = inst.rewrite("make the sky red", clip[0], ref, max_new_tokens=8)
    assert isinstance(text, str) and text
    n = len(forward_count)
    assert n >= 1
    assert Instructor(vlm).rewrite("make the sky red", clip[0], ref, max_new_tokens=8) == text
    assert len(forward_count) == n


def test_rewrite_empty_falls_back_to_instruction(vlm, frames, monkeypatch, caplog):
    monkeypatch.setattr(instructor_mod, "generate_text", lambda *a, **k: "")
    with caplog.at_level(logging.WARNING, logger="viva_core.instructor"):
        assert Instructor(vlm).rewrite("make the sky red", frames[0][0]) == "make the sky red"
    assert "empty" in caplog.text
