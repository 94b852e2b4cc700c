"""Run by ComfyUI's python (cwd = COMFYUI_DIR): load a Wan DiT with ComfyUI's own loader, apply a LoRA written by
viva_core with ComfyUI's own LoRA code, and print JSON: how many keys ComfyUI mapped, which it left unloaded, and
the largest difference between ComfyUI's patched weights and W + alpha/r * B @ A computed here.

    python comfy_native_lora.py DIT.safetensors LORA.safetensors
"""

import json
import logging
import sys

dit_path, lora_path = sys.argv[1], sys.argv[2]
sys.argv = [sys.argv[0], "--cpu"]  # ComfyUI parses its own command line at import
sys.path.insert(0, ".")
import comfy.options  # noqa: E402

comfy.options.enable_args_parsing()  # as main.py does, so --cpu is read

import comfy.lora  # noqa: E402
import comfy.sd  # noqa: E402
import comfy.utils  # noqa: E402

unloaded = []


class Catch(logging.Handler):
    def emit(self, record):
        if "lora key not loaded" in record.getMessage():
            unloaded.append(record.getMessage())


logging.getLogger().addHandler(Catch())
model = comfy.sd.load_diffusion_model(dit_path)
lora = comfy.utils.load_torch_file(lora_path, safe_load=True)
key_map = comfy.lora.model_lora_keys_unet(model.model, {})
patches = comfy.lora.load_lora(lora, key_map)
base = {k: v.detach().float().clone() for k, v in model.model.state_dict().items()}  # patching is in place
patched, _ = comfy.sd.load_lora_for_models(model, None, lora, 1.0, 0)
patched.patch_model()
weights = dict(patched.model.named_parameters())
worst = 0.0
modules = sorted({k[: -len(".lora_A.weight")] for k in lora if k.endswith(".lora_A.weight")})
for m in modules:
    a, b = lora[m + ".lora_A.weight"].float(), lora[m + ".lora_B.weight"].float()
    alpha = float(lora[m + ".alpha"]) if m + ".alpha" in lora else a.shape[0]
    before = base[m + ".weight"]
    after = weights[m + ".weight"].float()
    worst = max(worst, float((after - (before + alpha / a.shape[0] * b @ a)).abs().max()))
print(json.dumps({"modules": len(modules), "mapped": len(patches), "unloaded": unloaded, "max_diff": worst}))
