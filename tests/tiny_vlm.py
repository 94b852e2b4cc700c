"""Tiny random VLM folders for tests: real files, loaded through the real `load_vlm` path.

`build_tiny_vlm(dir)` writes a Qwen2.5-VL-shaped model (a tiny config, random weights), a small
byte-level BPE tokenizer with the Qwen special tokens and chat template, and a Qwen2-VL image processor
of 56×56 pixels (4 visual tokens for a square image), all via `save_pretrained`, so that
`AutoModelForImageTextToText.from_pretrained(dir)` and `AutoProcessor.from_pretrained(dir)` work offline
(without torchvision, `load_vlm` builds the image-only processor from the same files).
`build_tiny_text_lm(dir)` writes a plain text LM (no vision) for wrong-architecture tests.
Both are seeded and deterministic and take well under 2 s after `transformers` is imported.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from viva_core.train.pretrain import save_tokenizer  # noqa: E402
from viva_core.vlm import QWEN_SPECIAL_TOKENS as SPECIAL_TOKENS  # noqa: E402
from viva_core.vlm import QWEN_VL_CHAT_TEMPLATE

# Words the tests and prompts use; BPE merges make each of these (with and without a leading space)
# a single token, so "Yes"/" Yes"/"No"/" No" exist as single tokens like in real Qwen tokenizers.
_CORPUS_WORDS = (
    "Yes No yes no the a an of and to in is are video frame frames source edited edit instruction "
    "make turn sky red blue green car cat dog replace remove add background person it with into "
    "answer or does follow unchanged realistic natural smooth first image reference describe rewrite "
    "description you see full color scene"
).split()


# The tiny Qwen2.5-VL language model and vision tower (2 blocks each, width 32), shared with bench/real_memory.py's
# --shape tiny.
TINY_TEXT = dict(
    vocab_size=512,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    rope_parameters=dict(rope_type="default", rope_theta=1e4, mrope_section=[2, 1, 1]),
)
TINY_VISION = dict(
    depth=2,
    hidden_size=32,
    intermediate_size=32,
    num_heads=4,
    out_hidden_size=32,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    fullatt_block_indexes=[1],
    window_size=112,
)


def _build_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [" " + " ".join(_CORPUS_WORDS)] * 4 + list(_CORPUS_WORDS) * 4
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        additional_special_tokens=list(SPECIAL_TOKENS[1:]),
    )
    fast.chat_template = QWEN_VL_CHAT_TEMPLATE
    return fast


def build_tiny_vlm(dir: str | os.PathLike, *, seed: int = 0, vocab_size: int = 512) -> Path:
    """Write a tiny random Qwen2.5-VL folder (config, model.safetensors, tokenizer, processor) and return it."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    out = Path(dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer(vocab_size)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = Qwen2_5_VLConfig(
        text_config=dict(
            TINY_TEXT,
            vocab_size=vocab_size,
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(TINY_VISION),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.save_pretrained(out, safe_serialization=True)
    # Saved part by part, as in the Qwen2.5-VL hub folders (preprocessor_config.json + tokenizer files +
    # chat template): building a Qwen2_5_VLProcessor object needs its video processor, i.e. torchvision.
    # preprocessor_config.json names "Qwen2VLImageProcessor", so with torchvision installed
    # AutoProcessor also infers the Qwen2-VL video processor from it.
    save_tokenizer(tokenizer, out)
    Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=56 * 56).save_pretrained(out)
    return out


def build_tiny_text_lm(dir: str | os.PathLike, *, seed: int = 0, vocab_size: int = 512) -> Path:
    """Write a tiny random text-only Qwen2 causal LM folder (no vision) with a tokenizer and chat template."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    out = Path(dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer(vocab_size)
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    torch.manual_seed(seed)
    Qwen2ForCausalLM(config).save_pretrained(out, safe_serialization=True)
    save_tokenizer(tokenizer, out)
    return out
