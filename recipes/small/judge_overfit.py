"""Can the small judge architecture learn "ground truth vs unedited source" at all, and does it generalize?

N training clips and N other clips (synth 'basic' edits), each shown as (source, ground truth) -> Yes and
(source, source) -> No on the EA question; full-batch AdamW on the training pairs; ROC-AUC of P(Yes) on both sets.
`--difference` adds the |edited - source| frames the judge can be trained with (`judge.difference`). CPU is
enough (docs/small_models.md, section 5, has the numbers):

    python recipes/small/judge_overfit.py --clips 24 --steps 120 [--difference]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from viva_core.eval import roc_auc
from viva_core.judge import Judge, difference_images, yes_no_token_ids
from viva_core.synth import generate
from viva_core.train import pretrain as S
from viva_core.video import uniform_frame_indices
from viva_core.vlm import forward, load_vlm, processor_inputs, to_pil_image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=24)
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--difference", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    root = Path(tempfile.mkdtemp(prefix="judge_overfit_"))
    manifest = generate(root / "d", n=2 * args.clips, seed=1, format="npz", splits=(1, 0, 0), categories=("basic",))[
        "train"
    ]
    clips = S.load_clip_set(manifest)
    tok = S.word_tokenizer(S.vocabulary(S.prompt_texts(clips.records)), kind="qwen")
    sec = S.VLMSection(hidden=args.hidden, layers=args.layers)
    vlm = load_vlm(S.write_vlm_folder(root / "vlm", tok, sec, 0), dtype="fp32", device="cpu")
    vlm.model.train().requires_grad_(True)
    yes, no = yes_no_token_ids(vlm.tokenizer)

    def pairs(indices: range):
        chats, labels = [], []
        for c in indices:
            src, tgt = S.frames_float(clips.source[c]), S.frames_float(clips.target[c])
            picks = uniform_frame_indices(src.shape[0], args.frames)
            for cand, label in ((tgt, True), (src, False)):
                diff = difference_images(src, cand, args.frames) if args.difference else []
                chats.append(
                    Judge.messages(
                        [to_pil_image(src[k]) for k in picks],
                        [to_pil_image(cand[k]) for k in picks],
                        Judge.question_text("EA", clips.records[c]["instruction"]),
                        diff,
                    )
                )
                labels.append(label)
        return processor_inputs(vlm.processor, chats), labels

    def margins(inputs) -> torch.Tensor:
        logits = forward(vlm, inputs).logits[:, -1].float()
        return torch.logsumexp(logits[:, yes], -1) - torch.logsumexp(logits[:, no], -1)

    train, train_labels = pairs(range(args.clips))
    test, test_labels = pairs(range(args.clips, 2 * args.clips))
    opt = torch.optim.AdamW(vlm.model.parameters(), lr=args.lr, weight_decay=0.0)
    t0 = time.perf_counter()
    for step in range(args.steps + 1):
        m = margins(train)
        loss = F.binary_cross_entropy_with_logits(m, torch.tensor(train_labels, dtype=torch.float32))
        if step % max(1, args.steps // 8) == 0:
            with torch.no_grad():
                held = roc_auc(margins(test).tolist(), test_labels)
            print(
                f"step {step:4d}  loss {loss.item():.4f}  train AUC {roc_auc(m.tolist(), train_labels):.3f}  "
                f"held-out AUC {held:.3f}  {time.perf_counter() - t0:.0f} s",
                flush=True,
            )
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vlm.model.parameters(), 1.0)
        opt.step()


if __name__ == "__main__":
    main()
