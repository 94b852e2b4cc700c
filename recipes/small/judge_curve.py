"""Held-out ROC-AUC per question while the judge trains: the trainer's own data, collate and loss
(`viva_core.train.pretrain.judge`), scored every --every steps on held-out clips' candidate edits against the
by-construction labels (CANDIDATE_LABELS; a shifted edit's EA left out). EA's headline is ground truth vs unedited
source (what `judge_check.py` measures), EA_gt_wrong ground truth vs the same source edited by another instruction.
CPU-sized; docs/small_models.md, sections 17 and 20, have the numbers:

    python recipes/small/judge_curve.py TRAIN_MANIFEST HELDOUT_MANIFEST --steps 300 --batch 8 --lr 1e-3
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from viva_core.judge import yes_no_token_ids
from viva_core.train import pretrain as S
from viva_core.train.config import scheduled_lr
from viva_core.train.pretrain.judge import _collate_judge, judge_margins
from viva_core.vlm import load_vlm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("train")
    ap.add_argument("heldout")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--clips", type=int, default=32, help="held-out clips scored (x8 candidates)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gt-source-share", type=float, default=0.0, help="judge.gt_source_share")
    ap.add_argument("--gt-source-steps", type=int, default=0, help="judge.gt_source_steps")
    ap.add_argument("--ea-unlabelled", default="", help="judge.ea_unlabelled")
    ap.add_argument("--candidates", default=S.JudgeSection.candidates, help="judge.candidates")
    ap.add_argument("--layers", type=int, default=3, help="as recipes/small/judge.toml")
    ap.add_argument("--time", type=int, default=0, help="only time N training steps, vision per question vs shared")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--init", default="", help="continue this judge folder (judge.init) instead of a fresh model")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    clips = S.load_clip_set(args.train)
    sec = S.JudgeSection(
        vlm=S.VLMSection(hidden=128, layers=args.layers),
        gt_source_share=args.gt_source_share,
        gt_source_steps=args.gt_source_steps,
        ea_unlabelled=args.ea_unlabelled,
        candidates=args.candidates,
    )
    if args.init:
        folder = Path(args.init)
    else:
        tok = S.word_tokenizer(S.vocabulary(S.prompt_texts(clips.records)), kind="qwen")
        folder = S.write_vlm_folder(Path(tempfile.mkdtemp(prefix="judge_curve_")) / "vlm", tok, sec.vlm, args.seed)
    vlm = load_vlm(folder, dtype="fp32", device="cpu")
    vlm.model.train().requires_grad_(True)
    yes, no = yes_no_token_ids(vlm.tokenizer)

    held = S.CandidateSet(S.load_clip_set(args.heldout, args.clips), sec)
    data = S._JudgeData(clips, sec, args.seed, args.steps * args.batch, args.batch)
    collate = _collate_judge(vlm.processor)
    if args.time:
        inputs, labels, _, _ = collate([data[i] for i in range(args.batch)])
        for questions in (1, 4, 1, 4):  # 1: the vision tower once per chat, as before; 4: once per edit
            t = time.perf_counter()
            for _ in range(args.time):
                m = judge_margins(vlm, inputs, yes, no, questions)
                F.binary_cross_entropy_with_logits(m, labels).backward()
            print(f"vision per {'edit' if questions == 4 else 'chat'}: {(time.perf_counter() - t) / args.time:.3f} s")
        return
    opt = torch.optim.AdamW(vlm.model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.99))
    t0, acc = time.perf_counter(), []
    for step in range(args.steps + 1):
        if step % args.every == 0:
            vlm.model.eval()
            a, ea = S.candidate_aucs(vlm, held)
            vlm.model.train()
            print(
                f"step {step:4d}  train acc {np.mean(acc) if acc else float('nan'):.2f}  held-out AUC "
                + "  ".join(f"{k} {v:.2f}" for k, v in a.items())
                + f"  {time.perf_counter() - t0:.0f} s\n    mean EA P(Yes) "
                + "  ".join(f"{k} {v:.2f}" for k, v in ea.items()),
                flush=True,
            )
            acc = []
        if step == args.steps:
            break
        for g in opt.param_groups:
            g["lr"] = scheduled_lr(args.lr, step, args.steps, args.warmup)
        inputs, labels, _, _ = collate([data[i] for i in range(step * args.batch, (step + 1) * args.batch)])
        m = judge_margins(vlm, inputs, yes, no)
        keep = labels >= 0
        loss = F.binary_cross_entropy_with_logits(m[keep], labels[keep])
        acc.append(float(((m[keep] > 0).float() == labels[keep]).float().mean()))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vlm.model.parameters(), 1.0)
        opt.step()


if __name__ == "__main__":
    main()
