"""Word-level tokenizers (UMT5 and Qwen flavours) built from the prompts of the training clips."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

from .config import UMT5_SPECIALS


def _pre_tokenizer():
    from tokenizers import pre_tokenizers

    return pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])


def vocabulary(texts: Iterable[str]) -> list[str]:
    """Lower-cased words and punctuation of `texts`, sorted (deterministic ids)."""
    pre = _pre_tokenizer()
    words = {w for t in texts for w, _ in pre.pre_tokenize_str(t.lower())}
    return sorted(words)


def word_tokenizer(words: Sequence[str], *, kind: str):
    """A word-level fast tokenizer: `umt5` (ids 0..2 = pad, </s>, unk; </s> appended) or `qwen` (Qwen's chat
    special tokens, chat template, left padding)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    from ...vlm import QWEN_SPECIAL_TOKENS, QWEN_VL_CHAT_TEMPLATE

    specials = UMT5_SPECIALS if kind == "umt5" else ("<unk>",) + QWEN_SPECIAL_TOKENS
    vocab = {t: i for i, t in enumerate(list(specials) + [w for w in words if w not in specials])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = _pre_tokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    if kind == "umt5":
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", padding_side="right"
        )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        additional_special_tokens=list(QWEN_SPECIAL_TOKENS[1:]),
    )
    fast.chat_template = QWEN_VL_CHAT_TEMPLATE
    return fast


def prompt_texts(records: Sequence[dict]) -> list[str]:
    """Every text a model of this project reads: instructions, captions and the fixed instructor/judge prompts."""
    from ...instructor import INSTRUCTOR_SYSTEM_PROMPT, REWRITE_PROMPT, Instructor
    from ...judge import INSTRUCTION_LEAD, QUESTIONS, RATIONALE_PROMPT, Judge

    fixed = [
        INSTRUCTOR_SYSTEM_PROMPT,
        REWRITE_PROMPT,
        RATIONALE_PROMPT,
        "system user assistant you are a helpful assistant. yes no",
        *(q.question for q in QUESTIONS),
    ]
    fixed += [
        part["text"]
        for m in Instructor.messages("x", None, None)
        for part in (m["content"] if isinstance(m["content"], list) else [])
        if part.get("type") == "text"
    ]
    fixed += [
        part["text"]
        for m in Judge.messages(
            [None] * 9, [None] * 9, "answer yes or no.", [None] * 9, INSTRUCTION_LEAD.format(instruction="")
        )
        for part in m["content"]
        if part.get("type") == "text"
    ]
    texts = [r.get(k, "") or "" for r in records for k in ("instruction", "source_caption", "target_caption")]
    return fixed + texts


def save_tokenizer(tokenizer, out: Path) -> None:
    """save_pretrained with the portable class name (transformers 4.x and 5.x both read PreTrainedTokenizerFast)."""
    tokenizer.save_pretrained(out)
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2), encoding="utf-8")
