"""PPO with a critic: token rewards with the KL penalty, GAE, whitening, the clipped value loss
and the adaptive KL controller against hand-worked numbers; a run that learns; exact resume
with the critic; what PPO refuses."""

import json

import pytest
import torch

from explorl import TrainConfig, Trainer
from explorl.algorithms.advantages import gae
from explorl.algorithms.losses import terminal_rewards
from explorl.algorithms.ppo import (
    KLController,
    clipped_value_loss,
    masked_whiten,
    token_rewards,
)
from explorl.config import PPOConfig, load_config
from explorl.errors import UserError
from tests.helpers.resume import straight_and_resumed
from tests.helpers.rewards import starts_with_one

MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])


def test_token_rewards_fold_the_kl_penalty_and_put_the_score_last():
    logps = torch.tensor([[-1.0, -0.5, -2.0, -0.1], [-0.3, -0.2, 0.0, 0.0]])
    ref = torch.tensor([[-1.2, -0.5, -1.0, -0.3], [-0.3, -0.2, 5.0, 5.0]])
    r = token_rewards(torch.tensor([1.0, 0.0]), logps, ref, MASK, kl_coef=0.1)
    # k1 = logp - ref = [0.2, 0, -1, 0.2]: r = -0.1 k1, plus the score 1.0 on the last token
    assert r[0].tolist() == pytest.approx([-0.02, 0.0, 0.1, -0.02 + 1.0])
    assert r[1].tolist() == pytest.approx([0.0, 0.0, 0.0, 0.0])  # nothing past the end
    unknown = token_rewards(torch.tensor([float("nan"), 2.0]), logps, None, MASK, 0.1)
    assert unknown.tolist() == [[0.0] * 4, [0.0, 2.0, 0.0, 0.0]]


def test_gae_on_a_four_token_completion_hand_worked():
    rewards = torch.tensor([[-0.02, 0.0, 0.1, 0.98], [0.0, 0.0, 0.0, 0.0]])
    values = torch.tensor([[0.5, 0.6, 0.4, 0.8], [0.3, 0.2, 9.0, 9.0]])  # 9s: past the end
    adv, ret = gae(rewards, values, MASK, gamma=0.9, lam=0.8)
    # deltas: d3 = 0.98 - 0.8 = 0.18; d2 = 0.1 + 0.9 * 0.8 - 0.4 = 0.42;
    # d1 = 0 + 0.9 * 0.4 - 0.6 = -0.24; d0 = -0.02 + 0.9 * 0.6 - 0.5 = 0.02; gamma lam = 0.72:
    # A3 = 0.18, A2 = 0.42 + 0.72 * 0.18 = 0.5496, A1 = -0.24 + 0.72 * 0.5496 = 0.155712,
    # A0 = 0.02 + 0.72 * 0.155712 = 0.13211264
    assert adv[0].tolist() == pytest.approx([0.13211264, 0.155712, 0.5496, 0.18])
    assert ret[0].tolist() == pytest.approx([0.63211264, 0.755712, 0.9496, 0.98])
    # row 2 ends after two tokens: d1 = -0.2, d0 = 0.9 * 0.2 - 0.3 = -0.12, A0 = -0.12 - 0.144
    assert adv[1].tolist() == pytest.approx([-0.264, -0.2, 0.0, 0.0])
    assert ret[1].tolist() == pytest.approx([0.036, 0.0, 0.0, 0.0])


def test_masked_whitening_uses_the_unbiased_variance():
    x = torch.tensor([[2.0, 4.0, 6.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    # mean 4, unbiased variance (4 + 0 + 4) / 2 = 4: scale 1/2
    assert masked_whiten(x, mask)[0, :3].tolist() == pytest.approx([-1.0, 0.0, 1.0], abs=1e-6)
    assert masked_whiten(x, mask, shift_mean=False)[0, :3].tolist() == pytest.approx(
        [3.0, 4.0, 5.0], abs=1e-6)


def test_clipped_value_loss_hand_worked():
    ones = torch.ones(1, 2)
    # V = [1.0, 0.5], V_old = [0.8, 0.5], R = [0, 1], c = 0.1: clipped V = [0.9, 0.5];
    # plain (V - R)^2 = [1, 0.25], clipped [0.81, 0.25]: 0.5 * mean(max) = 0.3125, none clipped
    loss, frac = clipped_value_loss(torch.tensor([[1.0, 0.5]]), torch.tensor([[0.8, 0.5]]),
                                    torch.tensor([[0.0, 1.0]]), ones, 0.1)
    assert loss.item() == pytest.approx(0.3125) and frac.item() == 0
    # V moves to the return beyond the clip: V = 1, V_old = 0.5, R = 1 -> clipped 0.6,
    # (0.6 - 1)^2 = 0.16 is the larger: loss 0.08, clipped everywhere
    loss, frac = clipped_value_loss(torch.tensor([[1.0]]), torch.tensor([[0.5]]),
                                    torch.tensor([[1.0]]), torch.ones(1, 1), 0.1)
    assert loss.item() == pytest.approx(0.08) and frac.item() == 1


def test_adaptive_kl_controller_hand_worked():
    kl = KLController(0.1, target=6.0, horizon=10000)
    kl.update(9.0, 128)  # 9 / 6 - 1 = 0.5, clipped to 0.2: 0.1 * (1 + 0.2 * 128 / 10000)
    assert kl.coef == pytest.approx(0.100256)
    kl.update(3.0, 128)  # -0.5, clipped to -0.2
    assert kl.coef == pytest.approx(0.100256 * (1 - 0.00256))
    fixed = KLController(0.05)
    fixed.update(100.0, 128)
    assert fixed.coef == 0.05


FAST = dict(eval_size=40, progress=False, plots=False, task_train_size=400)


def test_ppo_learns_a_trivial_reward(tmp_path):
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), method="ppo", max_steps=40,
                      learning_rate=3e-4, reward_funcs=[starts_with_one], warmup_steps=0, **FAST)
    Trainer(cfg).train()
    rows = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    # a step's mean reward swings by about 0.1 with its prompts: average 5 and 10 steps
    first = sum(r["reward/mean"] for r in rows[:5]) / 5
    last = sum(r["reward/mean"] for r in rows[-10:]) / 10
    assert first < 0.5 and last > first + 0.15, (first, last)
    assert rows[-1]["ppo/value_loss"] < rows[0]["ppo/value_loss"]  # the critic learned
    assert all("ppo/kl" in r and "ppo/values" in r for r in rows)


def test_ppo_resumes_exactly_with_its_critic(tmp_path):
    def cfg(name, steps):
        return TrainConfig(output_dir=str(tmp_path / name), method="ppo+e3", max_steps=steps,
                           save_every=2, prompts_per_step=4, num_generations=4,
                           ppo=PPOConfig(num_ppo_epochs=2, num_mini_batches=2, adaptive_kl=True,
                                         target_kl=0.001),
                           learning_rate=1e-3, eval_size=8, task_train_size=64, progress=False,
                           plots=False)

    a, b, straight, resumed = straight_and_resumed(cfg, tmp_path)
    assert a == b
    assert len({r["ppo/kl_coef"] for r in a}) > 1  # the controller moved
    for p, q in zip(straight.algorithm.critic.parameters(), resumed.algorithm.critic.parameters()):
        assert torch.equal(p, q)
    for p, q in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("override,fragment", [
    ("beta=0.04", "beta: method=ppo: it puts the KL penalty into the reward"),
    ("num_iterations=2", "num_iterations: method=ppo: it passes over a batch ppo.num_ppo_epochs"),
    ("epsilon=0.1", "epsilon: method=ppo: it clips at ppo.cliprange"),
    ("epsilon_high=0.3", "epsilon_high: method=ppo: it clips at ppo.cliprange"),
    ("scale_rewards=batch", "scale_rewards: method=ppo: it whitens its advantages over the batch"),
    ("scale_rewards=group", "scale_rewards: method=ppo: it whitens"),
    ("advantage_estimator=rloo", "advantage_estimator: method=ppo: its baseline comes from"),
    ("dual_clip=3", "dual_clip: method=ppo: it has no dual clip"),
    ("loss_type=cispo", "loss_type: method=ppo clips the ratio"),
    ("kl_estimator=k1", "kl_estimator: method=ppo: its penalty is in the reward"),
    ("ppo.target_kl=0", "ppo.target_kl: must be > 0"),
    ("ppo.adaptive_kl=true ppo.kl_coef=0", "ppo.adaptive_kl: needs kl_coef > 0"),
    ("ppo.num_mini_batches=129", "ppo.num_mini_batches: must be <= the rollouts per step (128)"),
    ("importance_sampling_level=sequence", "importance_sampling_level: method=ppo: its "
                                           "advantages are per token"),
    ("method=ppo+herl", "method: herl under ppo is not supported"),
    ("ppo.gamma=1.5", "ppo.gamma: must be in [0, 1]"),
    ("ppo.critic_init=reward_model", "ppo.critic_init: reward_model needs a reward model in"),
])
def test_what_ppo_refuses(override, fragment):
    with pytest.raises(UserError) as e:
        load_config(None, ["method=ppo", *override.split()])
    assert fragment in str(e.value)


def test_herl_under_ppo_is_refused():
    with pytest.raises(UserError, match="method: herl under ppo is not supported"):
        load_config(None, ["method=ppo+herl"])


def test_gae_steps_over_a_tools_answer_inside_an_episode():
    """Columns 1-2 of row 0 are a tool's answer (out of the mask): the model's token before it
    bootstraps from its token after it, as if they were adjacent; the terminal reward lands on
    the last masked token. Row 1: the same tokens with no hole."""
    scores = torch.tensor([1.0, 1.0])
    mask = torch.tensor([[1, 0, 0, 1, 1], [1, 1, 1, 0, 0]])
    rewards = terminal_rewards(scores, mask)
    assert rewards.tolist() == [[0.0, 0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0, 0.0]]
    values = torch.tensor([[0.5, 7.0, 7.0, 0.2, 0.4], [0.5, 0.2, 0.4, 7.0, 7.0]])  # 7: unused
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # d2 = 1 - 0.4 = 0.6; d1 = 0.9 * 0.4 - 0.2 = 0.16; d0 = 0.9 * 0.2 - 0.5 = -0.32;
    # A2 = 0.6, A1 = 0.16 + 0.72 * 0.6 = 0.592, A0 = -0.32 + 0.72 * 0.592 = 0.10624
    assert adv[0].tolist() == pytest.approx([0.10624, 0.0, 0.0, 0.592, 0.6])
    assert adv[1].tolist() == pytest.approx([0.10624, 0.592, 0.6, 0.0, 0.0])
    assert ret[0].tolist() == pytest.approx([0.60624, 0.0, 0.0, 0.792, 1.0])
