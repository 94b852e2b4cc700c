"""VIVA core library: instruction-based video editing (VIVA) with a self-reflection judge (ReViSE).

Importable and usable without ComfyUI. One file per concern:
video (I/O), safe_io (weights), editor (DiT+VAE+UMT5 loading), sampling (flow matching), pipeline
(the edit story), vlm / instructor / judge (VLM roles), lora (read, apply, write), cli.
"""

__version__ = "0.1.0"
