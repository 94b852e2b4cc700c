"""The `rewards` text of the ComfyUI Train LoRA node: parsed into the weights dict of the training config."""

import pytest

from viva_core.errors import InputError
from viva_core.train.config import parse_reward_weights


def test_pairs_in_order_with_bare_names_weighing_one():
    assert parse_reward_weights("preservation=1.0, judge=0.5") == {"preservation": 1.0, "judge": 0.5}
    assert list(parse_reward_weights("judge:EA+PC = 2\npreservation")) == ["judge:EA+PC", "preservation"]
    assert parse_reward_weights("judge:EA+PC = 2\npreservation")["preservation"] == 1.0
    assert parse_reward_weights(" , \n") == {}


@pytest.mark.parametrize(
    "text, match",
    [
        ("preservation=abc", "not a number"),
        ("=1", "no reward name"),
        ("judge=1, judge=2", "given twice"),
        ("judge=nan", "finite"),
    ],
)
def test_bad_text_names_the_problem(text, match):
    with pytest.raises(InputError, match=match):
        parse_reward_weights(text)
