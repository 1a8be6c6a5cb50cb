"""Policy-loss math against hand-worked numbers."""

import math

import pytest
import torch

from explorl.algorithms.losses import Normalizer, aggregate, clipped_surrogate, kl_estimate


def surrogate(ratio, a, dual=None, lo=0.2, hi=0.2):
    old = torch.zeros(1)
    logp = torch.log(torch.tensor([ratio], dtype=torch.float32)).requires_grad_()
    loss, bound = clipped_surrogate(logp, old, torch.tensor([float(a)]), lo, hi, dual)
    loss.sum().backward()
    return loss.item(), bool(bound.item()), logp.grad.item()


def test_clipped_surrogate_cases():
    # ratio 1.5, A=+1: max(-1.5, -1.2) = -1.2, clipped, no gradient
    assert surrogate(1.5, 1) == pytest.approx((-1.2, True, 0.0))
    # ratio 0.5, A=+1: max(-0.5, -0.8) = -0.5, unclipped; d(-rho A)/dlogp = -rho A = -0.5
    assert surrogate(0.5, 1) == pytest.approx((-0.5, False, -0.5))
    # ratio 0.5, A=-1: max(0.5, 0.8) = 0.8 clipped
    assert surrogate(0.5, -1) == pytest.approx((0.8, True, 0.0))
    # ratio 1.1, A=-1: inside the range: 1.1, gradient rho * 1 = 1.1
    assert surrogate(1.1, -1) == pytest.approx((1.1, False, 1.1))


def test_asymmetric_clip_higher():
    # epsilon_high 0.28: ratio 1.25, A=+1 stays unclipped
    assert surrogate(1.25, 1, lo=0.2, hi=0.28) == pytest.approx((-1.25, False, -1.25))
    assert surrogate(1.3, 1, lo=0.2, hi=0.28)[:2] == pytest.approx((-1.28, True))


def test_dual_clip_caps_negative_advantages():
    # ratio 5, A=-1: without dual clip the loss is 5 (gradient 5); with c=3 it is 3, flat
    assert surrogate(5.0, -1) == pytest.approx((5.0, False, 5.0))
    assert surrogate(5.0, -1, dual=3.0) == pytest.approx((3.0, True, 0.0))
    # positive advantages are never dual-clipped
    assert surrogate(5.0, 1, dual=3.0) == pytest.approx((-1.2, True, 0.0))


PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
MASK = torch.tensor([[1, 1, 1], [1, 0, 0]])


@pytest.mark.parametrize("loss_type,want", [
    ("grpo", (2.0 + 4.0) / 2),   # sequence means 2 and 4, then their mean
    ("dapo", 10.0 / 4),          # all 4 tokens
    ("dr_grpo", 10.0 / (2 * 4)),  # 2 sequences x max_completion_length 4
])
def test_aggregations(loss_type, want):
    norm = Normalizer(num_sequences=2, num_tokens=4, max_completion_length=4)
    assert aggregate(PER_TOKEN, MASK, loss_type, norm).item() == pytest.approx(want)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_micro_batches_sum_to_the_full_batch(loss_type):
    norm = Normalizer(num_sequences=2, num_tokens=4, max_completion_length=4)
    full = aggregate(PER_TOKEN, MASK, loss_type, norm)
    parts = sum(aggregate(PER_TOKEN[i:i + 1], MASK[i:i + 1], loss_type, norm) for i in range(2))
    assert parts.item() == pytest.approx(full.item())


def test_kl_estimators():
    logp, ref = torch.tensor([-1.0]), torch.tensor([-2.0])
    assert kl_estimate(logp, ref, "k1").item() == pytest.approx(1.0)
    assert kl_estimate(logp, ref, "k3").item() == pytest.approx(math.exp(-1) + 1 - 1)
    assert kl_estimate(ref, ref, "k3").item() == 0.0
