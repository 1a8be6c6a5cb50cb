"""Calling reward functions: weights, TRL's None, and faults that mask samples."""

import math

import pytest

from explorl.errors import UserError
from explorl.rewards.base import compute_rewards, resolve


def const(values):
    def fn(prompts, completions, completion_ids=None, **columns):
        return values
    return fn


def call(*funcs, weights=None):
    named = [(f"f{i}", f) for i, f in enumerate(funcs)]
    return compute_rewards(named, weights or [1.0] * len(funcs), ["p"] * 3, ["a", "b", "c"],
                           [[1], [2], [3]], {"answer": ["1", "2", "3"]})


def test_weighted_sum_and_none_means_not_applicable():
    r = call(const([1.0, 0.0, None]), const([0.5, None, 0.25]), weights=[1.0, 2.0])
    assert r.total.tolist() == [2.0, 0.0, 0.5]
    assert r.masked == 0 and r.errors == []
    assert math.isnan(r.per_func["f1"][1])


def test_no_function_applies_masks_the_sample():
    r = call(const([None, 1.0, None]))
    assert math.isnan(r.total[0]) and r.total[1] == 1.0 and math.isnan(r.total[2])
    assert r.masked == 2


@pytest.mark.parametrize("values,masked", [
    ([1.0, float("nan"), 0.0], 1),
    ([1.0, float("inf"), "x"], 2),
    ([1.0, 0.0], 3),  # wrong length: every sample of the call is unknown
])
def test_faulty_values_are_masked_and_reported(values, masked):
    r = call(const(values), const([0.0, 0.0, 0.0]))
    assert r.masked == masked
    assert sum(math.isnan(v) for v in r.total.tolist()) == masked
    assert len(r.errors) == 1 and r.errors[0].startswith("f0:")


def test_raising_function_masks_all_and_keeps_going():
    def boom(prompts, completions, completion_ids=None, **columns):
        raise RuntimeError("judge down")
    r = call(boom, const([1.0, 1.0, 1.0]))
    assert r.masked == 3 and "RuntimeError: judge down" in r.errors[0]
    assert r.per_func["f1"].tolist() == [1.0, 1.0, 1.0]


def test_resolve_names_and_errors():
    assert resolve("arithmetic")[0] == "arithmetic"
    assert resolve("explorl.rewards.math:math_verify_reward")[0] == "math_verify_reward"
    with pytest.raises(UserError, match="has no function 'nope'"):
        resolve("explorl.rewards.math:nope")
    with pytest.raises(UserError, match="expected 'module:function'"):
        resolve("not_a_spec")
    with pytest.raises(UserError, match="expected fn\\(prompts, completions"):
        resolve("math:sqrt")
