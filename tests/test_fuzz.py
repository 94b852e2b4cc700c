"""Property-based fuzzing (hypothesis) of the parsers users feed: training TOML, pretrain manifests, LoRA alpha
metadata, token-refiner metadata. Whatever the input, each either parses or raises one of our errors (the CLI's
exit 2 with a message), never another exception (a traceback). Derandomized: the same examples in every run."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_adversarial import _to_toml

from viva_core.errors import VivaError

FUZZ = settings(
    max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
TRAIN_KEYS = [
    "method",
    "output_name",
    "seed",
    "lora.rank",
    "lora.alpha",
    "lora.targets",
    "optim.steps",
    "optim.lr",
    "optim.batch_size",
    "rollout.group_size",
    "rollout.window",
    "rollout.inner_updates",
    "rewards.weights",
    "sft.mask_weight",
    "data.max_frames",
    "log.every",
    "unknown.key",
]
TOML_VALUES = (
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats()
    | st.text(max_size=12)
    | st.lists(st.integers(-5, 5), max_size=3)
    | st.dictionaries(st.text(max_size=6), st.floats(-2, 2), max_size=2)
)


@FUZZ
@given(st.dictionaries(st.sampled_from(TRAIN_KEYS), TOML_VALUES, max_size=4))
def test_training_toml_parses_or_raises_our_error(tmp_path, fields):
    from viva_core.train.config import load_config

    tables: dict = {}
    for key, value in fields.items():
        if value is None:
            continue
        *parents, leaf = key.split(".")
        node = tables
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    path = tmp_path / "c.toml"
    path.write_text(_to_toml(tables))
    try:
        load_config(str(path))
    except VivaError:
        pass


@FUZZ
@given(st.binary(max_size=200))
def test_training_toml_bytes_parse_or_raise_our_error(tmp_path, data):
    from viva_core.train.config import load_config

    path = tmp_path / "c.toml"
    path.write_bytes(data)
    try:
        load_config(str(path))
    except VivaError:
        pass


@FUZZ
@given(st.lists(st.one_of(JSON.map(json.dumps), st.text(max_size=30)), max_size=5))
def test_pretrain_manifest_lines_raise_our_error(tmp_path, lines):
    from viva_core.train.pretrain import load_clip_set

    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(line.replace("\n", " ") for line in lines))
    with pytest.raises(VivaError):  # no line points at a real npz clip, so nothing can load
        load_clip_set(path)


@FUZZ
@given(
    st.one_of(st.text(max_size=40), JSON.map(json.dumps)),
    st.one_of(st.none(), st.binary(max_size=40), JSON.map(lambda v: json.dumps(v).encode())),
)
def test_lora_alpha_metadata_parses_or_raises_our_error(tmp_path, metadata, adapter_config):
    from viva_core.lora import _alpha_config

    folder = tmp_path / "l"
    folder.mkdir(exist_ok=True)
    cfg = folder / "adapter_config.json"
    cfg.unlink(missing_ok=True)
    if adapter_config is not None:
        cfg.write_bytes(adapter_config)
    for meta in ({"lora_adapter_metadata": metadata}, {}):
        try:
            alpha, pattern, rslora = _alpha_config(folder / "l.safetensors", meta)
        except VivaError:
            continue
        assert alpha is None or isinstance(alpha, float)
        assert all(isinstance(v, float) for v in pattern.values()) and isinstance(rslora, bool)


@FUZZ
@given(
    st.dictionaries(st.sampled_from(["in_dim", "out_dim", "hidden_dim", "depth", "heads", "extra"]), JSON, max_size=5)
)
def test_refiner_metadata_loads_or_raises_our_error(tmp_path, config):
    from safetensors.torch import save_file

    from viva_core.instructor import load_refiner

    path = tmp_path / "r.safetensors"
    save_file({"proj_in.weight": torch.zeros(2, 2)}, str(path), metadata={"config": json.dumps(config)})
    with pytest.raises(VivaError):  # one 2x2 tensor never matches a full refiner
        load_refiner(path)
