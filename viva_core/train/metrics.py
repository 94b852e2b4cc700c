"""Training logs: a JSONL line per step (always), TensorBoard when installed, and a PNG of the curves when
matplotlib is (the optional extras "tensorboard" and "plot")."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)

# Curves drawn in the PNG, in this order, when present.
PLOTTED = (
    "loss",
    "loss_fm",
    "loss_uso",
    "judge_p_yes",
    "loss_policy",
    "loss_kl",
    "loss_sft",
    "reward",
    "reward_std",
    "zero_var_groups",
    "clip_frac",
    "approx_kl",
    "grad_norm",
    "lr",
    "val_loss",
    "val_reward",
)


class MetricsLog:
    def __init__(self, out_dir: Path, *, tensorboard: bool = True, resume: bool = False) -> None:
        self.path = out_dir / "metrics.jsonl"
        out_dir.mkdir(parents=True, exist_ok=True)
        if not resume and self.path.exists():
            self.path.unlink()
        self.writer = None
        self._told_no_matplotlib = False
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(out_dir / "tensorboard"))
            except ImportError:
                log.info("tensorboard is not installed; metrics go to %s only", self.path)

    def log(self, step: int, values: dict[str, float]) -> None:
        row = {"step": step, **{k: (float(v) if v is not None else None) for k, v in values.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for k, v in values.items():
                if v is not None and math.isfinite(float(v)):
                    self.writer.add_scalar(k, float(v), step)

    def truncate_after(self, step: int) -> None:
        """On resume, drop rows logged after the checkpoint so the log matches an uninterrupted run."""
        if self.path.exists():
            rows = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
            self.path.write_text("".join(r + "\n" for r in rows))

    def rows(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]

    def plot(self, png: Path, title: str = "") -> Optional[Path]:
        """Small multiples of the logged curves; returns None when matplotlib is missing or nothing is logged."""
        rows = self.rows()
        keys = [k for k in PLOTTED if any(r.get(k) is not None for r in rows)]
        if not rows or not keys:
            return None
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:  # an optional dependency (the "plot" extra): training goes on without the PNG
            if not self._told_no_matplotlib:
                log.warning('matplotlib is not installed: no %s (pip install "comfyui-viva[plot]")', png.name)
                self._told_no_matplotlib = True
            return None
        cols = min(3, len(keys))
        nrows = math.ceil(len(keys) / cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 2.8 * nrows), squeeze=False)
        for ax, key in zip(axes.flat, keys):
            pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1.2)
            ax.set_title(key, fontsize=9)
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=7)
        for ax in list(axes.flat)[len(keys) :]:
            ax.axis("off")
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(png, dpi=100)
        plt.close(fig)
        return png

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
