import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

# diffusers and transformers give their library logger a stderr handler when it is first used, bound to the
# sys.stderr of that moment. Bind it now, to the session's stream: bound inside a test that captures stderr, it
# would write into that test's closed stream ever after ("--- Logging error ---" in whichever test logs next).
import diffusers.utils.logging  # noqa: E402
import transformers.utils.logging  # noqa: E402

diffusers.utils.logging.get_logger("diffusers")
transformers.utils.logging.get_logger("transformers")


@pytest.fixture(autouse=True)
def fresh_dynamo_for_slow_tests(request):
    """The slow tests compile DiT blocks in many variants (dtypes, LoRA side paths, merged weights); in one process
    they share each block's code object and would pass dynamo's recompile limit (8) together, which no single test
    does. Each starts from an empty dynamo cache instead (inductor's on-disk cache still serves)."""
    if request.node.get_closest_marker("slow"):
        torch._dynamo.reset()
    yield


@pytest.fixture
def fake_flash_attn_4(monkeypatch):
    """A stand-in `flash_attn.cute` whose interface's _flash_attn_fwd / _flash_attn_bwd (what FA4's own autograd
    function calls) are attention written out on FA4's (B, S, H, D) layout, softmax(q k^T * scale) v in float, and its
    gradients written out: an independent reference. diffusers' registry and process-wide backend
    are put back after."""
    import types

    from diffusers.models.attention_dispatch import (
        _HUB_KERNELS_REGISTRY,
        AttentionBackendName,
        _AttentionBackendRegistry,
    )

    calls = []

    def probabilities(q, k, scale):
        scale = scale or q.shape[-1] ** -0.5
        scores = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) * scale
        return scores.softmax(-1), scores.logsumexp(-1), scale

    def _flash_attn_fwd(q, k, v, softmax_scale=None, causal=False, return_lse=False):
        calls.append(tuple(q.shape))
        p, lse, _ = probabilities(q, k, softmax_scale)
        out = torch.einsum("bhqk,bkhd->bqhd", p, v.float()).to(q.dtype)
        return out, lse if return_lse else None, None, None, None

    def _flash_attn_bwd(q, k, v, out, dout, lse, softmax_scale=None, causal=False):
        """Attention's gradients written out (custom ops run below autograd, so no autograd here)."""
        p, _, scale = probabilities(q, k, softmax_scale)
        dout = dout.float()
        dv = torch.einsum("bhqk,bqhd->bkhd", p, dout)
        dp = torch.einsum("bqhd,bkhd->bhqk", dout, v.float())
        ds = p * (dp - (dp * p).sum(-1, keepdim=True))
        dq = torch.einsum("bhqk,bkhd->bqhd", ds, k.float()) * scale
        dk = torch.einsum("bhqk,bqhd->bkhd", ds, q.float()) * scale
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)

    cute = types.ModuleType("flash_attn.cute")
    interface = types.ModuleType("flash_attn.cute.interface")
    interface._flash_attn_fwd, interface._flash_attn_bwd = _flash_attn_fwd, _flash_attn_bwd
    cute.interface = interface
    monkeypatch.setitem(sys.modules, "flash_attn.cute", cute)
    monkeypatch.setitem(sys.modules, "flash_attn.cute.interface", interface)
    config = _HUB_KERNELS_REGISTRY[AttentionBackendName.FLASH_4_HUB]
    kernel_fn, active = config.kernel_fn, _AttentionBackendRegistry.get_active_backend()
    yield calls
    config.kernel_fn = kernel_fn
    _AttentionBackendRegistry.set_active_backend(active[0] if isinstance(active, tuple) else active)
