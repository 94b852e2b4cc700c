"""The evaluation report: per-edit scores with their means, as JSON, a terminal table and one
self-contained HTML page with frame strips."""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..safe_io import write_text_atomic
from ..video import PathLike, uniform_frame_indices
from .score import DIMENSION_KEYS, EditScore


@dataclass
class EditPreview:
    """A few frames of one edit for the HTML report, as PNG data URIs per row (source, output, ground truth)."""

    index: int
    instruction: str
    rows: dict[str, list[str]]


@dataclass
class EvalReport:
    """Per-edit scores and their means per category (`type`), per operation and over all (`aggregate` rows:
    count, ea, pc, gn, gr, overall, psnr, ssim); `judge_agreement` when a judge was scored (EA's numbers at its top
    level, each question's under `per_question`)."""

    manifest: str
    scores: list[EditScore]
    by_category: dict[str, dict]
    by_operation: dict[str, dict]
    overall: dict
    judge_agreement: dict | None = None
    previews: list[EditPreview] = field(default_factory=list)  # HTML only, not in the JSON

    def to_json(self) -> str:
        return json.dumps(
            {
                "manifest": self.manifest,
                "overall": self.overall,
                "by_category": self.by_category,
                "by_operation": self.by_operation,
                "judge_agreement": self.judge_agreement,
                "scores": [asdict(s) for s in self.scores],
            },
            ensure_ascii=False,
            indent=2,
        )

    def table(self) -> str:
        """Plain-text tables per category and per operation, and the overall row (for the terminal)."""
        lines = []
        for title, groups in (
            ("category", self.by_category),
            ("operation", self.by_operation),
            ("", {"all": self.overall}),
        ):
            lines.append(f"{title or 'overall':<24}{'n':>5}" + "".join(f"{k.upper():>8}" for k in DIMENSION_KEYS))
            for name, row in groups.items():
                lines.append(
                    f"{name[:23]:<24}{row['count']:>5}" + "".join(_fmt(row[k]).rjust(8) for k in DIMENSION_KEYS)
                )
            lines.append("")
        if self.judge_agreement:
            j = self.judge_agreement
            lines.append(
                f"judge vs verifier per question (label: verifier >= {j['threshold']}; accuracy of P(Yes) >= "
                f"{j['threshold']}; EA also on the unedited sources, 'EA, edits' on the outputs alone)"
            )
            lines.append(f"{'question':<10}{'n':>5}{'pos':>6}{'neg':>6}{'acc':>8}{'P(Yes)+':>9}{'P(Yes)-':>9}  ROC-AUC")
            for question, row in _per_question(j).items():
                lines.append(
                    f"{question:<10}{row['n']:>5}{row['positives']:>6}{row['negatives']:>6}"
                    f"{_fmt(row['accuracy']):>8}{_fmt(row.get('mean_p_yes_positives')):>9}"
                    f"{_fmt(row.get('mean_p_yes_negatives')):>9}  {_auc_text(row)}"
                )
        return "\n".join(lines).rstrip()

    def write(self, out_dir: PathLike) -> Path:
        """Write report.json and report.html (self-contained) into `out_dir`; return the folder."""
        out = Path(out_dir).expanduser()
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "report.json", self.to_json())
        write_text_atomic(out / "report.html", render_html(self))
        return out


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _per_question(j: dict) -> dict[str, dict]:
    """`judge_agreement`'s rows per question, then EA over the edits alone (no unedited sources); a report written
    before PC, GN and GR were scored has EA's only."""
    rows = dict(j.get("per_question") or {"EA": j})
    if j.get("ea_edits_only") is not None:
        rows["EA, edits"] = j["ea_edits_only"]
    return rows


def _auc_text(row: dict) -> str:
    """The ROC-AUC, or why there is none (one class only), so that a missing class is not read as a number."""
    if row["roc_auc"] is not None:
        return _fmt(row["roc_auc"])
    if row["n"] == 0:
        return "none: no items"
    return "none: no negatives" if row["negatives"] == 0 else "none: no positives"


def _data_uri(frame: torch.Tensor, max_side: int) -> str:
    from ..vlm import to_pil_image

    buf = io.BytesIO()
    to_pil_image(frame, max_side=max_side).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def make_preview(
    index: int, instruction: str, source, output, target, *, frames: int = 3, max_side: int = 192
) -> EditPreview:
    """PNG data URIs of `frames` uniformly spaced frames of source, output and ground truth."""
    picks = uniform_frame_indices(output.shape[0], frames)
    return EditPreview(
        index=index,
        instruction=instruction,
        rows={
            name: [_data_uri(x[i], max_side) for i in picks]
            for name, x in (("source", source), ("output", output), ("ground truth", target))
        },
    )


# ================================================================================================ HTML

CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:22px}h2{font-size:18px;margin-top:28px}
table{border-collapse:collapse;margin:8px 0;font-size:13px;background:#fff}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:right}th{background:#f0f0f0}
td.name,th.name{text-align:left}
.edit{background:#fff;border:1px solid #ddd;border-radius:6px;padding:12px;margin:12px 0}
.grid{display:grid;grid-template-columns:110px repeat(var(--n),auto);gap:4px;align-items:center;justify-content:start}
.grid img{image-rendering:pixelated;width:160px;border:1px solid #ccc}
.label{font-weight:600;font-size:13px}.muted{color:#777;font-size:12px}
"""


def _score_table(title: str, groups: dict[str, dict]) -> str:
    head = "".join(f"<th>{k.upper()}</th>" for k in DIMENSION_KEYS)
    rows = "".join(
        f"<tr><td class=name>{html.escape(name)}</td><td>{row['count']}</td>"
        + "".join(f"<td>{_fmt(row[k])}</td>" for k in DIMENSION_KEYS)
        + "</tr>"
        for name, row in groups.items()
    )
    return (
        f"<h2>{html.escape(title)}</h2><table><tr><th class=name>{html.escape(title.split()[-1])}</th>"
        f"<th>n</th>{head}</tr>{rows}</table>"
    )


def render_html(report: EvalReport) -> str:
    """One self-contained HTML page: score tables, judge agreement, per-edit scores and frame strips."""
    parts = [
        f"<!doctype html><html><head><meta charset=utf-8><title>VIVA eval</title><style>{CSS}</style>"
        f"</head><body><h1>VIVA exact benchmark</h1><p class=muted>{html.escape(report.manifest)} · "
        f"{len(report.scores)} edits · scores in [0, 1] (PSNR in dB)</p>",
        _score_table("Overall", {"all": report.overall}),
        _score_table("By category", report.by_category),
        _score_table("By operation", report.by_operation),
    ]
    if report.judge_agreement:
        j = report.judge_agreement
        rows = "".join(
            f"<tr><td class=name>{html.escape(question)}</td><td>{row['n']}</td><td>{row['positives']}</td>"
            f"<td>{row['negatives']}</td><td>{_fmt(row['accuracy'])}</td>"
            f"<td>{_fmt(row.get('mean_p_yes_positives'))}</td><td>{_fmt(row.get('mean_p_yes_negatives'))}</td>"
            f"<td>{html.escape(_auc_text(row))}</td></tr>"
            for question, row in _per_question(j).items()
        )
        parts.append(
            f"<h2>Judge vs verifier</h2><p class=muted>Per question: label = the verifier's score of that "
            f"dimension &ge; {j['threshold']}, prediction = the judge's P(Yes); over the outputs, and for EA also "
            f"the unedited sources (<i>EA, edits</i>: the outputs alone).</p>"
            f"<table><tr><th class=name>question</th><th>n</th><th>positives</th>"
            f"<th>negatives</th><th>accuracy @ {j['threshold']}</th><th>mean P(Yes), positives</th>"
            f"<th>mean P(Yes), negatives</th><th>ROC-AUC</th></tr>{rows}</table>"
        )
    head = "".join(f"<th>{k.upper()}</th>" for k in DIMENSION_KEYS)
    rows = "".join(
        f"<tr><td>{s.index}</td><td class=name>{html.escape(s.category)}</td>"
        f"<td class=name>{html.escape(s.operation)}</td>"
        f"<td class=name>{html.escape(str(s.details.get('instruction', '')))}</td>"
        + "".join(f"<td>{_fmt(getattr(s, k))}</td>" for k in DIMENSION_KEYS)
        + "</tr>"
        for s in report.scores
    )
    parts.append(
        f"<h2>Edits</h2><table><tr><th>#</th><th class=name>category</th><th class=name>operation</th>"
        f"<th class=name>instruction</th>{head}</tr>{rows}</table>"
    )
    by_index = {s.index: s for s in report.scores}
    if report.previews:
        parts.append("<h2>Frames</h2>")
    for p in report.previews:
        s = by_index.get(p.index)
        line = "" if s is None else " · ".join(f"{k.upper()} {_fmt(getattr(s, k))}" for k in DIMENSION_KEYS)
        n = max(len(v) for v in p.rows.values())
        grid = "".join(
            f"<div class=label>{html.escape(name)}</div>"
            + "".join(f'<img src="{uri}" alt="{html.escape(name)} frame">' for uri in uris)
            for name, uris in p.rows.items()
        )
        parts.append(
            f"<div class=edit><div><b>#{p.index}</b> {html.escape(p.instruction)}</div>"
            f'<div class=muted>{html.escape(line)}</div><div class=grid style="--n:{n}">{grid}</div></div>'
        )
    parts.append("</body></html>")
    return "\n".join(parts)
