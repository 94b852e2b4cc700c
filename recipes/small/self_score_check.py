"""Does the editor itself rank its candidates of one clip? (docs/small_models.md, section 36)

A candidate y (its frames re-encoded by the editor's VAE) is scored by the editor's own flow-matching loss on it,
conditioned on the source and the instruction: for K shared draws of noise eps at each sigma s (the same draws for
every candidate of a clip, so their differences are not draw noise), x = (1 - s) y + s eps and the loss
|v(x, s) - (eps - y)|^2 averaged over latents (a Monte-Carlo estimate of y's negative ELBO under the editor, the
"diffusion classifier" idea). Lower loss = the edit the editor finds more likely for this instruction. Also the
contrast loss(negative prompt) - loss(instruction). Each score is measured as `best_of_n_check.py` measures a judge:
within-clip pair agreement with the verifier's EA (chance 0.5; all pairs, and the clear pairs whose EA differs by
more than best_of_n_check.CLEAR_MARGIN) and the best-of-K pick's EA minus a random pick's,
95% bootstrap intervals over clips; per sigma, summed, and as the mean of within-clip z-scores over sigmas.

    PYTHONPATH=. python recipes/small/self_score_check.py data/eval_heldout/heldout.jsonl runs/bon/judge_data \
        [--draws 4] [--sigmas 0.1,0.3,0.5,0.7,0.9] [--editor FOLDER] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from best_of_n_check import CLEAR_MARGIN, candidates, pair_agreement
from table import bootstrap_ci
from tqdm import tqdm

from viva_core import bundled
from viva_core.editor import EditorOptions, load_editor
from viva_core.pipeline import dit_velocity, encode_frames, pad_tokens, unconditional
from viva_core.runtime import bf16_is_fast, parse_device
from viva_core.train.pretrain import frames_float, load_clip_set
from viva_core.train.pretrain.judge_data import FRAMES_FILE


def flow_losses(editor, clips, clip: list[int], groups: list[list[int]], frames, sigmas: list[float], draws: int):
    """[outputs, sigmas, 2] mean flow-matching loss of every output, conditioned on its instruction (0) and on the
    negative prompt (1), over `draws` noises per sigma shared by the outputs of one clip (seeded by the clip)."""
    negative = unconditional(editor)
    length, dt = editor.max_text_tokens, editor.dtype
    losses = torch.zeros(len(clip), len(sigmas), 2)
    with torch.no_grad():
        for g in tqdm(groups, desc="clips"):
            c = clip[g[0]]
            src = encode_frames(editor, frames_float(clips.source[c]))
            y = torch.cat([encode_frames(editor, frames_float(torch.from_numpy(np.array(frames[j])))) for j in g]).cpu()
            cond = editor.encode_text(clips.records[c]["instruction"])
            rows = [pad_tokens(cond.embeds, length)] * len(g) + [pad_tokens(negative.embeds, length)] * len(g)
            text = torch.cat(rows).to(editor.device, dt)
            gen = torch.Generator().manual_seed(1000 + c)
            for si, s in enumerate(sigmas):
                for _ in range(draws):
                    eps = torch.randn(y.shape[1:], generator=gen).expand_as(y)
                    x = (1 - s) * y + s * eps
                    v = dit_velocity(editor.transformer, torch.cat([x, x]), src, s, text, dt).cpu()
                    err = ((v - torch.cat([eps - y, eps - y])) ** 2).mean((1, 2, 3, 4)).view(2, len(g))
                    losses[g, si] += err.T / draws
    return losses


def measure(name: str, score: np.ndarray, groups: list[list[int]], ea: list[float]) -> dict:
    per_clip, pairs = pair_agreement(groups, ea, [float(x) for x in score])
    clear, clear_pairs = pair_agreement(groups, ea, [float(x) for x in score], CLEAR_MARGIN)
    gain = [ea[max(g, key=lambda j: (score[j], -j))] - float(np.mean([ea[j] for j in g])) for g in groups]
    row = {
        "score": name,
        "pair_agreement": float(np.mean(per_clip)),
        "agreement_ci": bootstrap_ci(per_clip),
        "pick_minus_random": float(np.mean(gain)),
        "gain_ci": bootstrap_ci(gain),
        "pairs": pairs,
        "clear_pair_agreement": float(np.mean(clear)),
        "clear_agreement_ci": bootstrap_ci(clear),
        "clear_pairs": clear_pairs,
    }
    (lo, hi), (clo, chi), (glo, ghi) = row["agreement_ci"], row["clear_agreement_ci"], row["gain_ci"]
    print(
        f"| {name} | {row['pair_agreement']:.3f} ({lo:.3f}-{hi:.3f}) | {row['clear_pair_agreement']:.3f} "
        f"({clo:.3f}-{chi:.3f}) | {row['pick_minus_random']:+.3f} ({glo:+.3f}..{ghi:+.3f}) |"
    )
    return row


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("manifest")
    p.add_argument("candidates", help="a judge_data folder of the same clips (frames.npy, labels.jsonl)")
    p.add_argument("--draws", type=int, default=4, help="noises per sigma, shared by a clip's candidates")
    p.add_argument("--sigmas", default="0.1,0.3,0.5,0.7,0.9")
    p.add_argument("--editor", default=None, help="an editor folder (default: the bundled one)")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    sigmas = [float(s) for s in a.sigmas.split(",")]
    dtype = "bf16" if bf16_is_fast(parse_device("auto")) else "fp32"  # as `viva edit` runs the bundled editor
    editor = load_editor(a.editor or str(bundled.path(bundled.EDITOR)), options=EditorOptions(dtype=dtype))
    clips = load_clip_set(a.manifest)
    folder = Path(a.candidates)
    clip, groups, scores = candidates(clips, folder)
    frames = np.load(folder / FRAMES_FILE, mmap_mode="r")
    losses = flow_losses(editor, clips, clip, groups, frames, sigmas, a.draws).numpy()
    ea = [s["EA"] for s in scores]
    print(f"{len(groups)} clips x {len(groups[0])} candidates, {a.draws} draws x sigmas {sigmas}, {dtype}")
    print(f"| score (higher picks) | agreement with verifier EA | clear pairs (EA apart > {CLEAR_MARGIN}) ", end="")
    print("| best pick EA - random pick (95% CI) |")
    print("|---|---|---|---|")
    rows = [measure(f"-loss, sigma {s:g}", -losses[:, i, 0], groups, ea) for i, s in enumerate(sigmas)]
    rows.append(measure("-loss, summed over sigmas", -losses[:, :, 0].sum(1), groups, ea))
    z = np.zeros(len(clip))
    for g in groups:  # each sigma's losses standardised within the clip, so no sigma's scale dominates
        sub = losses[g, :, 0]
        z[g] = ((sub - sub.mean(0)) / (sub.std(0) + 1e-12)).mean(1)
    rows.append(measure("-loss, mean within-clip z over sigmas", -z, groups, ea))
    rows.append(
        measure("loss(negative) - loss(instruction), summed", (losses[:, :, 1] - losses[:, :, 0]).sum(1), groups, ea)
    )
    oracle = float(np.mean([max(ea[j] for j in g) - np.mean([ea[j] for j in g]) for g in groups]))
    print(f"oracle (best verifier EA) - random pick: {oracle:+.3f}")
    if a.json:
        Path(a.json).write_text(json.dumps({"sigmas": sigmas, "draws": a.draws, "rows": rows, "oracle_gain": oracle}))


if __name__ == "__main__":
    main(sys.argv[1:])
