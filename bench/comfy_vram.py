"""Peak VRAM of edit -> judge -> a native ComfyUI model in one ComfyUI process, with our models
placed by themselves as the nodes did before (`--mode before`: load_editor / load_vlm put every part on the GPU for
good) and under ComfyUI's model management (`--mode after`: the nodes' ComfyHost, nodes/model_management.py).

Run it with ComfyUI's python, from anywhere (COMFYUI_DIR names the checkout); extra ComfyUI flags after `--`:

    COMFYUI_DIR=~/ComfyUI python bench/comfy_vram.py --mode before --budget-gb 6
    COMFYUI_DIR=~/ComfyUI python bench/comfy_vram.py --mode after --budget-gb 6
    COMFYUI_DIR=~/ComfyUI python bench/comfy_vram.py --mode after --budget-gb 6 -- --lowvram
    COMFYUI_DIR=~/ComfyUI python bench/comfy_vram.py --mode after -- --novram

The editor is a Wan2.1-1.3B-shaped editor DiT (in 32 / out 16 channels, random bf16 weights, 2.8 GB) with a
Wan2.1-shaped VAE (8x space, z 16, random weights) and random text tokens; the judge is the bundled small judge; the
native model is the same DiT
loaded by ComfyUI's own loader (`comfy.sd.load_diffusion_model`) and run once. `--budget-gb` makes ComfyUI act as
on a card of that size (`--reserve-vram` = total - budget): at 6 GB the editor's DiT (2.8 GB) and the native model
(2.8 GB) do not both fit, so under model management ComfyUI has to offload ours to load the native one.
Results of the H200 run: bench/RESULTS.md. Prints one JSON line per phase: peak and resident allocated GiB, and what
ComfyUI's registry holds. `--shape tiny`
runs the same steps on a 2-layer DiT (a CPU check of the script itself).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def parse() -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("before", "after"), required=True)
    p.add_argument("--budget-gb", type=float, default=0.0, help="act as a card of this many GB (0: the whole GPU)")
    p.add_argument("--shape", choices=("1.3b", "tiny"), default="1.3b")
    p.add_argument("--frames", type=int, default=33)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--steps", type=int, default=4)
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    return p.parse_args(argv[: argv.index("--")] if "--" in argv else argv), extra


def main() -> None:
    args, extra = parse()
    comfy_dir = Path(os.environ["COMFYUI_DIR"]).resolve()
    import torch

    cuda = torch.cuda.is_available()
    flags = [] if cuda else ["--cpu"]
    if cuda and args.budget_gb:
        total = torch.cuda.mem_get_info()[1] / 2**30
        flags += ["--reserve-vram", f"{max(total - args.budget_gb, 0):.2f}"]
    sys.argv = [sys.argv[0], *flags, *extra]  # ComfyUI parses its own command line at import
    os.chdir(comfy_dir)
    sys.path[:0] = [str(comfy_dir), str(ROOT / "tests")]
    import comfy.options

    comfy.options.enable_args_parsing()
    import importlib
    import importlib.util

    import comfy.model_management as mm
    import comfy.sd

    importlib.import_module("utils.extra_config")  # as main.py does first: `utils` is then ComfyUI's package

    spec = importlib.util.spec_from_file_location(
        "comfyui_viva", ROOT / "__init__.py", submodule_search_locations=[str(ROOT)]
    )
    pack = importlib.util.module_from_spec(spec)
    sys.modules["comfyui_viva"] = pack
    spec.loader.exec_module(pack)
    from comfyui_viva.nodes.model_management import editor_host, vlm_host
    from comfyui_viva.viva_core.editor import Conditioning, EditorOptions, load_editor
    from comfyui_viva.viva_core.judge import Judge
    from comfyui_viva.viva_core.pipeline import EditSettings, edit
    from comfyui_viva.viva_core.vlm import load_vlm
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from tiny_editor import build_single_file_dit, comfy_native_wan, tiny_vae

    device = mm.get_torch_device()
    tmp = Path(tempfile.mkdtemp(prefix="viva_vram_"))
    bundled = ROOT / "viva_core" / "small_models"
    if args.shape == "tiny":
        dit, vae = comfy_native_wan(), tiny_vae()
    else:
        torch.manual_seed(0)
        dit = WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=12,
            attention_head_dim=128,
            in_channels=32,
            out_channels=16,
            text_dim=4096,
            freq_dim=256,
            ffn_dim=8960,
            num_layers=30,
        ).to(torch.bfloat16)
        vae = AutoencoderKLWan()  # diffusers' default config is the Wan2.1 VAE's architecture
    folder = tmp / "editor"
    dit.save_pretrained(folder / "transformer")
    vae.save_pretrained(folder / "vae")
    native_file, _ = build_single_file_dit(tmp / "native.safetensors", model=dit)
    text_dim = int(dit.config.text_dim)
    del dit

    def gib(x: int) -> float:
        return round(x / 2**30, 3)

    def phase(name: str, fn) -> None:
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        print(
            json.dumps(
                {
                    "mode": args.mode,
                    "flags": flags + extra,
                    "phase": name,
                    "seconds": round(time.perf_counter() - t0, 2),
                    "peak_gib": gib(torch.cuda.max_memory_allocated()) if cuda else None,
                    "resident_gib": gib(torch.cuda.memory_allocated()) if cuda else None,
                    "registry": sorted(
                        type(m.model.model).__name__ for m in mm.current_loaded_models if m.model is not None
                    ),
                }
            ),
            flush=True,
        )

    hosted = args.mode == "after"
    dtype = "bf16" if cuda else "fp32"
    editor = load_editor(
        str(folder), options=EditorOptions(dtype=dtype, device=str(device)), host=editor_host if hosted else None
    )
    judge = Judge(
        load_vlm(
            bundled / "vlm" / "viva-small-judge", dtype=dtype, device=str(device), host=vlm_host() if hosted else None
        )
    )
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(args.frames, args.height, args.width, 3, generator=g)
    cond = Conditioning(torch.randn(1, 512, text_dim, generator=g) * 0.1, "random tokens")
    settings = EditSettings(steps=args.steps, cfg=1.0, seed=0, shift=5.0, strength=1.0, sampler="unipc")
    edited = {}
    phase("edit", lambda: edited.update(v=edit(editor, frames, cond, settings=settings, fps=16.0).frames))
    phase(
        "judge", lambda: judge.score(frames[: edited["v"].shape[0]], edited["v"], "Invert the colours.", num_frames=4)
    )

    def native() -> None:
        model = comfy.sd.load_diffusion_model(str(native_file))
        mm.load_models_gpu([model])
        diffusion = model.model.diffusion_model
        x = torch.randn(1, 32, 3, 16, 16, device=device, dtype=model.model.get_dtype())
        ctx = torch.randn(1, 512, text_dim, device=device, dtype=model.model.get_dtype())
        with torch.no_grad():
            diffusion(x, torch.tensor([500.0], device=device), ctx)
        edited["native"] = model  # kept alive, as a graph's cached output would be

    phase("native model", native)
    phase("unload models (/free)", mm.unload_all_models)
    phase("edit again", lambda: edit(editor, frames, cond, settings=settings, fps=16.0))


if __name__ == "__main__":
    main()
