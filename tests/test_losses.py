"""Policy-loss math against hand-worked numbers."""

import math

import pytest
import torch

from explorl.algorithms.losses import (
    Normalizer,
    aggregate,
    cispo_surrogate,
    clipped_surrogate,
    kl_estimate,
    sequence_ratio,
    token_ratio,
)


def surrogate(ratio, a, dual=None, lo=0.2, hi=0.2):
    old = torch.zeros(1)
    logp = torch.log(torch.tensor([ratio], dtype=torch.float32)).requires_grad_()
    loss, bound = clipped_surrogate(token_ratio(logp, old), torch.tensor([float(a)]), lo, hi,
                                    dual)
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
    ("cispo", 10.0 / 4),         # all 4 tokens, as dapo
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


def test_gspo_sequence_ratio_hand_worked():
    # log-ratios 0.5 and -1.0 over the two trained tokens (the third is masked): their mean
    # -0.25 gives s = exp(-0.25) for every position of the completion
    logp = torch.tensor([[-1.0, -2.0, -7.0]], requires_grad=True)
    old = torch.tensor([[-1.5, -1.0, 0.0]])
    mask = torch.tensor([[1, 1, 0]])
    s = sequence_ratio(logp, old, mask)
    assert s.tolist()[0] == pytest.approx([math.exp(-0.25)] * 3)
    # A = +1 and s = 0.7788 below 1 - 0.2: with A > 0 the loss is the unclipped -s A
    # (max(-0.7788, -0.8)), and its gradient -A s / |y| reaches each trained token
    loss, bound = clipped_surrogate(s, torch.ones(1, 3), 0.2, 0.2)
    aggregate(loss, mask, "grpo", Normalizer(1, 2, 3)).backward()
    assert not bound.any()
    assert logp.grad.tolist()[0] == pytest.approx([-math.exp(-0.25) / 2] * 2 + [0.0])


def test_gspo_clips_the_whole_sequence():
    logp = torch.tensor([[0.5, 0.5]], requires_grad=True)  # s = e^0.5 = 1.6487 > 1.2
    s = sequence_ratio(logp, torch.zeros(1, 2), torch.ones(1, 2))
    loss, bound = clipped_surrogate(s, torch.ones(1, 2), 0.2, 0.2)
    loss.sum().backward()
    assert loss.tolist()[0] == pytest.approx([-1.2, -1.2]) and bound.all()
    assert logp.grad.abs().sum() == 0


def test_gspo_on_policy_gradient_equals_token_level_grpo():
    # at ratio 1 the sequence ratio's gradient is the token-level one, spread by 1/|y| (TRL's
    # note: GSPO differs only off-policy)
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.1, -9.0]], requires_grad=True)
    mask, adv = torch.tensor([[1, 1, 1], [1, 1, 0]]), torch.tensor([[1.5], [-0.5]])
    norm = Normalizer(2, 5, 3)
    seq, _ = clipped_surrogate(sequence_ratio(logp, logp.detach(), mask), adv, 0.2, 0.2)
    (g_seq,) = torch.autograd.grad(aggregate(seq, mask, "grpo", norm), logp)
    tok, _ = clipped_surrogate(token_ratio(logp, logp.detach()), adv, 0.2, 0.2)
    (g_tok,) = torch.autograd.grad(aggregate(tok, mask, "grpo", norm), logp)
    torch.testing.assert_close(g_seq, g_tok)


@pytest.mark.parametrize("a,cap,weight,capped", [
    (2.0, 5.0, math.exp(0.5), False),  # rho = e^0.5 = 1.6487 under the cap
    (2.0, 1.2, 1.2, True),             # capped: the weight is 1.2
    (-2.0, 1.2, 1.2, False),           # capped too; only positive-A tokens count as bound
])
def test_cispo_hand_worked(a, cap, weight, capped):
    logp = torch.tensor([-1.0], requires_grad=True)
    old = torch.tensor([-1.5])
    loss, bound = cispo_surrogate(logp, token_ratio(logp, old), torch.tensor([a]), cap)
    loss.sum().backward()
    # -sg(min(rho, cap)) A log pi: the value at log pi = -1, the gradient -weight A
    assert loss.item() == pytest.approx(weight * a)
    assert logp.grad.item() == pytest.approx(-weight * a)
    assert bool(bound.item()) is capped


def test_cispo_keeps_a_gradient_where_the_clipped_surrogate_has_none():
    logp = torch.tensor([0.5], requires_grad=True)  # rho = 1.6487, A > 0: PPO's clip is flat
    ppo, _ = clipped_surrogate(token_ratio(logp, torch.zeros(1)), torch.ones(1), 0.2, 0.2)
    (g_ppo,) = torch.autograd.grad(ppo.sum(), logp)
    cispo, _ = cispo_surrogate(logp, token_ratio(logp, torch.zeros(1)), torch.ones(1), 5.0)
    (g_cispo,) = torch.autograd.grad(cispo.sum(), logp)
    assert g_ppo.item() == 0 and g_cispo.item() == pytest.approx(-math.exp(0.5))
