"""VLM folder checks, loading through the real transformers path, folder discovery, chat inputs."""

from __future__ import annotations

import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from tiny_vlm import build_tiny_text_lm, build_tiny_vlm

from viva_core.errors import InputError, ModelLoadError
from viva_core.vlm import build_inputs, check_vlm_folder, find_vlm_folders, generate_text, load_vlm, to_pil_image


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_vlm(tmp_path_factory.mktemp("vlm") / "tiny-qwen2.5-vl")


@pytest.fixture(scope="module")
def vlm(tiny_dir):
    return load_vlm(tiny_dir, dtype="fp32", device="cpu")


@pytest.fixture
def broken(tiny_dir, tmp_path):
    """A fresh copy of the tiny VLM folder to damage."""
    return shutil.copytree(tiny_dir, tmp_path / "broken")


def _conversation(*images, text="Describe the image."):
    return [
        {
            "role": "user",
            "content": [*({"type": "image", "image": im} for im in images), {"type": "text", "text": text}],
        }
    ]


def test_load_ok(vlm, tiny_dir):
    assert vlm.path == str(tiny_dir)
    assert vlm.device == torch.device("cpu") and vlm.dtype == torch.float32
    assert not vlm.model.training
    assert all(not p.requires_grad for p in vlm.model.parameters())
    assert next(vlm.model.parameters()).dtype == torch.float32
    assert vlm.hidden_size == 32
    assert vlm.processor.chat_template
    assert vlm.tokenizer.convert_tokens_to_ids("<|image_pad|>") == vlm.model.config.image_token_id


def test_load_default_dtype_is_bf16(tiny_dir):
    v = load_vlm(tiny_dir, device="cpu")
    assert v.dtype == torch.bfloat16 and next(v.model.parameters()).dtype == torch.bfloat16


def test_build_inputs_one_and_batch(vlm):
    g = torch.Generator().manual_seed(0)
    a, b = to_pil_image(torch.rand(64, 64, 3, generator=g)), to_pil_image(torch.rand(1, 56, 56, 3, generator=g))
    one = build_inputs(vlm, _conversation(a, b))
    grid = one["image_grid_thw"]
    assert grid.shape == (2, 3)
    n_image_tokens = int((one["input_ids"] == vlm.model.config.image_token_id).sum())
    assert n_image_tokens == int(grid.prod(-1).sum()) // 4  # spatial_merge_size 2 -> 4 patches per token
    assert one["pixel_values"].dtype == torch.float32
    batch = build_inputs(
        vlm, [_conversation(a, text="Is this a long question about the sky?"), _conversation(b, text="Yes?")]
    )
    assert batch["input_ids"].shape[0] == 2
    assert bool(batch["attention_mask"][:, -1].all())  # left padding: position -1 is real in every row
    assert not bool(batch["attention_mask"][1, 0])


def test_generate_text_is_greedy_and_capped(vlm):
    """Greedy decoding: the same answer twice, and max_new_tokens cuts it (a shorter cap gives a prefix)."""
    img = to_pil_image(torch.full((56, 56, 3), 0.5))
    long = generate_text(vlm, _conversation(img), max_new_tokens=8)
    short = generate_text(vlm, _conversation(img), max_new_tokens=2)
    assert generate_text(vlm, _conversation(img), max_new_tokens=8) == long
    assert long.startswith(short) and len(long) > len(short) > 0


def test_to_pil_image_checks_shape():
    assert to_pil_image(torch.zeros(10, 20, 3)).size == (20, 10)
    assert to_pil_image(torch.zeros(100, 50, 3), max_side=40).size == (20, 40)
    with pytest.raises(InputError, match="shape"):
        to_pil_image(torch.zeros(2, 10, 10, 3))


def test_missing_folder():
    with pytest.raises(ModelLoadError, match="not found"):
        load_vlm("/nonexistent/vlm-folder")


@pytest.mark.parametrize(
    "remove, expected",
    [
        (["config.json"], "config.json"),
        (["model.safetensors"], r"\*\.safetensors"),
        (["tokenizer.json"], "no tokenizer"),
        (["chat_template.jinja"], "no chat template"),
        (["preprocessor_config.json"], "no image preprocessor"),
    ],
)
def test_broken_folder_names_missing_part(broken, remove, expected):
    for name in remove:
        (broken / name).unlink()
    with pytest.raises(ModelLoadError, match=expected) as err:
        load_vlm(broken, dtype="fp32", device="cpu")
    assert str(broken) in str(err.value)


def test_pickle_only_weights_refused(broken):
    (broken / "model.safetensors").unlink()
    (broken / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelLoadError, match="pickle") as err:
        check_vlm_folder(broken)
    assert "pytorch_model.bin" in str(err.value) and "safetensors" in str(err.value)


def test_wrong_architecture_refused(tmp_path):
    folder = build_tiny_text_lm(tmp_path / "text-lm")
    with pytest.raises(ModelLoadError) as err:
        load_vlm(folder, dtype="fp32", device="cpu")
    msg = str(err.value)
    assert "qwen2" in msg and "Qwen2ForCausalLM" in msg  # what was found
    assert "Qwen2.5-VL" in msg and "Qwen3-VL" in msg  # what is supported


def test_find_vlm_folders(tiny_dir, tmp_path):
    root = tmp_path / "models"
    shutil.copytree(tiny_dir, root / "vlm" / "qwen" / "tiny-a")
    shutil.copytree(tiny_dir, root / "tiny-b")
    build_tiny_text_lm(root / "llm" / "text-only")
    (root / "empty").mkdir()
    assert find_vlm_folders(root) == sorted([str(root / "tiny-b"), str(root / "vlm" / "qwen" / "tiny-a")])
    assert find_vlm_folders(root, max_depth=1) == [str(root / "tiny-b")]
    assert find_vlm_folders(tmp_path / "missing") == []


def _reference_chunked_attention(q, k, v, lengths, scale):
    """Softmax attention written out per chunk: an independent reference for the packed kernel."""
    outs, start = [], 0
    for n in lengths:
        qs, ks, vs = (t[0, :, start : start + n].double() for t in (q, k, v))
        w = torch.softmax(qs @ ks.transpose(-1, -2) * scale, dim=-1)
        outs.append((w @ vs).transpose(0, 1))  # [n, heads, D]
        start += n
    return torch.cat(outs)[None]


@pytest.mark.parametrize("lengths", [[16, 16, 16], [16, 9, 23]])
def test_packed_vision_attention_matches_per_chunk_softmax(lengths):
    from viva_core.vision_attention import packed_sdpa

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, sum(lengths), 8, generator=g) for _ in range(3))
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    out, _ = packed_sdpa(None, q, k, v, None, cu_seq_lens_q=cu, scaling=8**-0.5)
    assert out.shape == (1, sum(lengths), 2, 8)
    ref = _reference_chunked_attention(q, k, v, lengths, 8**-0.5)
    assert torch.allclose(out.double(), ref, atol=1e-6)
    with pytest.raises(ValueError, match="packed vision attention"):
        packed_sdpa(None, q, k, v, torch.ones(1), cu_seq_lens_q=cu)


def test_vlm_vision_tower_runs_packed_and_equals_sdpa(tiny_dir, vlm):
    """load_vlm switches the vision tower to one attention call per layer; logits equal transformers' SDPA path."""
    from viva_core.vision_attention import NAME

    assert vlm.model.config.vision_config._attn_implementation == NAME
    g = torch.Generator().manual_seed(1)
    images = [to_pil_image(torch.rand(56, 56, 3, generator=g)) for _ in range(3)]
    odd = to_pil_image(torch.rand(28, 84, 3, generator=g))
    for conversation in (_conversation(*images), _conversation(images[0], odd)):
        inputs = build_inputs(vlm, conversation)
        packed = vlm.model(**inputs).logits
        vlm.model.config.vision_config._attn_implementation = "sdpa"
        try:
            plain = vlm.model(**inputs).logits
        finally:
            vlm.model.config.vision_config._attn_implementation = NAME
        assert torch.allclose(packed, plain, atol=1e-5), (packed - plain).abs().max()


def test_vision_indices_equal_transformers_own_and_leave_the_tower_unchanged(vlm):
    """vision_indices (computed once per image size, tiled) against transformers' per-image loops on images of mixed
    sizes (windows padded at the edges, a two-frame grid); the tower's output with them equals its output without,
    under the packed attention (boundaries on the host) and under SDPA."""
    from viva_core.vision_attention import NAME, vision_indices

    vu = pytest.importorskip("transformers.vision_utils")
    visual = vlm.model.model.visual
    grid = torch.tensor([[1, 4, 4], [1, 4, 4], [1, 2, 6], [2, 4, 4], [1, 12, 18], [1, 4, 4], [1, 10, 8]])
    got = vision_indices(visual, grid)
    merge = visual.spatial_merge_size
    order, cu_windows = vu.get_vision_window_index(
        grid, spatial_merge_size=merge, window_size=visual.window_size, patch_size=visual.patch_size
    )
    cu = vu.get_vision_cu_seqlens(grid)
    assert torch.equal(got["position_ids"], vu.get_vision_position_ids(grid, merge))
    assert torch.equal(got["window_index"], order) and torch.equal(got["cu_window_seqlens"], cu_windows)
    assert torch.equal(got["cu_seqlens"], cu) and got["max_seqlen"] == int((cu[1:] - cu[:-1]).max())
    assert got["max_window_seqlen"] == int((cu_windows[1:] - cu_windows[:-1]).max())
    assert len(cu_windows) > len(grid) + 1  # the big images span several windows
    pe = visual.patch_embed
    pixels = torch.randn(int(grid.prod(-1).sum()), pe.in_channels * pe.temporal_patch_size * pe.patch_size**2)
    with torch.no_grad():
        for attention in (NAME, "sdpa"):
            vlm.model.config.vision_config._attn_implementation = attention
            try:
                plain = visual(pixels, grid_thw=grid).pooler_output
                fast = visual(pixels, grid_thw=grid, **vision_indices(visual, grid)).pooler_output
            finally:
                vlm.model.config.vision_config._attn_implementation = NAME
            torch.testing.assert_close(fast, plain, rtol=0, atol=1e-6)


def _grid_frames(n: int, h: int, w: int, seed: int) -> torch.Tensor:
    """Frames whose values are exact 8-bit levels, so the PIL path's rounding changes nothing."""
    return torch.randint(0, 256, (n, h, w, 3), generator=torch.Generator().manual_seed(seed)).float() / 255


def test_image_patches_lay_pixels_out_as_the_processor_does(vlm):
    """The judge's pixels in torch (for a differentiable reward) against the image processor itself: bit-exact at
    its grid size (the tiny judge's 56x56), the same grid and close values where it resizes (PIL bicubic vs torch
    bicubic on smooth frames), and a gradient that reaches each pixel."""
    from viva_core.vlm import image_patches

    ip = vlm.processor.image_processor
    frames = _grid_frames(3, 56, 56, 0)
    want = ip(images=[to_pil_image(f) for f in frames], return_tensors="pt")
    got, grid = image_patches(vlm.processor, frames.requires_grad_(True))
    assert grid.tolist() == want["image_grid_thw"].tolist()
    torch.testing.assert_close(got, want["pixel_values"].float(), rtol=0, atol=1e-6)
    got.sum().backward()
    assert bool((frames.grad != 0).all())
    smooth = torch.nn.functional.interpolate(
        _grid_frames(2, 6, 9, 1).permute(0, 3, 1, 2), size=(40, 60), mode="bilinear"
    )
    smooth = (smooth.permute(0, 2, 3, 1) * 255).round() / 255
    want = ip(images=[to_pil_image(f) for f in smooth], return_tensors="pt")
    got, grid = image_patches(vlm.processor, smooth)
    assert grid.tolist() == want["image_grid_thw"].tolist()
    assert float((got - want["pixel_values"]).abs().mean()) < 0.02  # normalized units (std ~0.27 of 0..1 pixels)


def test_image_patches_refuse_a_processor_without_qwen_patches():
    from viva_core.vlm import image_patches

    with pytest.raises(InputError, match="Qwen2-VL"):
        image_patches(object(), torch.rand(1, 8, 8, 3))
