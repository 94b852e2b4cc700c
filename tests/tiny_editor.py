"""Tiny random editor checkpoints in the real on-disk formats (diffusers folder, single-file Wan keys).

The loading code under test is the real one (`from_pretrained`, safetensors single files); only the sizes are tiny.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

WORDS = (
    "a the red green blue dog fox cat circle square ball move remove replace add make it into with of "
    "scene video background color bright dark left right top bottom show hour after ship left"
).split()
TEXT_DIM = 64


def tiny_transformer(in_channels: int = 32, out_channels: int = 16, seed: int = 0):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=in_channels,
        out_channels=out_channels,
        text_dim=TEXT_DIM,
        freq_dim=32,
        ffn_dim=64,
        num_layers=2,
        rope_max_seq_len=64,
    )


def tiny_vae(seed: int = 0, **kw):
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    cfg = dict(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True])
    cfg.update(kw)
    return AutoencoderKLWan(**cfg)


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


# The tiny UMT5 text encoder, shared with bench/real_memory.py's --shape tiny.
TINY_UMT5 = dict(
    vocab_size=64,
    d_model=TEXT_DIM,
    d_kv=16,
    d_ff=64,
    num_layers=1,
    num_heads=2,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=16,
)


def tiny_text_encoder(seed: int = 0):
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    return UMT5EncoderModel(UMT5Config(**TINY_UMT5))


def build_editor_folder(
    root: Path, *, in_channels: int = 32, with_text_encoder: bool = True, seed: int = 0, scheduler: dict | None = None
) -> Path:
    """A diffusers-format editor folder: transformer/, vae/ [, text_encoder/, tokenizer/], model_index.json
    [, scheduler/scheduler_config.json holding `scheduler`]."""
    root = Path(root)
    tiny_transformer(in_channels=in_channels, seed=seed).save_pretrained(root / "transformer")
    tiny_vae(seed=seed + 1).save_pretrained(root / "vae")
    if with_text_encoder:
        tiny_text_encoder(seed=seed + 2).save_pretrained(root / "text_encoder")
        tiny_tokenizer().save_pretrained(root / "tokenizer")
    (root / "model_index.json").write_text(json.dumps({"_class_name": "LucyEditPipeline"}))
    if scheduler is not None:
        write_scheduler_config(root, scheduler)
    return root


# scheduler/scheduler_config.json as Wan2.1-T2V-1.3B-Diffusers ships it (Lucy-Edit-Dev and Wan2.2 ship flow_shift 5.0)
WAN_SCHEDULER = {
    "_class_name": "UniPCMultistepScheduler",
    "_diffusers_version": "0.33.0.dev0",
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "disable_corrector": [],
    "dynamic_thresholding_ratio": 0.995,
    "final_sigmas_type": "zero",
    "flow_shift": 3.0,
    "lower_order_final": True,
    "num_train_timesteps": 1000,
    "predict_x0": True,
    "prediction_type": "flow_prediction",
    "rescale_betas_zero_snr": False,
    "sample_max_value": 1.0,
    "solver_order": 2,
    "solver_p": None,
    "solver_type": "bh2",
    "steps_offset": 0,
    "thresholding": False,
    "timestep_spacing": "linspace",
    "trained_betas": None,
    "use_beta_sigmas": False,
    "use_exponential_sigmas": False,
    "use_flow_sigmas": True,
    "use_karras_sigmas": False,
}


def write_scheduler_config(root: Path, config: dict | str) -> Path:
    """root/scheduler/scheduler_config.json holding `config` (a str is written as is, e.g. broken JSON)."""
    path = Path(root) / "scheduler" / "scheduler_config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config if isinstance(config, str) else json.dumps(config))
    return path


def diffusers_to_original_keys(diffusers_sd: dict[str, torch.Tensor], original_candidates: list[str]) -> dict:
    """Invert diffusers' own Wan converter on a list of original key names, by tensor identity."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    probes = {k: torch.zeros(1) for k in original_candidates}
    converted = convert_wan_transformer_to_diffusers(dict(probes))
    back = {}
    for dkey, t in converted.items():
        okey = next(k for k, p in probes.items() if p is t)
        back[okey] = diffusers_sd[dkey]
    assert len(back) == len(diffusers_sd), sorted(set(diffusers_sd) - set(converted))
    return back


def original_wan_keys(num_layers: int) -> list[str]:
    keys = ["patch_embedding.weight", "patch_embedding.bias", "head.head.weight", "head.head.bias", "head.modulation"]
    for m in ("text_embedding.0", "text_embedding.2", "time_embedding.0", "time_embedding.2", "time_projection.1"):
        keys += [f"{m}.weight", f"{m}.bias"]
    for i in range(num_layers):
        b = f"blocks.{i}"
        keys += [f"{b}.modulation", f"{b}.norm3.weight", f"{b}.norm3.bias"]
        for a in ("self_attn", "cross_attn"):
            keys += [f"{b}.{a}.{p}.{w}" for p in "qkvo" for w in ("weight", "bias")]
            keys += [f"{b}.{a}.norm_q.weight", f"{b}.{a}.norm_k.weight"]
        keys += [f"{b}.ffn.{j}.{w}" for j in (0, 2) for w in ("weight", "bias")]
    return keys


def build_single_file_dit(
    path: Path,
    *,
    prefix: str = "model.diffusion_model.",
    in_channels: int = 32,
    seed: int = 0,
    with_config_metadata: bool = True,
    model: torch.nn.Module | None = None,
) -> tuple[Path, torch.nn.Module]:
    """The tiny DiT (or `model`) saved in ComfyUI's single-file layout; returns (path, the diffusers model)."""
    model = model if model is not None else tiny_transformer(in_channels=in_channels, seed=seed)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    orig = diffusers_to_original_keys(sd, original_wan_keys(model.config.num_layers))
    cfg = model.config
    meta = {
        "config": json.dumps(
            {
                "attention_head_dim": cfg.attention_head_dim,
                "num_attention_heads": cfg.num_attention_heads,
                "rope_max_seq_len": cfg.rope_max_seq_len,
            }
        )
    }
    save_file({prefix + k: v for k, v in orig.items()}, str(path), metadata=meta if with_config_metadata else None)
    return Path(path), model


_RES = (
    ("norm1.gamma", "residual.0.gamma"),
    ("conv1.", "residual.2."),
    ("norm2.gamma", "residual.3.gamma"),
    ("conv2.", "residual.6."),
    ("conv_shortcut.", "shortcut."),
)


def _vae_key_to_original(key: str) -> str:
    """diffusers AutoencoderKLWan key -> original Wan2.1 VAE key (inverse of diffusers' converter)."""
    import re

    fixed = {
        "quant_conv.": "conv1.",
        "post_quant_conv.": "conv2.",
        "encoder.conv_in.": "encoder.conv1.",
        "decoder.conv_in.": "decoder.conv1.",
        "encoder.norm_out.gamma": "encoder.head.0.gamma",
        "decoder.norm_out.gamma": "decoder.head.0.gamma",
        "encoder.conv_out.": "encoder.head.2.",
        "decoder.conv_out.": "decoder.head.2.",
    }
    for a, b in fixed.items():
        if key.startswith(a):
            return b + key[len(a) :]

    def res(rest: str) -> str:
        for a, b in _RES:
            if rest.startswith(a):
                return b + rest[len(a) :]
        return rest

    if m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.*)", key):
        return f"{m[1]}.middle.{2 * int(m[2])}.{res(m[3])}"
    if m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)", key):
        return f"{m[1]}.middle.1.{m[2]}"
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.(.*)", key):
        return f"encoder.downsamples.{m[1]}.{res(m[2])}"
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
        return f"decoder.upsamples.{4 * int(m[1]) + int(m[2])}.{res(m[3])}"
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.*)", key):
        return f"decoder.upsamples.{4 * int(m[1]) + 3}.{m[2]}"
    raise KeyError(key)


def build_single_file_vae(path: Path, seed: int = 3) -> Path:
    """A tiny Wan2.1-layout VAE (dim_mult 1,2,4,4; 2 res blocks) saved in original single-file keys; the inverse
    mapping is checked against diffusers' own converter before saving."""
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    vae = tiny_vae(seed=seed, dim_mult=[1, 2, 4, 4], num_res_blocks=2, temperal_downsample=[False, True, True])
    sd = {k: v.contiguous() for k, v in vae.state_dict().items()}
    orig = {_vae_key_to_original(k): v for k, v in sd.items()}
    back = convert_wan_vae_to_diffusers(dict(orig))
    assert back.keys() == sd.keys() and all(back[k] is sd[k] for k in sd), sorted(set(back) ^ set(sd))[:5]
    save_file(orig, str(path))
    return Path(path)


def comfy_native_wan(seed: int = 0):
    """The smallest DiT ComfyUI's own Wan loader accepts: it fixes 128-dim heads, freq_dim 256, text_dim 4096."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=1,
        attention_head_dim=128,
        in_channels=32,
        out_channels=16,
        text_dim=4096,
        freq_dim=256,
        ffn_dim=64,
        num_layers=2,
        rope_max_seq_len=64,
    )
