"""Training-step benchmark at the Wan2.1-1.3B editor shape (in 32 / out 16), bf16 base + fp32 LoRA (rank 32 on
self/cross-attention q,k,v,o), random weights, 480x832x33 frames (14,040 tokens) + 512 text tokens.

Times with CUDA events, using the trainer's own pieces (add_lora, sde_step_with_logprob, the losses):
  sft     one SFT step: mask-weighted flow-matching forward + backward + AdamW;
  grpo    one Edit-GRPO iteration: G rollouts x S steps (no grad, SDE on a window of W steps), then the update
          on the window steps (forward + backward per stored transition), then AdamW; and the rollouts again with
          the LoRA cast to bf16 (`rollout.lora_dtype = "model"`), with the largest |log ratio| the first update sees
          after either (what the PPO clip must tolerate); the rollouts with the LoRA merged into the DiT's weights
          (`rollout.lora_dtype = "merged"`, adapters.lora_merged: no side path, the merge and restore timed with
          them) and their |log ratio|; under --compile blocks, without the fp32-LoRA rollouts. `--lora-compute model`
          runs the LoRA's side path in bf16 wherever gradients flow too (the trainer's lora.compute_dtype,
          adapters.lora_side_path_in_model_dtype), the fp32 masters still trained.
VAE and reward time are not included (they depend on the reward); the DiT is what dominates at this size.
The whole trainer's Edit-GRPO step on the bundled small editor (VAE decode, verifier rewards, records batched per
DiT call vs one record per call) is `bench/bench_grpo_step.py`.
Under torchrun the SFT step runs data-parallel (DDP) and reports samples/s per GPU count.

    python bench/bench_train.py [--frames 33] [--group 8 --steps 10 --window 2] [--checkpointing] [--compile blocks]
        [--attention flash4] [--lora-compute model]
    torchrun --nproc_per_node=2 bench/bench_train.py --only sft
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_dit import WAN_1_3B, dit_flops, matmul_rate, time_cuda  # noqa: E402


def cuda_time(fn) -> float:
    """One timed call (the callers do their own warm-up and repeats); wall time where CUDA is not in use (the CPU
    smoke run of `--device cpu`, whose timings mean nothing)."""
    if not torch.cuda.is_initialized():
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    return time_cuda(fn, 0, 1)[0]


def peak_gib(reset: bool = False) -> float:
    if not torch.cuda.is_initialized():
        return 0.0
    if reset:
        torch.cuda.reset_peak_memory_stats()
    return torch.cuda.max_memory_allocated() / 2**30


@torch.no_grad()
def trained_size_lora(model: torch.nn.Module, scale: float) -> None:
    """Random lora_B sized so that each adapted weight moves by `scale` of its norm, as a trained LoRA does: the
    rollouts' bf16-vs-fp32 log ratio is only meaningful with a side path of that size."""
    from viva_core.train.adapters import ADAPTER

    for module in model.modules():
        if ADAPTER not in getattr(module, "lora_A", {}):
            continue
        a, b = module.lora_A[ADAPTER].weight, module.lora_B[ADAPTER].weight
        b.normal_()
        delta = (b @ a) * module.scaling[ADAPTER]
        b.mul_(scale * module.base_layer.weight.float().norm() / delta.norm())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=33)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--window", type=int, default=2)
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument(
        "--lora-scale",
        type=float,
        default=0.03,
        help="each adapted weight's change ||scale*B@A|| / ||W|| (PEFT starts B at 0, where fp32 and bf16 side paths "
        "agree trivially; grpo_v16's trained LoRA has a median 0.027 on the small editor)",
    )
    ap.add_argument("--checkpointing", action="store_true")
    ap.add_argument(
        "--compile", default="off", choices=["off", "blocks"], help="the trainer's model.compile (warm-ups compile)"
    )
    ap.add_argument(
        "--attention", default="sdpa", help="the trainer's model.attention (flash4: flash-attn-4 forward and backward)"
    )
    ap.add_argument(
        "--lora-compute",
        default="fp32",
        choices=["fp32", "model"],
        help="the trainer's lora.compute_dtype (model: the side path in bf16 in SFT and the update too)",
    )
    ap.add_argument("--only", default="sft,grpo")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    ap.add_argument("--device", default="cuda", help="cpu: a smoke check of the script (a two-layer DiT)")
    args = ap.parse_args()
    smoke = args.device == "cpu"  # a check that the script runs before a GPU session (a two-layer DiT)

    from diffusers import WanTransformer3DModel

    from viva_core.sampling import sde_step_with_logprob, shifted_sigmas
    from viva_core.train import losses as L
    from viva_core.train.adapters import add_lora, lora_cast, lora_merged, lora_side_path_in_model_dtype
    from viva_core.train.config import LoraConfig
    from viva_core.train.rollout import Transition, sde_rollout

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        torch.distributed.init_process_group("nccl")
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dev, dt = torch.device(args.device), torch.bfloat16
    torch.manual_seed(0)
    # the CPU smoke run: the same code on a two-layer DiT of the 1.3B's layout (a check that the script runs)
    shape = dict(WAN_1_3B, num_attention_heads=2, attention_head_dim=16, text_dim=32, ffn_dim=64, num_layers=2)
    shape = shape if smoke else WAN_1_3B
    model = WanTransformer3DModel(**shape).to(dev, dt)
    params = add_lora(model, LoraConfig(rank=args.rank, alpha=2 * args.rank, targets="attn"))
    trained_size_lora(model, args.lora_scale)
    if args.lora_compute == "model":
        lora_side_path_in_model_dtype(model)  # as the trainer does: after the LoRA, before compiling
    from viva_core.compat import set_attention_backend

    set_attention_backend(model, args.attention)  # as load_editor does for the trainer's model.attention
    if args.compile != "off":
        from viva_core.editor import compile_dit

        compile_dit(model, args.compile)  # as the trainer does: after the LoRA
    if args.checkpointing:
        model.enable_gradient_checkpointing()
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[int(os.environ["LOCAL_RANK"])])
    opt = torch.optim.AdamW(params, lr=1e-5)
    lt, lh, lw = (args.frames - 1) // 4 + 1, args.height // 8, args.width // 8
    tokens = lt * (lh // 2) * (lw // 2)
    z_src = torch.randn(1, 16, lt, lh, lw, device=dev)
    text = torch.randn(1, 512, shape["text_dim"], device=dev, dtype=dt)
    mask = torch.zeros(1, 1, lt, lh, lw, device=dev)
    mask[..., lh // 4 : lh // 2, lw // 4 : lw // 2] = 1
    fwd = dit_flops(shape, tokens, 512)
    rate = 1e12 if smoke else matmul_rate()
    results = {
        "tokens": tokens,
        "fwd_tflop": fwd / 1e12,
        "matmul_tflops": rate / 1e12,
        "world": world,
        "gpu": "cpu (smoke)" if smoke else torch.cuda.get_device_name(),
        "checkpointing": args.checkpointing,
        "compile": args.compile,
        "attention": args.attention,
        "lora_compute": args.lora_compute,
    }

    def velocity(m, x, sigma, batch=1):
        t = torch.full((batch,), sigma * 1000.0, device=dev)
        return m(
            hidden_states=torch.cat([x, z_src.expand(batch, -1, -1, -1, -1)], 1).to(dt),
            timestep=t,
            encoder_hidden_states=text.expand(batch, -1, -1),
            return_dict=False,
        )[0].float()

    if "forward" in args.only:  # what the LoRA costs per DiT call (rollouts are all forward)
        x1 = torch.randn_like(z_src)

        def fwd_once():
            with torch.no_grad():
                velocity(model, x1, 0.7)

        def timed() -> float:
            fwd_once()
            return statistics.median(cuda_time(fwd_once) for _ in range(5))

        model.disable_adapters()
        base = timed()
        model.enable_adapters()
        lora32 = timed()
        with torch.no_grad(), lora_cast(params, dt):
            lora16 = timed()
        results["forward"] = {"no_lora_s": base, "lora_fp32_s": lora32, "lora_bf16_s": lora16, "floor_s": fwd / rate}

    if "sft" in args.only:

        def sft_step():
            opt.zero_grad(set_to_none=True)
            sigma = torch.rand(1, device=dev)
            x0, eps = torch.randn_like(z_src), torch.randn_like(z_src)
            x_t, v_t = L.flow_matching_pair(x0, eps, sigma)
            loss = L.masked_fm_loss(velocity(net, x_t, float(sigma)), v_t, mask, 1.0)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()

        sft_step()
        peak_gib(reset=True)
        times = [cuda_time(sft_step) for _ in range(args.repeats)]
        t = statistics.median(times)
        results["sft"] = {
            "seconds": t,
            "samples_per_s_total": world / t,
            "peak_gib": peak_gib(),
            "mfu_3x": 3 * fwd / t / rate,
            "floor_3x_s": 3 * fwd / rate,
        }

    if "grpo" in args.only and world == 1:
        sigmas = shifted_sigmas(args.steps, 5.0)
        window = list(range(1, 1 + args.window))  # the trainer's window: fixed, high-noise half

        def rollouts(batched: bool = True):
            gens = [torch.Generator().manual_seed(m) for m in range(args.group)]

            def vel(x, sig):
                return velocity(model, x, sig, x.shape[0])

            if batched:
                return sde_rollout(vel, z_src.shape[1:], sigmas, window, 0.7, gens, dev)
            parts = [sde_rollout(vel, z_src.shape[1:], sigmas, window, 0.7, [g], dev) for g in gens]
            return torch.cat([p[0] for p in parts]), [
                Transition(
                    t.step,
                    torch.cat([p[1][k].x for p in parts]),
                    torch.cat([p[1][k].x_next for p in parts]),
                    torch.cat([p[1][k].log_prob for p in parts]),
                )
                for k, t in enumerate(parts[0][1])
            ]

        def update(rollout) -> float:
            """One PPO update on the rollout; returns the largest |log ratio| it saw (the rollouts' log-probs against
            the update's, on policy: 0 up to the kernels' and the LoRA dtype's rounding)."""
            _, transitions = rollout
            worst = torch.zeros((), device=dev)
            opt.zero_grad(set_to_none=True)
            adv = torch.randn(args.group, device=dev)
            n = args.group * len(transitions)
            for m in range(args.group):
                for tr in transitions:
                    s, s2 = float(sigmas[tr.step]), float(sigmas[tr.step + 1])
                    x = tr.x[m : m + 1].to(dev)
                    st = sde_step_with_logprob(
                        x, velocity(model, x, s), s, s2, 0.7, float(sigmas[1]), prev_sample=tr.x_next[m : m + 1].to(dev)
                    )
                    old = tr.log_prob[m : m + 1].to(dev)
                    loss, _ = L.clipped_policy_loss(st.log_prob, old, adv[m].view(1), 1e-3)
                    (loss / n).backward()
                    worst = torch.maximum(worst, (st.log_prob.detach() - old).abs().max())
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            return float(worst)

        def rollouts_bf16_lora():
            """rollout.lora_dtype "model": the LoRA cast to the DiT's dtype for the rollouts (adapters.lora_cast)."""
            with torch.no_grad(), lora_cast(params, dt):
                return rollouts()

        def rollouts_merged_lora():
            """rollout.lora_dtype "merged": the LoRA merged into the DiT's weights for the rollouts, restored after."""
            with torch.no_grad(), lora_merged(model):
                return rollouts()

        # one member at a time: eager only (2% slower, measured; another graph). Under compiled blocks the fp32-LoRA
        # rollouts are left out: the trainer compiles only the bf16 ("auto") or merged ones, and in one process with
        # the bf16 ones torch 2.11 reused one no-grad graph for both, an fp32 input times a bf16 LoRA weight
        # (RuntimeError; docs/small_models.md, section 87)
        eager = args.compile == "off"
        if eager:
            update(rollouts())  # warm-up
        update(rollouts_bf16_lora())  # warm-ups: under compiled blocks, the graphs the timed calls use
        update(rollouts_merged_lora())
        peak_gib(reset=True)
        roll, seq, upd, roll16, rollm, worst = [], [], [], [], [], {}
        for _ in range(max(1, args.repeats - 1)):
            holder = {}
            if eager:
                seq.append(cuda_time(lambda: rollouts(batched=False)))
                roll.append(cuda_time(lambda: holder.setdefault("r", rollouts())))  # noqa: B023 (timed right here)
                worst["fp32_lora"] = update(holder["r"])
            roll16.append(cuda_time(lambda: holder.setdefault("r16", rollouts_bf16_lora())))  # noqa: B023
            upd.append(cuda_time(lambda: holder.setdefault("w", update(holder["r16"]))))  # noqa: B023 (timed right here)
            worst["bf16_lora"] = holder["w"]
            rollm.append(cuda_time(lambda: holder.setdefault("rm", rollouts_merged_lora())))  # noqa: B023
            worst["merged_lora"] = update(holder["rm"])
        r, q = (statistics.median(roll) if roll else None), (statistics.median(seq) if seq else None)
        u = statistics.median(upd)
        n_fwd, n_upd = args.group * args.steps, args.group * args.window
        results["grpo"] = {
            "rollout_s": r,
            "rollout_sequential_s": q,
            "update_s": u,
            "iteration_s": r + u if r else None,
            "rollout_bf16_lora_s": statistics.median(roll16),
            "iteration_bf16_lora_s": statistics.median(roll16) + u,
            "rollout_merged_lora_s": statistics.median(rollm),
            "iteration_merged_lora_s": statistics.median(rollm) + u,
            "max_abs_log_ratio_first_update": worst,
            "peak_gib": peak_gib(),
            "rollout_mfu": n_fwd * fwd / r / rate if r else None,
            "rollout_bf16_lora_mfu": n_fwd * fwd / statistics.median(roll16) / rate,
            "update_mfu_3x": n_upd * 3 * fwd / u / rate,
            "floor_s": (n_fwd * fwd + n_upd * 3 * fwd) / rate,
        }

    if rank == 0:
        print(json.dumps(results, indent=1))
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
    if world > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
