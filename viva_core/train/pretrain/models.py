"""Factories of the small from-scratch models (VAE, DiT, text encoder, VLM folder) and their saving."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ...compat import qwen2_vl_pil_image_processor
from ...errors import InputError
from .config import IMAGE_SIDE, VAE_LEVELS, EditorSection, VaeSection, VLMSection
from .tokenizers import save_tokenizer


def new_vae(sec: VaeSection):
    from diffusers import AutoencoderKLWan

    dim_mult, temporal = VAE_LEVELS[sec.spatial]
    return AutoencoderKLWan(
        base_dim=sec.base_dim,
        z_dim=sec.z_dim,
        dim_mult=dim_mult,
        num_res_blocks=sec.num_res_blocks,
        attn_scales=[],
        temperal_downsample=temporal,
        scale_factor_spatial=sec.spatial,
        decoder_base_dim=sec.decoder_base_dim or None,
        latents_mean=[0.0] * sec.z_dim,
        latents_std=[1.0] * sec.z_dim,
    )


def new_dit(sec: EditorSection, z_dim: int):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=tuple(sec.patch),
        num_attention_heads=sec.heads,
        attention_head_dim=sec.head_dim,
        in_channels=2 * z_dim,
        out_channels=z_dim,
        text_dim=sec.text_dim,
        freq_dim=256,
        ffn_dim=sec.ffn_dim,
        num_layers=sec.layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
        rope_max_seq_len=1024,
    )


def new_text_encoder(sec: EditorSection, vocab_size: int):
    from transformers import UMT5Config, UMT5EncoderModel

    cfg = UMT5Config(
        vocab_size=vocab_size,
        d_model=sec.text_dim,
        d_kv=sec.text_dim // sec.text_heads,
        d_ff=sec.text_ff,
        num_layers=sec.text_layers,
        num_heads=sec.text_heads,
        relative_attention_num_buckets=32,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return UMT5EncoderModel(cfg)


def write_vlm_folder(out: Path, tokenizer, sec: VLMSection, seed: int) -> Path:
    """A fresh Qwen2.5-VL-architecture folder (random weights, word-level tokenizer, 64x64 image processor),
    in the layout `load_vlm` reads; trainers then load it through `load_vlm` like any VLM."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    Qwen2VLImageProcessorPil = qwen2_vl_pil_image_processor()

    out.mkdir(parents=True, exist_ok=True)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in tokenizer.all_special_tokens}
    half = sec.hidden // sec.heads // 2
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=sec.hidden,
            intermediate_size=2 * sec.hidden,
            num_hidden_layers=sec.layers,
            num_attention_heads=sec.heads,
            num_key_value_heads=max(1, sec.heads // 2),
            max_position_embeddings=1024,
            rope_parameters=dict(
                rope_type="default", rope_theta=1e4, mrope_section=[half - 2 * (half // 4), half // 4, half // 4]
            ),
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
            tie_word_embeddings=True,
        ),
        vision_config=dict(
            depth=sec.vision_depth,
            hidden_size=sec.vision_hidden,
            intermediate_size=2 * sec.vision_hidden,
            num_heads=4,
            out_hidden_size=sec.hidden,
            patch_size=sec.patch,
            spatial_merge_size=2,
            temporal_patch_size=2,
            fullatt_block_indexes=[sec.vision_depth - 1],
            window_size=32,
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.save_pretrained(out, safe_serialization=True)
    save_tokenizer(tokenizer, out)
    Qwen2VLImageProcessorPil(
        min_pixels=IMAGE_SIDE * IMAGE_SIDE,
        max_pixels=IMAGE_SIDE * IMAGE_SIDE,
        patch_size=sec.patch,
        merge_size=2,
        temporal_patch_size=2,
    ).save_pretrained(out)
    return out


def save_small(model: torch.nn.Module, out: Path, dtype: torch.dtype = torch.bfloat16) -> None:
    """save_pretrained (safetensors) of a copy in `dtype`: shipped weights are half-size; loaders upcast."""
    import copy

    copy.deepcopy(model).to("cpu", dtype).save_pretrained(out, safe_serialization=True)


def check_vocabulary(tokenizer, words: list[str], folder: Path) -> None:
    """A model continued from `folder` reads prompts with that folder's word-level tokenizer: a training word it
    lacks would silently become <unk>, so name them instead."""
    known = tokenizer.get_vocab()
    missing = [w for w in words if w not in known]
    if missing:
        raise InputError(
            f"{folder}: its tokenizer lacks {len(missing)} word(s) of the training prompts ({', '.join(missing[:8])}"
            f"{', ...' if len(missing) > 8 else ''}); continue on data of the same vocabulary, or train from scratch "
            "(no init)."
        )


def same_files(a: Path, b: Path) -> bool:
    """Whether two model folders hold byte-identical safetensors (the same weights)."""
    fa, fb = sorted(a.glob("*.safetensors")), sorted(b.glob("*.safetensors"))
    same_names = [f.name for f in fa] == [f.name for f in fb]
    return same_names and all(x.read_bytes() == y.read_bytes() for x, y in zip(fa, fb))


def resample_vision_patch(folder: Path, patch: int) -> None:
    """Rewrite a judge/instructor folder of this stage for vision patches of `patch` pixels (a divisor of its own):
    the patch embedding summed over each (old / patch)^2 block of its kernel and the attention window scaled the same
    way, so the rewritten model on a frame computes exactly what the old one computes on that frame upsampled by
    old / patch (nearest). A warm start that sees finer detail (more visual tokens per frame) without forgetting what
    the old model learned, FlexiViT-style; docs/small_models.md, section 36."""
    from ...safe_io import load_safetensors, read_json_object, save_safetensors_atomic

    config = read_json_object(folder / "config.json")
    vision = config["vision_config"]
    old = int(vision["patch_size"])
    if patch == old:
        return
    if patch < 1 or old % patch:
        raise InputError(
            f"{folder}: its vision patches are {old} pixels; a continued model can take a divisor of that "
            f"(judge.vlm.patch = {', '.join(str(p) for p in range(1, old + 1) if old % p == 0)}), not {patch}."
        )
    f = old // patch
    key = "visual.patch_embed.proj.weight"
    weights_file = next((f for f in sorted(folder.glob("*.safetensors")) if key in load_safetensors(f)[0]), None)
    if weights_file is None:
        raise InputError(f"{folder}: no safetensors file holds {key}; is it a Qwen2.5-VL folder of this stage?")
    tensors, metadata = load_safetensors(weights_file)
    w = tensors[key]  # [out, channels, temporal, old, old]
    tensors[key] = w.float().view(*w.shape[:3], patch, f, patch, f).sum((4, 6)).to(w.dtype).contiguous()
    save_safetensors_atomic(weights_file, tensors, metadata)
    vision["patch_size"] = patch
    vision["window_size"] = int(vision["window_size"]) // f
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    pre = read_json_object(folder / "preprocessor_config.json")
    pre["patch_size"] = patch
    (folder / "preprocessor_config.json").write_text(json.dumps(pre, indent=2) + "\n")
