"""Latent previews: an editor's own latent -> RGB projection, when its VAE ships one (issue 12).

A live preview (ComfyUI's Latent2RGB, `--preview-method`) shows each step's predicted clean latents as
`rgb = latents @ factors + bias` per latent position (RGB in [-1, 1]). The latents are the sampler's, i.e.
normalized with the VAE's `latents_mean` / `latents_std` (pipeline.normalize_latents). ComfyUI carries factors for
the released Wan2.1 / Wan2.2 VAEs; a VAE trained by this project has a latent space of its own, which those factors
do not describe, so its folder carries a fitted projection: `vae/latent_rgb.json` beside its config.json (the
bundled small editor's: recipes/small/preview_factors.py fits and writes it; docs/small_models.md, "Latent
previews", has its scores). The file belongs to the VAE, not to the editor: it describes that VAE's latents
whatever DiT produces them, and travels with the vae/ folder.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Optional

from .errors import ModelLoadError

LATENT_RGB_FILE = "latent_rgb.json"

Projection = tuple[list[list[float]], list[float]]  # factors [z][3], bias [3], ComfyUI's LatentFormat layout


def read_latent_rgb(path: str | Path, z_dim: int) -> Projection:
    """`latent_rgb_factors` [z_dim][3] and `latent_rgb_factors_bias` [3] from a latent_rgb.json; a damaged file or
    one for another latent width is a ModelLoadError naming it."""
    path = Path(path)
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        factors = [[float(v) for v in row] for row in info["latent_rgb_factors"]]
        bias = [float(v) for v in info.get("latent_rgb_factors_bias", [0.0, 0.0, 0.0])]
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        raise ModelLoadError(
            f"{path}: unreadable latent preview factors ({e}). Restore the file from the model "
            "release, or delete it (previews then use ComfyUI's Wan factors)."
        ) from e
    if len(factors) != z_dim or any(len(row) != 3 for row in factors) or len(bias) != 3:
        raise ModelLoadError(
            f"{path}: latent preview factors for {len(factors)} channels (rows of "
            f"{sorted({len(r) for r in factors})} values, bias of {len(bias)}), but the VAE has "
            f"{z_dim} latent channels; they need {z_dim} rows of 3 and a bias of 3. The file belongs "
            "to another VAE: re-fit it (recipes/small/preview_factors.py) or delete it."
        )
    return factors, bias


@lru_cache(maxsize=16)
def _cached(path: str, mtime_ns: int, size: int, z_dim: int) -> Projection:
    return read_latent_rgb(path, z_dim)


def preview_rgb_factors(editor) -> Optional[Projection]:
    """The editor's own latent -> RGB projection (factors [z][3], bias [3]) when its VAE folder has a
    latent_rgb.json, else None (a single-file VAE, or a released Wan VAE: previews use ComfyUI's factors)."""
    vae_dir = editor.files.get("vae")
    if not vae_dir:
        return None
    path = Path(vae_dir) / LATENT_RGB_FILE
    try:
        st = os.stat(path)
    except OSError:
        return None  # no file (or a single-file VAE: `vae_dir` is the file, and the path does not exist)
    return _cached(str(path), st.st_mtime_ns, st.st_size, int(editor.z_dim))
