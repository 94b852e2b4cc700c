"""Where a judge trained with `judge.ground_weight` points, and whether that orders one clip's candidates: for every
candidate of a benchmark's candidate set (stage judge_data's outputs, as best_of_n_check.py reads them) the EA
chat's pointing logits over the source frames' visual tokens (`GroundHead`), then
- pointing ROC-AUC: per clip, the logits against the tokens the truth's edit mask covers at least half as much as the
  token it covers most (clips where that is all or none of the tokens left out), averaged over the clip's candidates,
  with a bootstrap interval;
- "pointed change": the mean |edit - source| of the tokens it points at (softmax weights) minus that of the rest, a
  ranking signal for best-of-N, with its within-clip pair agreement against the verifier's EA (all pairs, clear
  pairs) beside the same signal from the true mask at token resolution (the ceiling of a perfect pointer) and the
  judge's own EA P(Yes) from the same forward; and the best-of-K pick by each against a random pick.

    PYTHONPATH=. python recipes/small/ground_check.py data/eval_heldout/heldout.jsonl runs/bon/judge_data \
        g=runs/judge_ground/judge [more=FOLDER ...] [--json out.json]
docs/small_models.md, section 46.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from best_of_n_check import CLEAR_MARGIN, _mean, agreements, candidates, pop_option
from table import bootstrap_ci

from viva_core.eval import roc_auc
from viva_core.judge import Judge, difference_images, yes_probability
from viva_core.train.pretrain import frames_float, load_clip_set
from viva_core.train.pretrain.judge import GROUND_HEAD_FILE, GroundHead, ground_logits, ground_targets
from viva_core.train.pretrain.judge_data import FRAMES_FILE
from viva_core.video import uniform_frame_indices
from viva_core.vlm import build_inputs, forward, load_vlm


def load_head(folder: str) -> GroundHead:
    from safetensors.torch import load_file

    path = Path(folder) / GROUND_HEAD_FILE
    if not path.is_file():
        raise SystemExit(f"{folder}: no {GROUND_HEAD_FILE} (train the judge with judge.ground_weight > 0)")
    weights = load_file(path)
    head = GroundHead(weights["query.weight"].shape[1], weights["query.weight"].shape[0])
    head.load_state_dict(weights)
    return head.eval()


@torch.no_grad()
def pointing(judge: Judge, head: GroundHead, source: torch.Tensor, edit: torch.Tensor, instruction: str, mask):
    """(pointing logits [tokens], true token targets [tokens], token change [tokens], EA P(Yes), token objectness
    [tokens]) of one candidate. Objectness: each token's mean distance to its frame's median colour, a pointer that
    points at every object and reads no instruction (the baseline a pointing AUC must beat to show grounding)."""
    frames = 4
    src, edt = judge._frames(source, frames), judge._frames(edit, frames)
    diff = difference_images(source, edit, frames, judge.max_side) if judge.difference else []
    chat = judge.messages(src, edt, judge.question_text("EA", instruction), diff, judge.lead(instruction))
    inputs = build_inputs(judge.vlm, [chat], add_generation_prompt=True)
    out = forward(judge.vlm, inputs, output_hidden_states=True)
    p_yes = float(yes_probability(out.logits[:, -1], judge.yes_ids, judge.no_ids)[0])
    grid, merge = inputs["image_grid_thw"][0].cpu(), int(judge.vlm.model.config.vision_config.spatial_merge_size)
    picks = uniform_frame_indices(source.shape[0], frames)
    target = ground_targets(mask[picks][None], grid, merge)[0]
    change = (edit[picks] - source[picks]).abs().mean(-1)  # [F, H, W]
    cells = (int(grid[1]) // merge, int(grid[2]) // merge)
    token_change = F.adaptive_avg_pool2d(change[:, None], cells).flatten()
    frames_shown = source[picks]
    background = frames_shown.flatten(1, 2).median(1).values[:, None, None]  # [F, 1, 1, 3]
    objectness = F.adaptive_avg_pool2d((frames_shown - background).abs().mean(-1)[:, None], cells).flatten()
    image_token = judge.vlm.model.config.image_token_id
    logits = ground_logits(head, out.hidden_states[-1].float(), inputs["input_ids"], image_token, len(target), 1)
    return logits[0].cpu(), target, token_change, p_yes, objectness


def pointed(logits: torch.Tensor) -> torch.Tensor:
    """The pointer's softmax over the tokens, scaled so that the token it points at most weighs 1."""
    p = torch.softmax(logits, -1)
    return p / p.max()


def contrast(weights: torch.Tensor, change: torch.Tensor) -> float:
    """Weighted mean change where `weights` point minus where they do not (weights 0..1)."""
    inside = float((weights * change).sum() / weights.sum().clamp(min=1e-6))
    outside = float(((1 - weights) * change).sum() / (1 - weights).sum().clamp(min=1e-6))
    return inside - outside


def covered_tokens(share: torch.Tensor) -> torch.Tensor | None:
    """The tokens a pointer should find: the mask's share of each at least half the most covered one's (an object is
    often smaller than a token); None where that is every token or none (no ROC-AUC to read)."""
    covered = share >= 0.5 * share.max()
    return covered if 0 < int(covered.sum()) < len(covered) else None


def main(argv: list[str]) -> None:
    json_out, argv = pop_option(argv, "--json")
    limit, argv = pop_option(argv, "--clips")  # the first N clips' candidates only (a quick look)
    limit = int(limit or 0)
    manifest, folder, judges = argv[0], Path(argv[1]), [a.partition("=")[::2] for a in argv[2:]]
    clips = load_clip_set(manifest)
    clip, groups, scores = candidates(clips, folder)
    groups = groups[:limit] if limit else groups
    frames = np.load(folder / FRAMES_FILE, mmap_mode="r")
    truth = [s["EA"] for s in scores]
    result: dict = {"clips": len(groups), "candidates": len(groups[0])}
    for label, path in judges:
        judge, head = Judge(load_vlm(path, dtype="fp32", device="cpu")), load_head(path)
        rows: dict[int, tuple] = {}
        for j in (j for g in groups for j in g):
            c = clip[j]
            source = frames_float(clips.source[c])
            edit = frames_float(torch.from_numpy(np.array(frames[j])))
            rows[j] = pointing(judge, head, source, edit, clips.records[c]["instruction"], clips.mask[c])
        blind = {}  # per clip: the pointer shown the source as the edit (no difference to follow), from its text alone
        for g in groups:
            c, source = clip[g[0]], frames_float(clips.source[clip[g[0]]])
            blind[c] = pointing(judge, head, source, source, clips.records[c]["instruction"], clips.mask[c])[0]
        per_clip, blind_auc, objectness, kinds, contested, among = [], [], [], [], [], []
        for g in groups:
            target = covered_tokens(rows[g[0]][1])
            if target is not None:
                per_clip.append(_mean(roc_auc(rows[j][0].tolist(), target.tolist()) for j in g))
                blind_auc.append(roc_auc(blind[clip[g[0]]].tolist(), target.tolist()))
                objectness.append(roc_auc(rows[g[0]][4].tolist(), target.tolist()))
                kinds.append(clips.records[clip[g[0]]].get("referring", "?"))
                contested.append(max(truth[j] for j in g) - min(truth[j] for j in g) > CLEAR_MARGIN)
                objects = rows[g[0]][4] >= rows[g[0]][4].quantile(0.75)  # the most object-like quarter of tokens
                which = 0 < int(target[objects].sum()) < int(objects.sum())  # which object, not object or background
                among.append(roc_auc(blind[clip[g[0]]][objects].tolist(), target[objects].tolist()) if which else None)
        lo, hi = bootstrap_ci(per_clip, draws=4000)
        blo, bhi = bootstrap_ci(blind_auc, draws=4000)
        olo, ohi = bootstrap_ci(objectness, draws=4000)
        signals = {  # indexed by candidate, as `truth`
            f"{label}: pointed change": {j: contrast(pointed(r[0]), r[2]) for j, r in rows.items()},
            f"{label}: change where it points blind": {
                j: contrast(pointed(blind[clip[j]]), r[2]) for j, r in rows.items()
            },
            f"{label}: EA P(Yes)": {j: r[3] for j, r in rows.items()},
            "true mask, token resolution": {j: contrast(r[1], r[2]) for j, r in rows.items()},
        }
        mean_ea = [_mean(truth[j] for j in g) for g in groups]
        report = {"pointing_auc": _mean(per_clip), "pointing_auc_ci": [lo, hi], "pointing_clips": len(per_clip)}
        report["objectness_auc"] = [_mean(objectness), olo, ohi]
        report["blind_pointing_auc"] = [_mean(blind_auc), blo, bhi]
        print(f"{label}: pointing ROC-AUC {_mean(per_clip):.3f} ({lo:.3f}-{hi:.3f}) over {len(per_clip)} clips;")
        print(f"  blind (the source shown as the edit) {_mean(blind_auc):.3f} ({blo:.3f}-{bhi:.3f})")
        n_among = sum(a is not None for a in among)
        report["blind_pointing_auc_among_objects"] = [_mean(among), n_among]
        print(f"  blind, among the most object-like quarter of the tokens ({n_among} clips): {_mean(among):.3f}")
        for name, keep in (("with", True), ("without", False)):  # where ordering matters: the seeds disagree
            at = [a for a, k in zip(blind_auc, contested) if k == keep]
            report[f"blind_pointing_auc_clips_{name}_clear_pairs"] = [_mean(at), len(at)]
            print(f"  blind, on the {len(at)} clips {name} a clear pair: {_mean(at):.3f}")
        print(f"  objectness (no instruction) {_mean(objectness):.3f} ({olo:.3f}-{ohi:.3f}); by reference kind:")
        report["by_referring"] = {}
        for kind in sorted(set(kinds), key=lambda k: (-kinds.count(k), k)):  # ties by name, not hash order
            at = [i for i, k in enumerate(kinds) if k == kind]
            mine, base = _mean(per_clip[i] for i in at), _mean(objectness[i] for i in at)
            blind_mine, which = _mean(blind_auc[i] for i in at), _mean(among[i] for i in at)
            report["by_referring"][kind] = {
                "clips": len(at),
                "pointing_auc": mine,
                "blind_pointing_auc": blind_mine,
                "blind_among_objects": which,
                "objectness_auc": base,
            }
            among_text = "-" if which is None else f"{which:.3f}"
            print(
                f"  {kind}: {len(at)} clips, pointing {mine:.3f}, blind {blind_mine:.3f}, among objects {among_text}, "
                f"objectness {base:.3f}"
            )
        print("| signal | which | agreement with verifier EA (95% CI) | pairs | best-of-K dEA vs random (95% CI) |")
        print("|---|---|---|---|---|")
        for name, values in signals.items():
            picks = [max(g, key=lambda j: (values[j], -g.index(j))) for g in groups]
            diffs = [truth[p] - m for p, m in zip(picks, mean_ea)]
            dlo, dhi = bootstrap_ci(diffs, draws=4000)
            report[name] = {"best_of_k_vs_random": [_mean(diffs), dlo, dhi]}
            for kind, (agree, pairs) in agreements(groups, truth, values).items():
                alo, ahi = bootstrap_ci(agree, draws=4000)
                report[name][kind] = [_mean(agree), alo, ahi, pairs]
                print(
                    f"| {name} | {kind} | {_mean(agree):.3f} ({alo:.3f}-{ahi:.3f}) | {pairs} | "
                    f"{_mean(diffs):+.3f} ({dlo:+.3f}..{dhi:+.3f}) |"
                )
        result[label] = report
    if json_out:
        Path(json_out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
