"""Run by ComfyUI's python (cwd = COMFYUI_DIR): the pack's nodes run in-process on the tiny models of
tests/make_comfy_models.py (and the bundled small instructor, refiner and judge) against ComfyUI's real model
management, and one JSON line on stdout reports what tests/test_comfyui.py checks:

- which of our parts are in `comfy.model_management.current_loaded_models` after each step;
- whether `unload_all_models()` (what POST /free with unload_models runs) takes them out, and a second edit then
  reloads them and gives the identical output;
- the DiT's weights while a LoRA edit's patches are on and after ComfyUI unpatched them (bit-identical?);
- the hosted edits against the same edits by viva_core alone (no ComfyUI host: its own LoRA merge);
- the progress bar's preview images (`--preview-method latent2rgb`) and an interrupt raised from the bar's hook;
- the latent format previews use: the bundled small VAE's own factors, ComfyUI's Wan21 for the tiny editor.

    python comfy_model_management.py REPO MODELS_ROOT
"""

import importlib.util
import json
import sys

repo, root = sys.argv[1], sys.argv[2]
sys.argv = [sys.argv[0], "--cpu", "--preview-method", "latent2rgb"]  # ComfyUI parses its own command line at import
sys.path.insert(0, ".")
import comfy.options  # noqa: E402

comfy.options.enable_args_parsing()

import comfy.model_management as mm  # noqa: E402
import comfy.utils  # noqa: E402
import folder_paths  # noqa: E402
import torch  # noqa: E402
from utils.extra_config import load_extra_path_config  # noqa: E402

load_extra_path_config(f"{root}/extra_model_paths.yaml")
folder_paths.set_input_directory(f"{root}/input")
spec = importlib.util.spec_from_file_location("comfyui_viva", f"{repo}/__init__.py", submodule_search_locations=[repo])
pack = importlib.util.module_from_spec(spec)
sys.modules["comfyui_viva"] = pack
spec.loader.exec_module(pack)

from comfyui_viva.nodes.common import register_model_folders  # noqa: E402
from comfyui_viva.nodes.edit import EditVideo, EncodeInstruction, JudgeEdit, LoadVideo  # noqa: E402
from comfyui_viva.nodes.loaders import LoadEditor, LoadVLM, LoraLoader, StepCache  # noqa: E402
from comfyui_viva.nodes.model_management import latent_format, previewer  # noqa: E402
from comfyui_viva.viva_core.editor import EditorOptions, load_editor  # noqa: E402
from comfyui_viva.viva_core.pipeline import EditSettings, edit  # noqa: E402
from comfyui_viva.viva_core.preview import preview_rgb_factors  # noqa: E402
from comfyui_viva.viva_core.step_cache import StepCache as CoreStepCache  # noqa: E402

register_model_folders()
calls: list[tuple[int, int, object]] = []
interrupt_at = [0]


def hook(value, total, preview, prompt_id=None, node_id=None):
    """As the server's hook: every bar update is an interrupt point. Also records the updates."""
    calls.append((value, total, preview))
    mm.throw_exception_if_processing_interrupted()
    if interrupt_at[0] and value == interrupt_at[0]:
        mm.interrupt_current_processing(True)  # what POST /interrupt does, here at a known step


comfy.utils.set_progress_bar_global_hook(hook)


def result(node_output) -> tuple:
    return tuple(node_output.args)


def loaded() -> list[str]:
    return sorted(type(m.model.model).__name__ for m in mm.current_loaded_models if m.model is not None)


def weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


EDITOR = dict(
    editor="folder: tiny-editor",
    vae="(from editor folder)",
    text_encoder="(from editor folder)",
    dtype="fp32",
    fp8_storage=False,
    offload="none",
    attention="sdpa",
    compile="off",
    vae_tiling=False,
    allow_t2v=False,
)
STEPS = 4
SAMPLING = dict(steps=STEPS, cfg=5.0, seed=0, shift=5.0, strength=1.0, sampler="unipc", fps=8.0, max_frames=9)
out: dict = {}

frames = result(LoadVideo.execute("viva_square.mp4", 9, 1, 0))[0]
editor = result(LoadEditor.execute(**EDITOR))[0]
out["after_load"] = loaded()
lora_editor = result(LoraLoader.execute(editor, "tiny_lora.safetensors", 1.0))[0]
cond = result(
    EncodeInstruction.execute(lora_editor, "replace the red square with a green ball", frames, "text", "blurry")
)[0]
out["after_encode"] = loaded()
base = weights(editor.transformer)

first = result(EditVideo.execute(lora_editor, cond, images=frames, **SAMPLING))[0]
out["after_edit"] = loaded()
out["patched_while_loaded"] = not same(weights(editor.transformer), base)
previews = [p for _, _, p in calls if p is not None]
out["progress"] = [[v, t] for v, t, _ in calls]
out["previews"] = [[p[0], list(p[1].size)] for p in previews]

mm.unload_all_models()  # what POST /free {"unload_models": true} runs between prompts
out["after_unload"] = loaded()
out["unpatched_after_unload"] = same(weights(editor.transformer), base)

second = result(EditVideo.execute(lora_editor, cond, images=frames, **SAMPLING))[0]
out["after_second_edit"] = loaded()
out["second_edit_identical"] = torch.equal(first, second)

plain = result(EditVideo.execute(editor, cond, images=frames, **SAMPLING))[0]  # the base clone loads: unpatched
out["base_weights_after_plain_edit"] = same(weights(editor.transformer), base)
out["plain_differs_from_lora"] = not torch.equal(plain, first)

# viva_core alone, no ComfyUI host: its own merge of the LoRA, its own placement
core = load_editor(f"{root}/models/diffusers/tiny-editor", options=EditorOptions(dtype="fp32", device="cpu"))
core_lora = core.with_lora(f"{root}/models/loras/tiny_lora.safetensors", 1.0)
settings = EditSettings(steps=STEPS, cfg=5.0, seed=0, shift=5.0, strength=1.0, sampler="unipc")


def core_edit(ed) -> torch.Tensor:
    """viva_core's own edit of the prompt's frames and conditioning with SAMPLING's settings: the reference."""
    return edit(ed, frames, cond.positive, negative=cond.negative, settings=settings, fps=8.0).frames


for name, hosted, ed in (("lora", first, core_lora), ("plain", plain, core)):
    out[f"core_max_diff_{name}"] = float((core_edit(ed) - hosted).abs().max())

# VIVA Step Cache on the hosted LoRA editor: threshold 0 is the plain hosted edit, a large one skips calls and
# equals viva_core's own cached edit; no cache hooks stay on the shared DiT; method "off" passes the editor through
zero_cache = result(StepCache.execute(lora_editor, "first_block", 0.0))[0]
out["step_cache_zero_identical"] = torch.equal(
    result(EditVideo.execute(zero_cache, cond, images=frames, **SAMPLING))[0], first
)
big_cache = result(StepCache.execute(lora_editor, "first_block", 10.0))[0]
cached_frames, _, cached_report = result(EditVideo.execute(big_cache, cond, images=frames, **SAMPLING))
out["step_cache_report"] = cached_report.splitlines()[-1]
out["step_cache_changes_edit"] = not torch.equal(cached_frames, first)
ref = core_edit(core_lora.with_step_cache(CoreStepCache("first_block", 10.0)))
out["step_cache_core_max_diff"] = float((ref - cached_frames).abs().max())
out["step_cache_hooks_left"] = [
    n for n, m in editor.transformer.named_modules() if getattr(m, "_diffusers_hook", None) and m._diffusers_hook.hooks
]
out["step_cache_off_is_none"] = result(StepCache.execute(lora_editor, "off", 0.3))[0].step_cache is None
out["step_cache_after_identical"] = torch.equal(
    result(EditVideo.execute(lora_editor, cond, images=frames, **SAMPLING))[0], first
)

# fp8-stored DiT: ComfyUI would round W + dW back to fp8, so the host leaves the LoRA to viva_core's side path
fp8 = result(LoadEditor.execute(**dict(EDITOR, fp8_storage=True)))[0]
fp8_lora = result(LoraLoader.execute(fp8, "tiny_lora.safetensors", 1.0))[0]
fp8_weights = weights(fp8.transformer)
hosted_fp8 = result(EditVideo.execute(fp8_lora, cond, images=frames, **SAMPLING))[0]
plain_fp8 = result(EditVideo.execute(fp8, cond, images=frames, **SAMPLING))[0]
core_fp8 = load_editor(
    f"{root}/models/diffusers/tiny-editor", options=EditorOptions(dtype="fp32", device="cpu", fp8_storage=True)
)
ref = core_edit(core_fp8.with_lora(f"{root}/models/loras/tiny_lora.safetensors", 1.0))
out["fp8_core_max_diff_lora"] = float((ref - hosted_fp8).abs().max())
out["fp8_lora_changes_edit"] = not torch.equal(hosted_fp8, plain_fp8)
out["fp8_weights_untouched"] = same(weights(fp8.transformer), fp8_weights)

# interrupt: the flag set during step 2's bar update stops the edit at the next step's update
calls.clear()
interrupt_at[0] = 2
try:
    EditVideo.execute(lora_editor, cond, images=frames, **dict(SAMPLING, seed=1))
    out["interrupted"] = False
except mm.InterruptProcessingException:
    out["interrupted"] = True
out["updates_before_interrupt"] = [v for v, _, _ in calls]
interrupt_at[0] = 0

# VLMs and the token refiner (the bundled small editor and judge; tests/make_comfy_models.py's tiny VLM and refiner)
small = result(LoadEditor.execute(**dict(EDITOR, editor="folder: viva-small-editor", dtype="auto")))[0]
instructor = result(LoadVLM.execute("tiny-vlm", "auto"))[0]
judge = result(LoadVLM.execute("viva-small-judge", "auto"))[0]
mm.unload_all_models()
EncodeInstruction.execute(
    small, "Invert the colours.", frames, "instructor", "", vlm=instructor, refiner="tiny_refiner.safetensors"
)
out["after_instructor"] = loaded()
out["auto_dtypes_on_cpu"] = [str(small.dtype), str(instructor.dtype), str(judge.dtype)]
# latent previews: the bundled small VAE's own fitted factors (vae/latent_rgb.json), ComfyUI's Wan21 for the tiny one
own = preview_rgb_factors(small)
out["latent_formats"] = [type(latent_format(small)).__name__, type(latent_format(editor)).__name__]
small_previewer = previewer(small)
out["small_previewer"] = type(small_previewer).__name__
out["small_previewer_factors"] = bool(
    torch.equal(small_previewer.latent_rgb_factors.T, torch.tensor(own[0]))
    and torch.equal(small_previewer.latent_rgb_factors_bias, torch.tensor(own[1]))
)
zeros = small_previewer.decode_latent_to_preview_image("JPEG", torch.zeros(1, 16, 5, 16, 16))[1]  # [B, C, T, H, W]
out["small_zero_preview"] = [
    list(zeros.size),
    list(zeros.getpixel((3, 5))),
    [int((b + 1) / 2 * 255) for b in own[1]],
]  # the bias colour, as preview_to_image maps it
JudgeEdit.execute(judge, frames, first, "Invert the colours.", 2, False)
out["after_judge"] = loaded()
mm.unload_all_models()
out["after_final_unload"] = loaded()
print(json.dumps(out))
