"""Reward terms pinned to hand computations and independent model forwards (tiny random VLM and CLIP)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_vlm import build_tiny_vlm

from viva_core.errors import InputError, ModelLoadError, NonFiniteError
from viva_core.judge import DIMENSIONS, Judge
from viva_core.train.rewards import (
    CallableReward,
    ClipReward,
    JudgeReward,
    PreservationReward,
    RewardInput,
    build_rewards,
    load_callable,
    score_all,
)
from viva_core.vlm import load_vlm

CLIP_WORDS = "a photo of red blue green car cat dog sky the road".split()


def _close(a, b, rtol=1.3e-6, atol=1e-5):
    """torch.allclose with a message (torch.testing.assert_close costs a 2 s lazy import)."""
    assert a.shape == b.shape and torch.allclose(a, b, rtol=rtol, atol=atol), f"{a} != {b}"


def _videos(n=2, t=5, h=40, w=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, t, h, w, 3, generator=g), torch.rand(n, t, h, w, 3, generator=g)


def _batch(source, edited, **kw):
    return RewardInput(source=source, edited=edited, instructions=["make the sky red"] * source.shape[0], **kw)


# ------------------------------------------------------------------------------------------- RewardInput


def test_reward_input_checks_and_defaults():
    src, edit = _videos()
    b = _batch(src, edit)
    assert b.n == 2 and b.source_captions == [None, None] and b.target_captions == [None, None]
    with pytest.raises(InputError, match="N,T,H,W,3"):
        _batch(src[..., :2], edit)
    with pytest.raises(InputError, match="instructions"):
        RewardInput(source=src, edited=edit, instructions=["x"])
    with pytest.raises(InputError, match="masks"):
        _batch(src, edit, masks=torch.zeros(2, 5, 40, 47))
    with pytest.raises(InputError, match="captions"):
        _batch(src, edit, target_captions=["a"])


# ------------------------------------------------------------------------------------------- preservation


def test_preservation_hand_computed_with_masks():
    # One frame of 1x2 pixels; source black. Pixel 0 changes by 0.6 in every channel (mean 0.6), pixel 1 by
    # (0.3, 0, 0) (mean 0.1).
    src = torch.zeros(4, 1, 1, 2, 3)
    edit = torch.zeros(4, 1, 1, 2, 3)
    edit[:, 0, 0, 0] = 0.6
    edit[:, 0, 0, 1, 0] = 0.3
    masks = torch.tensor(
        [
            [0.0, 0.0],  # nothing masked: 1 - (0.6 + 0.1)/2 = 0.65
            [1.0, 0.0],  # pixel 0 is the edit: only pixel 1 counts, 1 - 0.1 = 0.9
            [1.0, 1.0],  # everything edited: nothing to preserve -> 1
            [0.5, 0.0],
        ]
    ).view(4, 1, 1, 2)  # soft: 1 - (0.5*0.6 + 1*0.1)/1.5 = 0.7333...
    got = PreservationReward()(_batch(src, edit, masks=masks))
    assert got.tolist() == pytest.approx([0.65, 0.9, 1.0, 1 - 0.4 / 1.5], abs=1e-6)
    whole = PreservationReward(outside_mask=False)(_batch(src, edit, masks=masks))
    assert whole.tolist() == pytest.approx([0.65] * 4, abs=1e-6)
    assert PreservationReward()(_batch(src, edit)).tolist() == pytest.approx([0.65] * 4, abs=1e-6)


def test_preservation_identical_is_one_and_range():
    src, edit = _videos(seed=3)
    assert PreservationReward()(_batch(src, src.clone())).tolist() == [1.0, 1.0]
    r = PreservationReward()(_batch(src, edit))
    assert bool(((r >= 0) & (r <= 1)).all())
    # independent plain computation over all pixels
    expected = [1 - float(np.abs(src[i].numpy() - edit[i].numpy()).mean()) for i in range(2)]
    assert r.tolist() == pytest.approx(expected, abs=1e-6)
    with pytest.raises(InputError, match="same frames"):
        PreservationReward()(_batch(src, edit[:, :3]))


# ------------------------------------------------------------------------------------------- callables


@pytest.fixture
def reward_module(tmp_path, monkeypatch):
    (tmp_path / "viva_test_reward_mod.py").write_text(
        "import torch\n"
        "def brightness(batch):\n"
        "    return batch.edited.mean(dim=(1, 2, 3, 4))\n"
        "def broken(batch):\n"
        "    return torch.full((batch.n,), float('nan'))\n"
        "def wrong_shape(batch):\n"
        "    return torch.zeros(batch.n, 2)\n"
        "class Scores:\n"
        "    @staticmethod\n"
        "    def as_list(batch):\n"
        "        return [0.25] * batch.n\n"
        "NOT_A_FUNCTION = 3\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "viva_test_reward_mod"


def test_load_callable_and_callable_reward(reward_module):
    src, edit = _videos()
    fn = load_callable(f"{reward_module}:brightness")
    r = CallableReward(fn, "bright")
    assert r.name == "bright"
    _close(r(_batch(src, edit)), torch.stack([edit[0].mean(), edit[1].mean()]))
    listed = CallableReward(load_callable(f"{reward_module}:Scores.as_list"), "listed")(_batch(src, edit))
    assert listed.tolist() == [0.25, 0.25]
    with pytest.raises(InputError, match="package.module:function"):
        load_callable(reward_module)
    with pytest.raises(InputError, match="cannot import"):
        load_callable("viva_no_such_module_xyz:fn")
    with pytest.raises(InputError, match="has no 'missing'"):
        load_callable(f"{reward_module}:missing")
    with pytest.raises(InputError, match="not a function"):
        load_callable(f"{reward_module}:NOT_A_FUNCTION")


def test_build_rewards_order_weights_and_score_all(reward_module):
    spec = {f"callable:{reward_module}:brightness": 0.2, "preservation": 0.5}
    rewards, weights = build_rewards(spec)
    assert [r.name for r in rewards] == list(spec)
    assert isinstance(rewards[1], PreservationReward)
    assert weights.dtype == torch.float32 and weights.tolist() == pytest.approx([0.2, 0.5])
    src, edit = _videos()
    table = score_all(rewards, _batch(src, edit))
    assert table.shape == (2, 2)
    _close(table[:, 0], edit.mean(dim=(1, 2, 3, 4)))
    _close(table[:, 1], 1 - (src - edit).abs().mean(dim=(1, 2, 3, 4)))


def test_build_rewards_errors():
    with pytest.raises(InputError, match="valid names: judge.*preservation.*clip.*callable"):
        build_rewards({"preservation": 1.0, "pickscore": 1.0})
    with pytest.raises(InputError, match="judge"):
        build_rewards({"judge": 1.0})
    with pytest.raises(InputError, match="clip_dir"):
        build_rewards({"clip": 1.0})
    with pytest.raises(InputError, match="finite"):
        build_rewards({"preservation": float("nan")})
    with pytest.raises(InputError):
        build_rewards({})


def test_score_all_rejects_nan_and_bad_shapes(reward_module):
    src, edit = _videos()
    batch = _batch(src, edit)
    broken = CallableReward(load_callable(f"{reward_module}:broken"), "callable:broken")
    with pytest.raises(NonFiniteError, match="callable:broken"):
        score_all([PreservationReward(), broken], batch)
    wrong = CallableReward(load_callable(f"{reward_module}:wrong_shape"), "wrong")
    with pytest.raises(InputError, match="'wrong' returned shape"):
        score_all([wrong], batch)


# ------------------------------------------------------------------------------------------- judge


@pytest.fixture(scope="module")
def judge(tmp_path_factory):
    return Judge(load_vlm(build_tiny_vlm(tmp_path_factory.mktemp("rw") / "vlm"), dtype="fp32", device="cpu"))


def test_judge_reward_is_mean_p_yes_of_chosen_dimensions(judge):
    src, edit = _videos(n=2, t=3, h=32, w=32, seed=5)
    instructions = ["make the sky red", "turn the car blue"]
    some = JudgeReward(judge, dimensions=("EA", "GR"), num_frames=2)(
        RewardInput(source=src, edited=edit, instructions=instructions)
    )
    one = RewardInput(source=src[:1], edited=edit[:1], instructions=instructions[:1])
    every = JudgeReward(judge, num_frames=2)(one)
    for i in range(2):
        scores = judge.score(src[i], edit[i], instructions[i], num_frames=2).scores
        assert float(some[i]) == pytest.approx((scores["EA"] + scores["GR"]) / 2, abs=1e-6)
        if i == 0:
            assert float(every[0]) == pytest.approx(sum(scores[d] for d in DIMENSIONS) / 4, abs=1e-6)
    assert bool(((some >= 0) & (some <= 1)).all()) and 0 <= float(every[0]) <= 1
    rewards, _ = build_rewards({"judge:EA+PC": 1.0}, judge=judge)
    assert rewards[0].dimensions == ("EA", "PC") and rewards[0].name == "judge:EA+PC"
    with pytest.raises(InputError, match="subset"):
        JudgeReward(judge, dimensions=("EA", "XX"))


def test_judge_reward_scores_many_records_in_one_judge_call(judge, monkeypatch):
    """The trainer's layout (one RewardInput per record, its source expanded over the group): score_records hands
    the judge every record's edits, and every judge term's questions, in one score_batch call, with each record's
    scores those of scoring it alone (and of `Judge.score`)."""
    from viva_core.train.rewards import score_records

    batches = []
    for r, n in enumerate((3, 1, 2)):
        src, edit = _videos(n=n, t=3, h=32, w=32, seed=10 + r)
        batches.append(
            RewardInput(source=src[:1].expand(n, -1, -1, -1, -1), edited=edit, instructions=[f"make {r} red"] * n)
        )
    reward = JudgeReward(judge, dimensions=("EA", "PC"), num_frames=2)
    alone = [reward(b) for b in batches]
    calls = []
    real = Judge.score_batch
    monkeypatch.setattr(Judge, "score_batch", lambda self, *a, **k: calls.append(len(a[0])) or real(self, *a, **k))
    got = score_records([reward, PreservationReward(outside_mask=False)], batches)
    assert calls == [6]
    for g, a, b in zip(got, alone, batches):
        assert g.shape == (b.n, 2)
        _close(g[:, 0], a, rtol=0, atol=1e-6)
        for i in range(b.n):
            s = judge.score(b.source[i], b.edited[i], b.instructions[i], num_frames=2).scores
            assert float(g[i, 0]) == pytest.approx((s["EA"] + s["PC"]) / 2, abs=1e-5)
    # a recipe's separate judge terms (judge:EA 1.0, judge:PC 0.25) share that one call, each its own column
    calls.clear()
    terms, _ = build_rewards({"judge:EA": 1.0, "verifier:EA": 0.0, "judge:PC+GR": 0.25}, judge=judge)
    for t in terms:
        if isinstance(t, JudgeReward):
            t.num_frames = 2
    labelled = [
        RewardInput(source=b.source, edited=b.edited, instructions=b.instructions, targets=b.edited.clone())
        for b in batches
    ]
    got = score_records(terms, labelled)
    assert len(calls) == 1 and calls[0] == 6
    for g, b in zip(got, batches):
        for i in range(b.n):
            s = judge.score(b.source[i], b.edited[i], b.instructions[i], num_frames=2).scores
            assert float(g[i, 0]) == pytest.approx(s["EA"], abs=1e-5)
            assert float(g[i, 2]) == pytest.approx((s["PC"] + s["GR"]) / 2, abs=1e-5)
    other = JudgeReward(judge, dimensions=("EA",), num_frames=3)  # another frame count: its own call
    calls.clear()
    score_records([reward, other], batches)
    assert calls == [6, 6]


# ------------------------------------------------------------------------------------------- CLIP


def _build_tiny_clip(out):
    """A random tiny CLIP folder: CLIPModel safetensors, a WordLevel tokenizer, a 32 px image processor."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast

    try:
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil as ImageProcessor
    except ImportError:  # transformers 4.x
        from transformers import CLIPImageProcessor as ImageProcessor

    out.mkdir(parents=True, exist_ok=True)
    special = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
    vocab = {t: i for i, t in enumerate(special + CLIP_WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", 2), ("[EOS]", 3)]
    )
    PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        bos_token="[BOS]",
        eos_token="[EOS]",
        model_max_length=16,
    ).save_pretrained(out)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=16,
            pad_token_id=0,
            bos_token_id=2,
            eos_token_id=3,
        ),
        vision_config=dict(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
        ),
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(out, safe_serialization=True)
    ImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return _build_tiny_clip(tmp_path_factory.mktemp("clip") / "clip")


def _pooled(out):
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def test_clip_reward_equals_independent_cosines(clip_dir):
    from transformers import CLIPModel, CLIPProcessor

    src, edit = _videos(n=2, t=5, h=40, w=48, seed=7)
    batch = _batch(
        src,
        edit,
        source_captions=["a photo of the road", "a green car"],
        target_captions=["a photo of a red sky", "a blue cat"],
    )
    got = ClipReward(clip_dir, "cpu", num_frames=2)(batch)

    model = CLIPModel.from_pretrained(clip_dir, local_files_only=True).eval()
    proc = CLIPProcessor.from_pretrained(clip_dir, local_files_only=True)

    def text_vec(caption):  # one caption at a time, no padding
        ids = proc.tokenizer(caption, return_tensors="pt")
        with torch.no_grad():
            return _pooled(model.get_text_features(**ids))[0].double()

    def image_vec(frame):  # one frame at a time, converted to 8-bit here
        img = Image.fromarray((np.clip(frame.numpy(), 0, 1) * 255).round().astype(np.uint8))
        with torch.no_grad():
            return _pooled(model.get_image_features(**proc(images=img, return_tensors="pt")))[0].double()

    cos = torch.nn.functional.cosine_similarity
    for i in range(2):
        t_tgt, t_src = text_vec(batch.target_captions[i]), text_vec(batch.source_captions[i])
        diffs = [
            float(cos(image_vec(edit[i, f]), t_tgt, dim=0) - cos(image_vec(edit[i, f]), t_src, dim=0)) for f in (0, 4)
        ]  # 2 frames of 5, spread from first to last
        assert float(got[i]) == pytest.approx(sum(diffs) / 2, abs=1e-5)
    assert bool((got.abs() <= 2).all()) and float(got.abs().max()) > 0

    same = _batch(src, edit, source_captions=["a red car"] * 2, target_captions=["a red car"] * 2)
    assert ClipReward(clip_dir, "cpu")(same).tolist() == [0.0, 0.0]


def test_clip_reward_errors(clip_dir, tmp_path):
    src, edit = _videos()
    reward = ClipReward(clip_dir, "cpu")
    with pytest.raises(InputError, match="target_captions"):
        reward(_batch(src, edit, source_captions=["a car", "a cat"], target_captions=["a red car", None]))
    with pytest.raises(InputError, match="source_captions"):
        reward(_batch(src, edit, target_captions=["a car", "a cat"]))
    with pytest.raises(ModelLoadError, match="not found"):
        ClipReward(tmp_path / "nowhere")
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "config.json").write_text("{}")
    (tmp_path / "pickled" / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="pickle"):
        ClipReward(tmp_path / "pickled")
    rewards, weights = build_rewards({"clip": 1.0, "preservation": 0.5}, clip_dir=clip_dir)
    assert isinstance(rewards[0], ClipReward) and weights.tolist() == [1.0, 0.5]


# ------------------------------------------------------------------------------------------- verifier


def test_verifier_reward_is_the_exact_benchmark_score(tmp_path):
    """On `viva synth` clips: the ground truth earns EA+PC = 1, the unedited source a low EA, and each value is
    eval.score_edit's mean over the named dimensions (the same labels `viva eval` reads)."""
    from viva_core.data import load_manifest, load_sample
    from viva_core.eval import manifest_extras, score_edit
    from viva_core.synth import generate
    from viva_core.train.rewards import VerifierReward

    manifest = generate(tmp_path, n=6, seed=3, format="npz", splits=(1, 0, 0), categories=("basic",))["train"]
    extras = manifest_extras(manifest)
    samples = [(load_sample(r), extras[r.line]) for r in load_manifest(manifest)]
    src = torch.stack([s.source for s, _ in samples])
    tgt = torch.stack([s.target for s, _ in samples])
    masks = torch.stack([s.mask for s, _ in samples])
    labels = [{"operation": e["operation"], "verify": e["verify"]} for _, e in samples]
    (reward,), weights = build_rewards({"verifier:EA+PC": 2.0})
    assert isinstance(reward, VerifierReward) and reward.dimensions == ("EA", "PC") and weights.tolist() == [2.0]
    truth = reward(_batch(src, tgt, masks=masks, targets=tgt, labels=labels))
    unedited = reward(_batch(src, src, masks=masks, targets=tgt, labels=labels))
    _close(truth, torch.ones(6), atol=1e-4)
    assert float(unedited.max()) <= 0.75  # EA of the source is ~0, PC is 1: mean about 0.5
    half = 0.5 * (src + tgt)
    got = VerifierReward(("EA", "GN"))(_batch(src, half, masks=masks, targets=tgt, labels=labels))
    want = []
    for i, lab in enumerate(labels):
        s = score_edit(src[i], half[i], tgt[i], masks[i], lab["verify"], lab["operation"])
        want.append(np.mean([v for v in (s.ea, s.gn) if v is not None]))
    _close(got, torch.tensor(want, dtype=torch.float32))
    with pytest.raises(InputError, match="no target_video"):
        reward(_batch(src, tgt))
    with pytest.raises(InputError, match="subset"):
        build_rewards({"verifier:EA+XY": 1.0})
    with pytest.raises(InputError, match="targets"):
        _batch(src, tgt, targets=tgt[:, :2])


def test_verifier_reward_equals_per_clip_eval_scores_on_mixed_operations(tmp_path):
    """The reward computes only the requested dimensions, checks each shared (`expand`ed) source/target/mask once and
    calls eval's functions per clip; an independent path, `eval.score_edit` clip by clip (all four dimensions), must
    give the same values: a batch of distinct clips of mixed operations, the trainer's layout (one record's rollouts
    against one expanded source, target and mask), and no masks (derived from source vs target)."""
    from viva_core.data import load_manifest, load_sample
    from viva_core.eval import manifest_extras, score_edit
    from viva_core.synth import generate
    from viva_core.train.rewards import VerifierReward

    manifest = generate(tmp_path, n=16, seed=0, format="npz", splits=(1, 0, 0), frames=5)["train"]
    extras = manifest_extras(manifest)
    records = load_manifest(manifest)
    samples = [load_sample(r) for r in records]
    labels = [{"operation": extras[r.line]["operation"], "verify": extras[r.line]["verify"]} for r in records]
    assert len({lab["operation"] for lab in labels}) >= 5
    src, tgt = torch.stack([s.source for s in samples]), torch.stack([s.target for s in samples])
    masks = torch.stack([s.mask for s in samples])
    g = torch.Generator().manual_seed(1)
    a = torch.rand(len(samples), 1, 1, 1, 1, generator=g)
    edit = ((1 - a) * src + a * tgt + 0.05 * torch.randn(src.shape, generator=g)).clamp(0, 1)
    edit[0] = tgt[0]  # the ground truth and the source themselves too
    edit[1] = src[1]

    def per_clip(dims, s, o, y, m, labs):
        out = []
        for i, lab in enumerate(labs):
            score = score_edit(s[i], o[i], y[i], None if m is None else m[i], lab["verify"], lab["operation"])
            kept = [v for v in (getattr(score, VerifierReward.FIELDS[d]) for d in dims) if v is not None]
            out.append(sum(kept) / len(kept) if kept else 0.0)
        return torch.tensor(out, dtype=torch.float32)

    for dims in (("EA", "PC"), ("EA",), ("PC",), ("EA", "PC", "GN", "GR"), ("GN", "GR")):
        reward = VerifierReward(dims)
        got = reward(_batch(src, edit, masks=masks, targets=tgt, labels=labels))
        _close(got, per_clip(dims, src, edit, tgt, masks, labels), rtol=0, atol=1e-6)
        got = reward(_batch(src, edit, targets=tgt, labels=labels))
        _close(got, per_clip(dims, src, edit, tgt, None, labels), rtol=0, atol=1e-6)
    # the trainer's layout: G rollouts of one record, its source, target and mask expanded over the group
    reward = VerifierReward(("EA", "PC"))
    for k in (2, 5):
        g_src, g_tgt = src[k : k + 1].expand(6, -1, -1, -1, -1), tgt[k : k + 1].expand(6, -1, -1, -1, -1)
        g_mask, g_lab = masks[k : k + 1].expand(6, -1, -1, -1), [labels[k]] * 6
        rollouts = edit[:6].clone()
        rollouts[0] = tgt[k]
        got = reward(_batch(g_src, rollouts, masks=g_mask, targets=g_tgt, labels=g_lab))
        _close(got, per_clip(("EA", "PC"), g_src, rollouts, g_tgt, g_mask, g_lab), rtol=0, atol=1e-6)
        assert float(got[0]) == pytest.approx(1.0, abs=1e-4)
    bad = edit.clone()
    bad[3, 0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN/Inf"):
        reward(_batch(src, bad, masks=masks, targets=tgt, labels=labels))


def test_score_records_threads_pure_rewards_and_keeps_order(monkeypatch):
    """Records are scored in threads only when every reward is parallel_safe; the results are score_all's, in order."""
    import threading

    from viva_core.train import rewards as R

    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    batches = [_batch(*_videos(n=3, seed=s)) for s in range(5)]
    pure = [PreservationReward(outside_mask=False)]
    got = R.score_records(pure, batches)
    assert len(got) == 5
    for g, b in zip(got, batches):
        assert torch.equal(g, score_all(pure, b))

    seen = set()

    def record_thread(batch):
        seen.add(threading.get_ident())
        return batch.edited.mean(dim=(1, 2, 3, 4))

    mixed = [*pure, CallableReward(record_thread, "user")]  # a user callable: not known to be thread-safe
    got = R.score_records(mixed, batches)
    assert seen == {threading.get_ident()}  # all in the caller's thread
    for g, b in zip(got, batches):
        assert torch.equal(g, score_all(mixed, b))
    threads = set()
    monkeypatch.setattr(PreservationReward, "__call__", lambda self, b: threads.add(threading.get_ident()) or b.n * [0])
    R.score_records(pure, batches * 4)
    assert threading.get_ident() not in threads  # the pool's threads, not the caller's


def test_detected_box_ious_match_a_per_frame_loop():
    """The batched box search of the position verifier (first/last set row and column per frame) against the loop it
    replaced: nonzero per frame, min/max + 1 as the box, IoU with the frame's verify box in Python floats, 0 where
    nothing is found (random masks, some frames empty, boxes that miss, touch or contain the found pixels)."""
    from viva_core.eval.verifiers import detected_box_ious

    g = torch.Generator().manual_seed(0)
    found = torch.rand(3, 5, 12, 10, generator=g) > 0.93
    found[0, 1] = False
    found[2, 4] = False
    found[1, 2] = False
    found[1, 2, 4, 6] = True  # one pixel
    boxes = torch.tensor(
        [[1, 1, 5, 6], [0, 0, 10, 12], [6, 3, 7, 5], [9, 11, 10, 12], [2.5, 0.5, 8.25, 9.75]], dtype=torch.float64
    )
    want = torch.zeros(3, 5, dtype=torch.float64)
    for b in range(3):
        for t in range(5):
            ys, xs = np.nonzero(found[b, t].numpy())
            if len(ys) == 0:
                continue
            x0, y0, x1, y1 = float(xs.min()), float(ys.min()), float(xs.max()) + 1, float(ys.max()) + 1
            bx0, by0, bx1, by1 = boxes[t].tolist()
            inter = max(0.0, min(x1, bx1) - max(x0, bx0)) * max(0.0, min(y1, by1) - max(y0, by0))
            union = (x1 - x0) * (y1 - y0) + (bx1 - bx0) * (by1 - by0) - inter
            want[b, t] = inter / union if union > 0 else 0.0
    got = detected_box_ious(found, boxes)
    assert got.dtype == torch.float64 and got.shape == (3, 5)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-15)
    assert float(got[0, 1]) == 0.0 and float(got[2, 4]) == 0.0 and float(got[1, 2]) > 0.0


def _group_of_each_operation(tmp_path, n: int = 16):
    """One record's rollouts per synth clip of mixed operations: (sources, rollouts, targets, masks, labels) lists,
    each rollout batch [6,...] blending source and ground truth at different amounts plus noise, the ground truth and
    the source themselves among them."""
    from viva_core.data import load_manifest, load_sample
    from viva_core.eval import manifest_extras
    from viva_core.synth import generate

    manifest = generate(tmp_path, n=n, seed=0, format="npz", splits=(1, 0, 0), frames=5)["train"]
    extras = manifest_extras(manifest)
    g = torch.Generator().manual_seed(2)
    out = []
    for r in load_manifest(manifest):
        s = load_sample(r)
        a = torch.rand(6, 1, 1, 1, 1, generator=g)
        roll = ((1 - a) * s.source + a * s.target + 0.03 * torch.randn((6, *s.source.shape), generator=g)).clamp(0, 1)
        roll[0], roll[1] = s.target, s.source
        lab = {"operation": extras[r.line]["operation"], "verify": extras[r.line]["verify"]}
        out.append((s.source, roll, s.target, s.mask, lab))
    assert len({lab["operation"] for *_, lab in out}) >= 5
    return out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the verifier reward on the GPU)")
def test_verifier_reward_on_the_gpu_equals_the_cpu(tmp_path):
    """`VerifierReward(device="cuda")` (what the trainer builds on a GPU) gives the CPU's scores on every operation's
    group, to float rounding (reduction order differs between the devices)."""
    from viva_core.train.rewards import VerifierReward

    for dims in (("EA", "PC"), ("EA", "PC", "GN", "GR")):
        cpu, gpu = VerifierReward(dims), VerifierReward(dims, device="cuda")
        assert cpu.parallel_safe and not gpu.parallel_safe
        for src, roll, tgt, mask, lab in _group_of_each_operation(tmp_path / "-".join(dims)):
            n = roll.shape[0]
            batch = _batch(
                src[None].expand(n, -1, -1, -1, -1),
                roll,
                masks=mask[None].expand(n, -1, -1, -1),
                targets=tgt[None].expand(n, -1, -1, -1, -1),
                labels=[lab] * n,
            )
            _close(gpu(batch), cpu(batch), rtol=0, atol=2e-5)


# ------------------------------------------------------------------------------------------- spill


def _two_squares(t: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """A grey-gradient clip [1,T,64,64,3] with two 8x8 squares on the 4-pixel grid (A at rows/cols 8..15, B at
    40..47), and A's mask [1,T,64,64]."""
    ramp = torch.linspace(0.2, 0.6, 64)
    src = ramp.view(1, 1, 1, 64, 1).expand(1, t, 64, 64, 3).clone()
    src[:, :, 8:16, 8:16] = torch.tensor([0.9, 0.1, 0.1])
    src[:, :, 40:48, 40:48] = torch.tensor([0.1, 0.1, 0.9])
    mask = torch.zeros(1, t, 64, 64)
    mask[:, :, 8:16, 8:16] = 1.0
    return src, mask


def test_spill_counts_a_second_object_edited_and_not_blur():
    """Recolouring A (the edit) spills nothing; recolouring B too (the hedge Edit-GRPO learned) spills B's 4 cells a
    frame against the 4 that A's mask touches: ratio 1, score exp(-1), written out here; a blurred copy of the right
    edit spills nothing."""
    from viva_core.eval.metrics import spills
    from viva_core.train.rewards import VerifierReward

    src, mask = _two_squares()
    edit = src.clone()
    edit[:, :, 8:16, 8:16] = torch.tensor([0.9, 0.9, 0.1])  # A yellow
    hedge = edit.clone()
    hedge[:, :, 40:48, 40:48] = torch.tensor([0.9, 0.9, 0.1])  # B yellow too
    box = torch.nn.functional.avg_pool2d(edit[0].permute(0, 3, 1, 2), 3, 1, 1, count_include_pad=False)
    blurred = box.permute(0, 2, 3, 1)[None]
    m = mask[0] > 0.5
    got = spills(src[0], torch.cat([edit, hedge, blurred]), m)
    assert got[0] == (1.0, 0.0) and got[2] == (1.0, 0.0)
    assert got[1][1] == pytest.approx(1.0) and got[1][0] == pytest.approx(np.exp(-1.0))
    # through the verifier reward: SP alone, and the plain `verifier` still means the benchmark's four
    reward = VerifierReward(("SP",))
    scores = reward(
        _batch(
            src.expand(2, -1, -1, -1, -1),
            torch.cat([edit, hedge]),
            masks=mask.expand(2, -1, -1, -1),
            targets=edit.expand(2, -1, -1, -1, -1),
            labels=[{}, {}],
        )
    )
    assert scores.tolist() == pytest.approx([1.0, np.exp(-1.0)])
    assert VerifierReward().dimensions == ("EA", "PC", "GN", "GR")
    # no cell outside the mask: nothing to spill onto
    assert spills(src[0], hedge, torch.ones_like(m)) == [(None, None)]
