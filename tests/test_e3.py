"""E3: rollout budgets and the entropy-keeping temperature, against hand-worked numbers."""

import math

import numpy as np
import pytest

from explorl.config import EntropyConfig
from explorl.exploration.budget import (
    DifficultyStats,
    RolloutBudget,
    mixed_allocation,
    p_mixed,
    rank_allocation,
)
from explorl.exploration.temperature import EntropyKeeper, annealed_target, next_temperature


def rng(seed=0):
    return np.random.default_rng(seed)


def test_rank_rule_hand_worked():
    # B=4, n=8: R=32, bounds [4, 12]; ranks sum 1.5, spare 16:
    # floor(4 + 16 * [0, 1/6, 1/3, 1/2]) = [4, 6, 9, 12] (31); the leftover skips the capped
    # hardest prompt and goes to the next hardest: [4, 6, 10, 12]
    assert rank_allocation([0.0, 0.25, 0.5, 0.75], 32, 4, 12, rng()) == [4, 6, 10, 12]


def test_rank_rule_caps_n_max_hard():
    # one very hard prompt would get floor(4 + 16 * 0.9 / 1.0) = 18 > 12 in the paper's rule
    n = rank_allocation([0.9, 0.05, 0.05, 0.0], 32, 4, 12, rng())
    assert sum(n) == 32 and max(n) <= 12 and min(n) >= 4
    assert n[0] == 12


def test_mixed_rule_hand_worked():
    # p = .5, 0, .9; start [2, 2, 2], 6 more. Gains of P(mixed) = 1 - p^n - (1-p)^n:
    # p=.5: .25, .125, .0625 ...; p=.9: .09, .0738, .0657, .0591 ...; p=0: always 0.
    # Greedy order: .25, .125, .09, .0738, .0657, .0625 -> [5, 2, 5]
    assert mixed_allocation([0.5, 0.0, 0.9], 12, 2, 8, rng()) == [5, 2, 5]
    assert p_mixed(0.5, 3) == pytest.approx(0.75)
    assert p_mixed(0.9, 2) == pytest.approx(0.18)


def test_mixed_rule_favours_uncertain_prompts_over_certain_ones():
    # a prompt always right or always wrong can never give a mixed group: it stays at the floor
    n = mixed_allocation([0.0, 0.1, 0.5, 0.9, 1.0], 40, 4, 12, rng())
    assert n[0] == n[4] == 4 and min(n[1:4]) > 4
    # p = .5 is mixed with few samples; p = .1 and .9 need more to see both outcomes
    assert n[1] == n[3] > n[2]


@pytest.mark.parametrize("alloc", [rank_allocation, mixed_allocation])
def test_allocation_invariants_and_determinism(alloc):
    gen = np.random.default_rng(123)
    for _ in range(200):
        size = int(gen.integers(1, 20))
        n_min, n_max = int(gen.integers(1, 5)), int(gen.integers(8, 16))
        total = int(gen.integers(n_min * size, n_max * size + 1))
        values = gen.random(size).round(1).tolist()  # rounding makes ties
        a = alloc(values, total, n_min, n_max, rng(7))
        assert sum(a) == total and min(a) >= n_min and max(a) <= n_max
        assert a == alloc(values, total, n_min, n_max, rng(7))
    with pytest.raises(ValueError):
        alloc([0.5, 0.5], 30, 2, 8, rng())


def test_ties_are_broken_at_random_by_the_seed():
    # four equal prompts, 2 spare samples above the floor: who gets them depends on the seed
    picks = {tuple(mixed_allocation([0.5] * 4, 10, 2, 8, rng(s))) for s in range(20)}
    assert len(picks) > 1
    picks = {tuple(rank_allocation([0.0] * 4, 9, 2, 8, rng(s))) for s in range(20)}
    assert len(picks) > 1


def test_difficulty_stats_and_prior():
    stats = DifficultyStats()
    stats.update(["a", "b"], [[True, True, False, True], [False, False]])
    assert stats.rate("a") == 0.75 and stats.rate("b") == 0.0 and stats.rate("c") is None
    # mean pass rate 3/6; prior strength 2: a -> (3 + 1) / (4 + 2), unseen -> 0.5
    assert stats.estimate("a", 2.0) == pytest.approx(4 / 6)
    assert stats.estimate("c", 2.0) == pytest.approx(0.5)


def test_budget_rank_schedule_and_state_round_trip():
    b = RolloutBudget(n=8, n_low=4, n_high=12, rule="rank", delta=2)
    assert b.bounds() == (8, 8)
    b.new_epoch(1)
    assert b.bounds() == (6, 10)
    b.new_epoch(5)
    assert b.bounds() == (4, 12)
    b.observe(["easy", "hard"], [[True] * 8, [False] * 8])
    n = b.allocate(["easy", "hard"], step=3, epoch=5)
    assert sum(n) == 16 and n[1] > n[0]
    c = RolloutBudget(n=8, n_low=4, n_high=12, rule="rank", delta=2)
    c.load(b.state())
    assert c.allocate(["easy", "hard"], step=3, epoch=5) == n


def test_temperature_update_hand_worked():
    # V = 99: ln V + ln ln V = 6.120115
    assert next_temperature(1.0, 0.5, 0.6, 99) == pytest.approx(1.0297905, abs=1e-6)
    assert next_temperature(1.5, 0.9, 0.6, 99) == pytest.approx(1.3509347, abs=1e-6)
    assert next_temperature(1.2, 0.6, 0.6, 99) == 1.2  # at target: unchanged


def test_annealing_curve():
    assert annealed_target(1.0, 60, 100, 0.4, 0.9) == 1.0
    assert annealed_target(1.0, 80, 100, 0.4, 0.9) == pytest.approx(0.95)
    assert annealed_target(1.0, 100, 100, 0.4, 0.9) == pytest.approx(0.9)
    assert annealed_target(1.0, 100, 100, 0.0, 0.9) == 1.0


def test_keeper_target_from_first_steps_bounds_and_direction():
    k = EntropyKeeper(1.0, vocab_size=99, max_steps=100, target_steps=3, t_min=0.5, t_max=2.0)
    for step, h in enumerate([0.5, 0.7, 0.6], start=1):
        assert k.observe(step, h) == 1.0  # no change while the target forms
    assert k.target == pytest.approx(0.6)
    assert k.observe(4, 0.5) == pytest.approx(1.0297905, abs=1e-6)  # entropy fell: T up
    t = k.temperature
    assert k.observe(5, 0.9) < t  # entropy rose: T down
    for step in range(6, 60):
        k.observe(step, 1e-3)  # collapse: T climbs to its bound and stays there
    assert k.temperature == 2.0
    k.observe(60, math.nan)
    assert k.temperature == 2.0


def test_keeper_ema_and_state_round_trip():
    k = EntropyKeeper(1.0, vocab_size=99, max_steps=10, target=0.6, ema=0.5)
    k.observe(1, 0.4)  # smoothed = 0.4 (first value)
    k.observe(2, 0.8)  # smoothed = 0.5 * 0.4 + 0.5 * 0.8 = 0.6: at target, T unchanged
    assert k.smoothed == pytest.approx(0.6)
    t = k.temperature
    assert t == pytest.approx(next_temperature(1.0, 0.4, 0.6, 99))
    j = EntropyKeeper(1.0, vocab_size=99, max_steps=10, target=0.6, ema=0.5)
    j.load(k.state())
    assert j.observe(3, 0.5) == k.observe(3, 0.5)


def test_e3_in_training_and_exact_resume(tmp_path):
    import json

    import torch

    from explorl import TrainConfig, Trainer
    from explorl.config import E3Config

    def cfg(name, steps):
        return TrainConfig(output_dir=str(tmp_path / name), max_steps=steps, save_every=3,
                           prompts_per_step=4, num_generations=4, method="e3",
                           e3=E3Config(budget_min=2, budget_max=8),
                           entropy=EntropyConfig(target_steps=2),
                           eval_size=24, task_train_size=8, progress=False, plots=False)

    straight = Trainer(cfg("a", 6))
    straight.train()
    rows = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        n = r["samples_per_prompt"]
        assert sum(n) == 16 and min(n) >= 2 and max(n) <= 8
    assert any(len(set(r["samples_per_prompt"])) > 1 for r in rows)
    temps = [r["temperature"] for r in rows]
    # target = mean entropy of steps 1-2; the first update of T follows step 3's entropy
    assert temps[:3] == [1.0, 1.0, 1.0] and temps[3] != 1.0
    assert rows[0]["entropy_target"] is None
    assert rows[2]["entropy_target"] == pytest.approx((rows[0]["entropy"] + rows[1]["entropy"]) / 2,
                                                      rel=1e-4)
    # the untempered entropy is logged once some row is sampled at another temperature than 1
    assert all(("entropy_t1" in r) == (r["temperature"] != 1.0) for r in rows)
    assert "entropy_t1" in rows[-1]

    Trainer(cfg("b", 3)).train()
    resumed = Trainer(cfg("b", 6))
    resumed.train()
    strip = lambda r: {k: v for k, v in r.items() if not k.startswith(("time/", "eval/"))}  # noqa: E731
    rows_b = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [strip(r) for r in rows] == [strip(r) for r in rows_b]
    assert resumed.adaptive_temperature.state() == straight.adaptive_temperature.state()
    for p, q in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)


def test_rerank_per_epoch_freezes_estimates_until_the_next_epoch():
    def budget(rerank):
        b = RolloutBudget(n=4, n_low=2, n_high=6, rule="mixed", rerank=rerank)
        b.observe(["a", "b"], [[True, False], [True, False]])
        return b

    per_step, per_epoch = budget("step"), budget("epoch")
    assert per_step.allocate(["a", "b"], 1, 0) == per_epoch.allocate(["a", "b"], 1, 0)
    for b in (per_step, per_epoch):  # "a" turns out always right, "b" mixed
        b.observe(["a", "b"], [[True] * 20, [True, False] * 10])
    # estimates with the prior (mean pass rate 33/44, 2 pseudo-samples): a .9356, b .5189.
    # From [2, 2], gains of P(mixed): b .2496, .1250, .0627, then a .0602 beats b's .0315
    assert per_step.allocate(["a", "b"], 2, 0) == [3, 5]  # sees the new statistics at once
    assert per_epoch.allocate(["a", "b"], 2, 0) == [4, 4]  # still the epoch's snapshot
    assert per_epoch.allocate(["a", "b"], 2, 1) == [3, 5]  # a new pass: a new snapshot


def test_a_pass_over_the_data_changes_the_budget_with_its_first_batch(tmp_path):
    """16 prompts, 4 per step: steps 1-4 are the first pass, where the rank rule's bounds are
    still (n, n); they widen at step 5, the first batch of the second pass, and the per-pass
    snapshot taken then ranks every prompt of the first pass."""
    import json

    from explorl import TrainConfig, Trainer
    from explorl.config import E3Config

    trainer = Trainer(TrainConfig(
        output_dir=str(tmp_path / "run"), max_steps=6, prompts_per_step=4, num_generations=4,
        method="e3", e3=E3Config(adaptive_temperature=False, budget_min=2, budget_max=6,
                                 budget_rerank="epoch", pilot_samples=0),  # the paper's rule
        eval_size=8, task_train_size=16, progress=False, plots=False, save_every=0))
    frozen = []
    allocate = trainer.budget.allocate

    def watch(ids, step, epoch):
        out = allocate(ids, step, epoch)
        frozen.append(len(trainer.budget.frozen["table"]))
        return out

    trainer.budget.allocate = watch
    trainer.train()
    rows = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    counts = [r["samples_per_prompt"] for r in rows]
    assert counts[:4] == [[4, 4, 4, 4]] * 4  # the first pass: bounds (4, 4)
    assert any(len(set(c)) > 1 for c in counts[4:])  # the second pass: bounds (2, 6)
    assert frozen[4:] == [16, 16]  # ranks of all 16 prompts, frozen for the second pass
