"""VIVA for ComfyUI: instruction-based video editing with a VLM instructor and a self-reflection judge.

ComfyUI imports this file; the library lives in viva_core/ and works without ComfyUI.
"""
try:
    from comfy_api.latest import ComfyExtension
except ImportError:  # imported outside ComfyUI (e.g. by pytest collecting the repo root)
    ComfyExtension = None

WEB_DIRECTORY = "./web"

if ComfyExtension is not None:
    from .nodes import NODES
    from .nodes.common import register_model_folders

    class VivaExtension(ComfyExtension):
        async def get_node_list(self):
            return NODES

    async def comfy_entrypoint() -> ComfyExtension:
        register_model_folders()
        return VivaExtension()
