"""Stage `judge` of `viva pretrain`: candidate edits (ground truth and corruptions) and the judge trained on them."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import InputError
from ...runtime import ProgressFn, no_progress, parse_device
from ...synth import Clip
from .clips import ClipSet, frames_float, load_clip_set
from .config import JUDGE_CANDIDATES, JudgeSection, ScratchConfig
from .judge_data import EditorOutputs, load_editor_outputs
from .loop import _autocast, _loop, _masked_attention, _one_thread, _write_json
from .models import check_vocabulary, resample_vision_patch, save_small, write_vlm_folder
from .tokenizers import prompt_texts, vocabulary, word_tokenizer

log = logging.getLogger(__name__)


CANDIDATES = JUDGE_CANDIDATES
GROUND_HEAD_FILE = "ground_head.safetensors"  # judge.ground_weight's pointing head, beside the judge's weights
# The judge's label of each candidate on each question, by construction: each corruption fails exactly the
# questions it targets (True = "Yes"). None: the exact EA verifier decides (a shifted edit may still be the asked
# edit). Labelling every cell by the benchmark's verifiers instead told the judge that a flickering copy is
# natural (GN verifier >= 0.5 for 89%) and a blurred one an accurate edit 69% of the time; docs/small_models.md,
# section 9.
CANDIDATE_LABELS: dict[str, dict[str, Optional[bool]]] = {
    "target": {"EA": True, "PC": True, "GN": True, "GR": True},
    "source": {"EA": False, "PC": True, "GN": True, "GR": True},  # nothing edited
    "other": {"EA": False, "PC": False, "GN": True, "GR": True},  # another clip's edit
    "blend": {"EA": False, "PC": True, "GN": True, "GR": False},  # half-done edit: a ghost of both
    "flicker": {"EA": True, "PC": True, "GN": False, "GR": True},  # one frame of the source inside the edit
    "blur": {"EA": True, "PC": False, "GN": True, "GR": False},  # the edit, blurred everywhere
    "shifted": {"EA": None, "PC": False, "GN": True, "GR": True},  # the edit, displaced by 3-7 pixels
    # The same source edited by another instruction (`wrong_edit`): a real edit's change, so EA can only reject it
    # by reading the instruction. PC None: "Yes" iff it changes nothing outside the truth's edit mask.
    "wrong": {"EA": False, "PC": None, "GN": True, "GR": True},
}


def wrong_edit(clips: ClipSet, c: int, rng: np.random.Generator, exclude=()) -> Optional[tuple[Clip, bool]]:
    """Clip c's source edited by a different single operation/value/object (`synth.another_edit`, a few ms), and
    whether it leaves everything outside c's edit mask unchanged (its PC answer to c's instruction); None where the
    npz holds no worlds or no such edit was found. Half of them use one of the truth's operations (another value or
    object: a change of the truth's size and kind, e.g. the wrong colour or the wrong square), the rest any."""
    from ...synth import OBJECT_OPS, OPERATIONS, World
    from ...synth.clips import another_edit, changed_objects, record_edits

    rec = clips.records[c]
    if c >= len(clips.worlds) or clips.worlds[c] is None or "operation" not in rec:
        return None
    world, target_world = (World.from_json(w) for w in clips.worlds[c])
    changed = changed_objects(world, target_world) or {None}
    ops, values, _ = record_edits(rec)
    truth = list(zip(ops, values if len(values) == len(ops) else [None] * len(ops)))  # None: any value
    avoid = [(op, a, o) for op, a in truth for o in (changed if op in OBJECT_OPS else [None])]
    frames, same = clips.source.shape[1], rng.random() < 0.5
    clip = (
        another_edit(rng, world, frames, avoid, exclude, [op for op, _ in truth if op in OPERATIONS]) if same else None
    )
    clip = clip or another_edit(rng, world, frames, avoid, exclude)
    if clip is None or np.array_equal(clip.target, clips.target[c].numpy()):
        return None
    touched = (clip.target != clip.source).any(-1)
    return clip, not bool((touched & ~clips.mask[c].bool().numpy()).any())


def corrupt(
    kind: str, source: torch.Tensor, target: torch.Tensor, other: torch.Tensor, rng: np.random.Generator
) -> torch.Tensor:
    """A candidate edit [T,H,W,3] 0..1 of one clip: the truth, the unedited source, another clip's target, a
    half-way blend, the truth with one frame swapped for the source's, a blurred truth, or a shifted truth."""
    if kind == "target":
        return target
    if kind == "source":
        return source
    if kind == "other":
        return other
    if kind == "blend":
        return 0.5 * source + 0.5 * target
    if kind == "flicker":
        out = target.clone()
        t = int(rng.integers(1, target.shape[0]))
        out[t] = source[t] if not torch.equal(source[t], target[t]) else 1 - target[t]
        return out
    if kind == "blur":
        x = target.permute(0, 3, 1, 2)
        return F.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=False).permute(0, 2, 3, 1)
    if kind == "shifted":
        return torch.roll(target, shifts=(int(rng.integers(3, 8)), int(rng.integers(3, 8))), dims=(1, 2))
    raise InputError(f"unknown candidate kind '{kind}'; one of {CANDIDATES}.")


class _JudgeData(torch.utils.data.Dataset):
    """Item i: four (question chat, verifier label) pairs for one candidate edit of a clip."""

    def __init__(
        self,
        clips: ClipSet,
        sec: JudgeSection,
        seed: int,
        size: int,
        per_step: int = 1,
        outputs: Optional[EditorOutputs] = None,
    ):
        self.clips, self.sec, self.seed, self.size, self.per_step = clips, sec, seed, size, per_step
        self.outputs = outputs  # real editor outputs (stage judge_data), drawn with probability sec.editor_share

    def __len__(self) -> int:
        return self.size

    def _draw(self, i: int) -> tuple[np.random.Generator, int, int, str, Optional[int]]:
        """Item i's seeded draws: (its generator, clip, another clip, candidate kind, editor output or None)."""
        rng = np.random.default_rng([self.seed, i])
        n, kinds = len(self.clips), self.sec.candidates.split(",")
        c, o = int(rng.integers(n)), int(rng.integers(n))
        kind = kinds[int(rng.integers(len(kinds)))]
        first = i < self.sec.gt_source_steps * self.per_step  # the curriculum's first steps
        if first or (self.sec.gt_source_share and rng.random() < self.sec.gt_source_share):
            kind = ("target", "source")[int(rng.integers(2))]
        elif self.outputs is not None and rng.random() < self.sec.editor_share:
            return rng, c, o, "editor", int(rng.integers(len(self.outputs)))
        return rng, c, o, kind, None

    def example(self, i: int) -> tuple[int, torch.Tensor, torch.Tensor, dict[str, Optional[bool]], str]:
        """(clip index, source, candidate, Yes/No label per question, kind) of item i (seeded by item)."""
        return self._example(self._draw(i))

    def _example(
        self, draw: tuple[np.random.Generator, int, int, str, Optional[int]]
    ) -> tuple[int, torch.Tensor, torch.Tensor, dict[str, Optional[bool]], str]:
        """`example` from item i's draws (`_draw`)."""
        from ...eval import edit_accuracy
        from ...synth import DEFAULT_HELDOUT

        rng, c, o, kind, j = draw
        if j is not None:
            return self.output_example(j)
        src, tgt = frames_float(self.clips.source[c]), frames_float(self.clips.target[c])
        kind, cand, labels = self.candidate(kind, c, o, src, tgt, rng, DEFAULT_HELDOUT)
        if labels["EA"] is None:
            rec = self.clips.records[c]
            ea, _ = edit_accuracy(src, cand, tgt, self.clips.mask[c].bool(), rec.get("verify"), rec.get("operation"))
            labels["EA"] = ea >= self.sec.threshold
        return c, src, cand, labels, kind

    def output_example(self, j: int) -> tuple[int, torch.Tensor, torch.Tensor, dict[str, Optional[bool]], str]:
        """Editor output j (stage judge_data) as an example: its clip's source, the output, its verifier labels."""
        c = self.outputs.clip[j]
        cand = frames_float(torch.from_numpy(np.array(self.outputs.frames[j])))
        return c, frames_float(self.clips.source[c]), cand, dict(self.outputs.labels[j]), "editor"

    def candidate(
        self, kind: str, c: int, o: int, src: torch.Tensor, tgt: torch.Tensor, rng: np.random.Generator, exclude=()
    ) -> tuple[str, torch.Tensor, dict[str, Optional[bool]]]:
        """(kind, candidate frames, labels) of clip c: a wrong edit of its source, else a corruption of its truth
        (another clip's edit: clip o's); a "wrong" that cannot be made (no worlds in the npz, no other edit) becomes
        "other". Labels by construction, a wrong edit's PC from the truth's mask."""
        labels = dict(CANDIDATE_LABELS[kind])
        wrong = wrong_edit(self.clips, c, rng, exclude) if kind == "wrong" else None
        if kind == "wrong" and wrong is None:
            kind, labels = "other", dict(CANDIDATE_LABELS["other"])
        if wrong is not None:
            labels["PC"] = wrong[1]
            return kind, frames_float(torch.from_numpy(wrong[0].target)), labels
        return kind, corrupt(kind, src, tgt, frames_float(self.clips.target[o]), rng).clamp(0, 1), labels

    def __getitem__(self, i: int):
        """Item i's chats, labels, ranking preferences and the edit masks of its clip at the frames the judge sees
        (`edit_masks`, one per edit shown); with judge.rank_weight an editor output comes with another output of the
        same clip (8 chats: 4 questions of each) and, per question, which of the two is better
        (`EditorOutputs.preferences`: +1 the first, -1 the second, 0 no pair), which `_collate_judge` turns into
        ranking pairs."""
        draw = self._draw(i)
        example = self._example(draw)
        chats, labels = self.chats(*example)
        masks = self.edit_masks(example[0])[None]
        j = draw[4]  # the editor output of this item, or None
        sibling = None
        if j is not None and self.sec.rank_weight > 0:
            sibling = self.outputs.sibling(j, np.random.default_rng([self.seed, i, 1]))
        if sibling is None:
            return chats, labels, [], masks
        more_chats, more_labels = self.chats(*self.output_example(sibling))
        prefs = self.outputs.preferences(j, sibling, self.sec.rank_margin)
        return chats + more_chats, labels + more_labels, prefs, masks.expand(2, *masks.shape[1:])

    def edit_masks(self, c: int) -> torch.Tensor:
        """Clip c's edit mask [frames, H, W] at the frames the judge sees (the grounding loss's targets)."""
        from ...judge import moment_frames

        return moment_frames(self.clips.mask[c], self.sec.frames, self.sec.frame_pairs)[0]

    def chats(self, c: int, src: torch.Tensor, cand: torch.Tensor, answers: dict[str, Optional[bool]], kind: str):
        """The four question chats of one example and their labels (-1: left out of the loss)."""
        from ...judge import DIMENSIONS, INSTRUCTION_LEAD, Judge, difference_images, frame_images, moment_frames

        instruction = self.clips.records[c]["instruction"]
        pairs = self.sec.frame_pairs
        s_img = frame_images(*moment_frames(src, self.sec.frames, pairs))
        e_img = frame_images(*moment_frames(cand, self.sec.frames, pairs))
        d_img = difference_images(src, cand, self.sec.frames, pairs=pairs) if self.sec.difference else []
        lead = INSTRUCTION_LEAD.format(instruction=instruction) if self.sec.instruction_first else ""
        chats, labels = [], []
        for d in DIMENSIONS:
            chats.append(Judge.messages(s_img, e_img, Judge.question_text(d, instruction), d_img, lead))
            masked = answers[d] is None or (d == "EA" and kind in self.sec.ea_unlabelled.split(","))
            labels.append(-1.0 if masked else float(answers[d]))
        return chats, labels


class CandidateSet(_JudgeData):
    """Every candidate kind of every clip, in order (another clip's edit: the next clip's), for held-out AUCs; a
    shifted edit's EA unlabelled (None); "wrong" falls back to "other" where a clip has no other edit."""

    def __init__(self, clips: ClipSet, sec: JudgeSection):
        super().__init__(clips, sec, 0, len(clips) * len(CANDIDATES))

    def example(self, i: int) -> tuple[int, torch.Tensor, torch.Tensor, dict[str, Optional[bool]], str]:
        c, k = divmod(i, len(CANDIDATES))
        kind, n, rng = CANDIDATES[k], len(self.clips), np.random.default_rng([7, i])
        src, tgt = frames_float(self.clips.source[c]), frames_float(self.clips.target[c])
        kind, cand, labels = self.candidate(kind, c, (c + 1) % n, src, tgt, rng)
        return c, src, cand, labels, kind


def candidate_aucs(vlm, data: CandidateSet, batch: int = 16) -> tuple[dict[str, float], dict[str, float]]:
    """Held-out ROC-AUC of P(Yes) per question over the candidates its by-construction label covers (a shifted
    edit's EA left out; the wrong edit of the same source is one of EA's negatives), EA_gt_src over ground truth vs
    unedited source only (judge_check.py's headline), EA_gt_wrong over ground truth vs that wrong edit; and the
    mean EA P(Yes) per candidate kind."""
    from ...eval import roc_auc
    from ...judge import DIMENSIONS, yes_no_token_ids

    yes, no = yes_no_token_ids(vlm.tokenizer)
    collate, margins, kinds, answers = _collate_judge(vlm.processor), [], [], []
    with torch.no_grad():
        for lo in range(0, len(data), batch):
            items = []
            for i in range(lo, min(lo + batch, len(data))):
                ex = data.example(i)
                kinds.append(ex[4])
                answers.append(ex[3])
                items.append((*data.chats(*ex), [], data.edit_masks(ex[0])[None]))  # no ranking pairs
            inputs, _, _, _ = collate(items)
            margins.append(judge_margins(vlm, inputs.to(vlm.device), yes, no).float().cpu().view(-1, len(DIMENSIONS)))
    m = torch.cat(margins)
    aucs = {}
    for q, d in enumerate(DIMENSIONS):
        keep = [i for i, a in enumerate(answers) if a[d] is not None]
        aucs[d] = roc_auc(m[keep, q].tolist(), [answers[i][d] for i in keep])
    for name, neg in (("EA_gt_src", "source"), ("EA_gt_wrong", "wrong")):
        pair = [i for i, k in enumerate(kinds) if k in ("target", neg)]
        if neg in [kinds[i] for i in pair]:
            aucs[name] = roc_auc(m[pair, 0].tolist(), [kinds[i] == "target" for i in pair])
    p_ea = {k: float(torch.sigmoid(m[[i for i, x in enumerate(kinds) if x == k], 0]).mean()) for k in set(kinds)}
    return aucs, {k: p_ea[k] for k in CANDIDATES if k in p_ea}


def _collate_judge(processor):
    from ...vlm import processor_inputs

    def collate(items):
        """(processor inputs, labels, ranking pairs [P, 2], edit masks [edits, frames, H, W]): a pair is the flat
        indices of the better and the worse answer to one question about two outputs of one clip (an 8-chat item of
        `_JudgeData.__getitem__` with its preferences)."""
        chats, labels, pairs = [], [], []
        for cs, ys, prefs, _ in items:
            base = len(labels)
            chats += cs
            labels += ys
            half = len(ys) // 2
            for q, p in enumerate(prefs):
                if p:
                    pairs.append((base + q, base + half + q) if p > 0 else (base + half + q, base + q))
        pair_tensor = torch.tensor(pairs, dtype=torch.long).view(-1, 2)
        masks = torch.cat([item[3] for item in items])
        return processor_inputs(processor, chats), torch.tensor(labels), pair_tensor, masks

    return collate


def judge_margins(vlm, inputs, yes_ids, no_ids, questions: int = 4, host_positions: bool = True, hidden: bool = False):
    """log P(Yes) - log P(No) at the answer position of each chat (the logit of P(Yes), what the loss reads). The
    chats come in runs of `questions` about one edit, so the vision tower encodes each edit's images once;
    `host_positions`: the M-RoPE position ids from host copies (`vlm.forward_shared_images`). `hidden`: also the
    last layer's states [chats, L, D] (what `GroundHead` reads)."""
    from ...vlm import forward_shared_images

    out = forward_shared_images(vlm, inputs, questions, host_positions=host_positions, output_hidden_states=hidden)
    logits = out.logits[:, -1].float()
    margin = torch.logsumexp(logits[:, yes_ids], -1) - torch.logsumexp(logits[:, no_ids], -1)
    return (margin, out.hidden_states[-1]) if hidden else margin


class GroundHead(torch.nn.Module):
    """Where the EA answer position points among the source frames' visual tokens: logit_k = q(answer) . k(token_k)
    / sqrt(d) + b, read as a softmax over the tokens (`ground_loss`; b, which a softmax ignores, is from a first
    per-token version and stays so that the heads measured in section 46 load). A pointer rather than a per-token
    probe because in the judge's prompt the instruction comes after the frames, so only the answer position has
    read both (judge.ground_weight; docs/small_models.md, section 46)."""

    def __init__(self, hidden: int, dim: int = 64):
        super().__init__()
        self.query, self.key = torch.nn.Linear(hidden, dim), torch.nn.Linear(hidden, dim)
        self.bias = torch.nn.Parameter(torch.zeros(()))

    def forward(self, answer: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """answer [R, D], tokens [R, N, D] -> pointing logits [R, N]."""
        q, k = self.query(answer), self.key(tokens)
        return torch.einsum("rd,rnd->rn", q, k) / q.shape[-1] ** 0.5 + self.bias


def ground_logits(
    head: GroundHead,
    hidden: torch.Tensor,
    input_ids: torch.Tensor,
    image_token_id: int,
    source_tokens: int,
    questions: int = 4,
) -> torch.Tensor:
    """The pointing logits [edits, source_tokens] of each run's EA chat (its first: DIMENSIONS[0] is EA) over the
    first `source_tokens` image tokens of that chat (the source frames: `Judge.messages` shows them first)."""
    rows = torch.arange(0, hidden.shape[0], questions, device=hidden.device)
    states, ids = hidden[rows], input_ids[rows].to(hidden.device)
    tokens = states[ids == image_token_id].view(len(rows), -1, states.shape[-1])[:, :source_tokens]
    return head(states[:, -1], tokens)


def ground_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the pointer's softmax over the source tokens against where the edit mask lies (each token's
    edited share, normalised; edits whose mask misses the shown frames left out). A softmax, not a per-token sigmoid:
    one object covers 1-2 of 64 tokens, and per-token BCE was met by the instruction's prior alone (edit local or
    global) without pointing anywhere (docs/small_models.md, section 46)."""
    total = target.sum(-1)
    keep = total > 0
    if not keep.any():
        return logits.sum() * 0.0
    p = target[keep] / total[keep, None]
    return -(p * torch.log_softmax(logits[keep].float(), -1)).sum(-1).mean()


def ground_targets(masks: torch.Tensor, grid_thw: torch.Tensor, merge: int) -> torch.Tensor:
    """Edit masks [edits, frames, H, W] -> the edited share of each source-frame token [edits, frames * tokens], in
    the order `ground_logits` reads them."""
    from .editor import grounding_targets

    return grounding_targets(masks.flatten(0, 1), grid_thw, merge).view(masks.shape[0], -1)


def _continued_judge(init: Path, folder: Path, sec: JudgeSection, words: list[str]) -> Path:
    """A copy of a judge folder this stage wrote, to continue training: it must see what this run shows (frames,
    difference frames; frame pairs may change, the patch embedding reads both temporal slots) and know every training
    word. Its held-out scores describe the old weights, so they stay behind (`judge_check.py --record` measures the
    new ones). A smaller `judge.vlm.patch` than the folder's resamples its patch embedding (`resample_vision_patch`):
    more visual tokens per frame, starting from what it learned."""
    from transformers import AutoTokenizer

    from ...judge import JUDGE_INFO_FILE, judge_info

    info = judge_info(init)
    if info is None:
        raise InputError(f"{init}: no {JUDGE_INFO_FILE}; judge.init takes a folder written by `viva pretrain judge`.")
    if (bool(info.get("difference_frames")), int(info.get("frames", sec.frames))) != (sec.difference, sec.frames):
        raise InputError(
            f"{init}: trained on {info.get('frames')} frames with difference_frames={info.get('difference_frames')}; "
            "set judge.frames and judge.difference to match."
        )
    check_vocabulary(AutoTokenizer.from_pretrained(init), words, init)
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(init, folder, ignore=shutil.ignore_patterns(JUDGE_INFO_FILE))
    resample_vision_patch(folder, sec.vlm.patch)
    return folder


def _ground_head(vlm, folder: Path, device) -> GroundHead:
    """judge.ground_weight's head, continued from the judge folder's own where it has one (judge.init)."""
    head = GroundHead(vlm.model.config.text_config.hidden_size)
    if (folder / GROUND_HEAD_FILE).is_file():
        from safetensors.torch import load_file

        head.load_state_dict(load_file(folder / GROUND_HEAD_FILE))
    return head.to(device).train()


def train_judge(cfg: ScratchConfig, progress: ProgressFn = no_progress) -> Path:
    from ...judge import JUDGE_INFO_FILE, yes_no_token_ids
    from ...vlm import load_vlm

    sec, out, device = cfg.judge, Path(cfg.output_dir), parse_device(cfg.device)
    clips = load_clip_set(cfg.data.manifest, cfg.data.limit)
    words = vocabulary(prompt_texts(clips.records))
    if sec.init:
        folder = _continued_judge(Path(sec.init), out / "judge", sec, words)
    else:
        folder = write_vlm_folder(out / "judge", word_tokenizer(words, kind="qwen"), sec.vlm, cfg.seed)
    vlm = load_vlm(folder, dtype="fp32", device=device)
    vlm.model.train().requires_grad_(True)
    yes_ids, no_ids = yes_no_token_ids(vlm.tokenizer)
    head = _ground_head(vlm, folder, device) if sec.ground_weight > 0 else None
    merge, image_token = int(vlm.model.config.vision_config.spatial_merge_size), vlm.model.config.image_token_id
    per_item = cfg.optim.batch_size
    outputs = load_editor_outputs(sec.editor_outputs, clips, sec.threshold) if sec.editor_share > 0 else None
    data = _JudgeData(clips, sec, cfg.seed, cfg.optim.steps * per_item, per_item, outputs)
    loader = torch.utils.data.DataLoader(
        data,
        batch_size=per_item,
        shuffle=False,
        num_workers=cfg.optim.workers,
        collate_fn=_collate_judge(vlm.processor),
        worker_init_fn=_one_thread,
    )
    batches = iter(loader)

    def step(i: int) -> dict:
        inputs, labels, pairs, masks = next(batches)
        labels, pairs = labels.to(device), pairs.to(device)
        with _autocast(device), _masked_attention(device):
            margin = judge_margins(
                vlm, inputs.to(device), yes_ids, no_ids, host_positions=sec.host_positions, hidden=head is not None
            )
            if head is not None:
                margin, hidden = margin
                target = ground_targets(masks, inputs["image_grid_thw"][0], merge).to(device)
                logits = ground_logits(head, hidden, inputs["input_ids"], image_token, target.shape[1])
        keep = labels >= 0  # judge.ea_unlabelled leaves some EA answers out
        loss = F.binary_cross_entropy_with_logits(margin[keep], labels[keep])
        acc = ((margin[keep] > 0).float() == labels[keep]).float().mean()
        out = {"accuracy": acc.detach()}
        if len(pairs):  # -log sigmoid(margin of the better output - margin of the worse one), per question
            rank = F.softplus(margin[pairs[:, 1]] - margin[pairs[:, 0]]).mean()
            loss = loss + sec.rank_weight * rank
            out["rank_loss"] = rank.detach()
        if head is not None:
            ground = ground_loss(logits, target)
            loss = loss + sec.ground_weight * ground
            out["ground_loss"] = ground.detach()
        return {"loss": loss, **out}

    params = list(vlm.model.parameters()) + (list(head.parameters()) if head is not None else [])
    summary = _loop(cfg, params, step, out, progress, "judge")
    save_small(vlm.model.eval(), folder)
    if head is not None:
        from safetensors.torch import save_file

        save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}, folder / GROUND_HEAD_FILE)
    _write_json(
        folder / JUDGE_INFO_FILE,
        {
            "difference_frames": sec.difference,
            "frames": sec.frames,
            "frame_pairs": sec.frame_pairs,
            "instruction_first": sec.instruction_first,
            "generates_text": False,  # trained on Yes/No answers only
            "trained_by": "viva pretrain judge",
        },
    )
    _write_json(out / "judge_summary.json", {"config": dataclasses.asdict(cfg), "result": summary})
    log.info("judge: %s", summary)
    return folder
