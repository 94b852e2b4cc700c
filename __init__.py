"""VIVA for ComfyUI: instruction-based video editing with a VLM instructor and a self-reflection judge.

ComfyUI imports this file; the library lives in viva_core/ and works without ComfyUI.
"""

import logging
import sys

try:
    from comfy_api.latest import ComfyExtension
except ImportError:  # outside ComfyUI (e.g. pytest collecting the repo root), or a ComfyUI without the V3 API
    ComfyExtension = None
    if "comfy" in sys.modules or "folder_paths" in sys.modules:
        logging.getLogger(__name__).warning(
            "VIVA registers no nodes: this ComfyUI has no V3 node API (comfy_api.latest, added in ComfyUI 0.3.48; "
            "the pack is tested on 0.3.64). Update ComfyUI to use the VIVA nodes."
        )

WEB_DIRECTORY = "./web"

if ComfyExtension is not None:
    from .nodes import NODES
    from .nodes.common import offer_example_inputs, register_model_folders, register_routes

    class VivaExtension(ComfyExtension):
        async def get_node_list(self):
            return NODES

    async def comfy_entrypoint() -> ComfyExtension:
        register_model_folders()
        offer_example_inputs()
        register_routes()
        return VivaExtension()
