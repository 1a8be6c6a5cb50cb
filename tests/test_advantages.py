"""Advantage estimators against hand-worked numbers."""

import math

import pytest
import torch

from explorl.algorithms.advantages import AdvantageInputs, compute_advantages

EPS = 1e-4


def adv(rewards, groups, estimator="grpo", scale="group", length=1):
    r = torch.tensor(rewards, dtype=torch.float32)
    g = torch.tensor(groups)
    mask = torch.ones(len(rewards), length)
    return compute_advantages(estimator, AdvantageInputs(r, g, mask), scale)


def test_grpo_group_scaling_unequal_groups():
    # group 0: [1, 0, 0] mean 1/3, unbiased std sqrt(1/3); group 1: [1, 0] mean .5 std sqrt(.5)
    a = adv([1, 0, 0, 1, 0], [0, 0, 0, 1, 1])[:, 0]
    s0, s1 = math.sqrt(1 / 3), math.sqrt(0.5)
    want = [(2 / 3) / (s0 + EPS), (-1 / 3) / (s0 + EPS), (-1 / 3) / (s0 + EPS),
            0.5 / (s1 + EPS), -0.5 / (s1 + EPS)]
    assert a.tolist() == pytest.approx(want, abs=1e-6)
    assert a[0] == pytest.approx(1.154500, abs=1e-5)


def test_all_equal_group_and_singleton_get_zero():
    a = adv([1, 1, 1, 0.3, 0.5, 0.0], [0, 0, 0, 1, 2, 2])[:, 0]
    assert a[:4].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert a[4] == pytest.approx(0.25 / (math.sqrt(0.125) + EPS), abs=1e-6)


def test_batch_scaling_uses_std_of_all_rewards():
    a = adv([1, 0, 0, 1, 0], [0, 0, 0, 1, 1], scale="batch")[:, 0]
    std = math.sqrt(0.3)  # rewards mean .4, unbiased variance (2*.36 + 3*.16)/4
    assert a.tolist() == pytest.approx(
        [(2 / 3) / (std + EPS), (-1 / 3) / (std + EPS), (-1 / 3) / (std + EPS),
         0.5 / (std + EPS), -0.5 / (std + EPS)], abs=1e-6)


def test_no_scaling_and_dr_grpo_are_mean_centred():
    want = [2 / 3, -1 / 3, -1 / 3, 0.5, -0.5]
    assert adv([1, 0, 0, 1, 0], [0, 0, 0, 1, 1], scale="none")[:, 0].tolist() == \
        pytest.approx(want, abs=1e-6)
    # dr_grpo ignores scale_rewards: never divides by a std
    assert adv([1, 0, 0, 1, 0], [0, 0, 0, 1, 1], "dr_grpo", "group")[:, 0].tolist() == \
        pytest.approx(want, abs=1e-6)


def test_rloo_leave_one_out_baseline():
    a = adv([1, 0, 0, 1, 2], [0, 0, 0, 1, 1], "rloo", "none")[:, 0]
    # group 0: 1 - mean(0, 0) = 1; 0 - mean(1, 0) = -.5; group 1: 1 - 2 = -1, 2 - 1 = 1
    assert a.tolist() == pytest.approx([1.0, -0.5, -0.5, -1.0, 1.0], abs=1e-6)


def test_unknown_rewards_are_left_out_and_get_zero():
    a = adv([1, float("nan"), 0, 0], [0, 0, 0, 0])[:, 0]
    s = math.sqrt(1 / 3)  # stats over [1, 0, 0] only
    assert a[1] == 0.0
    assert a[[0, 2, 3]].tolist() == pytest.approx(
        [(2 / 3) / (s + EPS), (-1 / 3) / (s + EPS), (-1 / 3) / (s + EPS)], abs=1e-6)


def test_per_token_broadcast_respects_mask():
    r = torch.tensor([1.0, 0.0])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    a = compute_advantages("dr_grpo", AdvantageInputs(r, torch.tensor([0, 0]), mask), "none")
    assert a.tolist() == [[0.5, 0.5, 0.0], [-0.5, 0.0, 0.0]]
