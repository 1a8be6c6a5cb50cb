"""The exploration baselines: DAPO's dynamic sampling, high-entropy-token training, the adaptive
entropy bonus; HeRL's ``both`` context; and the rare rubric variant. Hand-worked numbers for
the math, scripted groups for the sampling, short runs for the wiring."""

import json
import math
import random

import pytest
import torch

from explorl import TrainConfig, Trainer
from explorl.algorithms.losses import entropy_threshold
from explorl.config import DynamicSamplingConfig, EntropyConfig, load_config
from explorl.data import rubric_task
from explorl.data.prompts import PromptCodec
from explorl.errors import UserError
from explorl.exploration.dynamic_sampling import Selection, informative_groups
from explorl.exploration.entropy_bonus import AdaptiveEntropyBonus, next_entropy_coef
from explorl.models.policy import load_tokenizer
from explorl.rewards.rubric import RULES
from tests.test_herl import ROWS, collector, run_hindsight

NAN = math.nan


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny")


# --- dynamic sampling ----------------------------------------------------------------------------
def test_informative_groups_need_two_different_known_rewards():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, NAN, 0.0, 0.5, 0.5, NAN, 0.2, 0.7])
    groups = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 4])
    assert informative_groups(rewards, groups, 5) == [1, 4]  # group 2: one known reward


def scored(tok, texts, groups):
    """A scored batch of ROWS-like prompts (dense rubric: has 7, ends 1), ``groups[i]`` the
    group of ``texts[i]``."""
    n = max(groups) + 1
    rows = [dict(ROWS[0], prompt=f"p{g}:") for g in range(n)]
    codec = PromptCodec(tok)
    counts = [groups.count(g) for g in range(n)]
    return collector(tok, texts)(rows, [codec.encode(r["prompt"]) for r in rows], counts,
                                 [1.0] * n, 8)


def test_dynamic_sampling_refills_until_the_batch_is_full(tok):
    # 4 groups wanted. First: groups 0 and 2 all equal, 1 and 3 informative.
    first = scored(tok, ["71", "71", "71", "2", "9", "9", "2", "71"], [0, 0, 1, 1, 2, 2, 3, 3])
    refills = [scored(tok, ["5", "5", "7", "71"], [0, 0, 1, 1]),  # 1 of 2 informative
               scored(tok, ["71", "7"], [0, 0])]  # the last missing group
    asked = []
    selection = Selection(first, 4, 3, tok.pad_token_id)
    while selection.missing:
        asked.append(selection.missing)
        selection.add(refills.pop(0))
    batch, dropped, m = selection.result()
    assert asked == [2, 1]  # as many new prompts as groups are missing
    assert batch.texts == ["71", "2", "2", "71", "7", "71", "71", "7"]
    assert batch.rollout.group_ids.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [r["prompt"] for r in batch.rows] == ["p1:", "p3:", "p1:", "p0:"]
    assert batch.rewards.total.tolist() == pytest.approx([1.0, 0.0, 0.0, 1.0, 0.5, 1.0, 1.0,
                                                          0.5])
    assert len(batch.rewards.grades) == 8 and batch.passed.tolist()[:2] == [True, False]
    # every generated token counts; the dropped groups' (EOS included): "71" "71" and "9" "9"
    # of the first batch, "5" "5" of the first refill
    assert dropped == 3 + 3 + 2 + 2 + 2 + 2
    assert m == {"dynamic_sampling/rounds": 2, "dynamic_sampling/kept_groups": 1.0,
                 "dynamic_sampling/dropped_groups": 3, "dynamic_sampling/dropped_tokens": 14}


def test_dynamic_sampling_stops_after_max_rounds(tok):
    first = scored(tok, ["71", "71", "2", "71"], [0, 0, 1, 1])
    selection = Selection(first, 2, 1, tok.pad_token_id)
    while selection.missing:
        selection.add(scored(tok, ["5", "5"], [0, 0]))
    batch, _, m = selection.result()
    assert m["dynamic_sampling/rounds"] == 1 and m["dynamic_sampling/kept_groups"] == 0.5
    assert batch.texts == ["2", "71"] and len(batch.rows) == 1
    # nothing informative at all: the first batch is trained as it is (zero advantages)
    nothing = scored(tok, ["71", "71"], [0, 0])
    batch, dropped, m = Selection(nothing, 1, 0, tok.pad_token_id).result()
    assert batch.rollout is nothing.rollout and batch.rewards is nothing.rewards
    assert dropped == 0 and m["dynamic_sampling/kept_groups"] == 0


# --- high-entropy tokens --------------------------------------------------------------------------
def test_entropy_threshold_is_the_batch_quantile():
    values = torch.tensor([0.1, 0.5, 0.3, 0.2, 0.4])
    # the 0.6 quantile of 5 values: position 0.6 * 4 = 2.4 between 0.3 and 0.4 -> 0.34
    assert entropy_threshold(values, 0.4) == pytest.approx(0.34)
    assert int((values >= entropy_threshold(values, 0.4)).sum()) == 2
    assert entropy_threshold(values, 1.0) == -math.inf
    assert entropy_threshold(torch.zeros(0), 0.2) == -math.inf


def test_top_entropy_quantile_trains_only_high_entropy_tokens(tmp_path):
    """The policy loss comes from the kept tokens only: the same step with the other tokens'
    advantages zeroed gives the same gradient."""
    cfg = TrainConfig(max_steps=1, prompts_per_step=2, num_generations=4, eval_size=4,
                      max_completion_length=6, output_dir=str(tmp_path), progress=False,
                      plots=False, entropy=EntropyConfig(top_quantile=0.3), learning_rate=1e-3)
    trainer = Trainer(cfg)
    batch = trainer.collect(trainer.train_rows[:2], trainer.prompt_ids[:2], [4, 4], [1.0, 1.0],
                            6)
    from explorl.batch import Advantages, TrainBatch

    train = TrainBatch.of(batch)
    mask = train.loss_mask(False)
    advantages = torch.randn(len(train), 1).expand_as(mask).clone()
    shard = trainer.update.prepare(train, Advantages(advantages), mask)
    kept = shard.policy_mask
    entropy = trainer.logprobs.entropy(train.rollout)
    threshold = entropy_threshold(entropy[mask.bool()], 0.3)
    assert torch.equal(kept, mask.bool() & (entropy >= threshold))
    assert 0.3 * mask.sum() <= kept.sum() < mask.sum()  # more only where entropies tie

    def grads(shard):
        trainer.model.zero_grad()
        trainer.update._chunk_loss(shard.chunk(list(range(len(shard)))), {}, False)[0].backward()
        return [p.grad.clone() for p in trainer.model.parameters() if p.grad is not None]

    masked = grads(shard)
    shard.policy_mask, shard.advantages = None, advantages * kept
    for a, b in zip(masked, grads(shard)):
        assert torch.allclose(a, b, atol=1e-6)


# --- adaptive entropy bonus -----------------------------------------------------------------------
@pytest.mark.parametrize("coef, entropy, expected", [
    (0.010, 0.20, 0.015),  # below the target of 0.3: the bonus grows by one step
    (0.010, 0.40, 0.005),  # above it: shrinks
    (0.003, 0.40, 0.0),  # never below 0
    (0.098, 0.10, 0.1),  # never above the cap
    (0.010, 0.30, 0.010),  # at the target: unchanged
])
def test_next_entropy_coef(coef, entropy, expected):
    assert next_entropy_coef(coef, entropy, 0.3, 0.005, 0.1) == pytest.approx(expected)


def test_adaptive_bonus_takes_its_target_from_the_first_steps():
    bonus = AdaptiveEntropyBonus(0.0, 0.01, 0.1, target=None, target_steps=2)
    assert bonus.observe(0.4) == 0.0 and bonus.observe(0.2) == 0.0
    assert bonus.target == pytest.approx(0.3)
    assert bonus.observe(math.nan) == 0.0  # a broken measurement moves nothing
    assert bonus.observe(0.25) == pytest.approx(0.01)
    again = AdaptiveEntropyBonus(0.0, 0.01, 0.1)
    again.load(json.loads(json.dumps(bonus.state())))
    assert again.observe(0.25) == pytest.approx(0.02)


def test_adaptive_entropy_run_raises_the_bonus_and_resumes_it(tmp_path):
    common = dict(prompts_per_step=2, num_generations=4, eval_size=4, max_completion_length=6,
                  progress=False, plots=False, save_every=2,
                  entropy=EntropyConfig(adaptive=True, target=5.0, coef_step=0.01))
    Trainer(TrainConfig(max_steps=3, output_dir=str(tmp_path / "a"), **common)).train()
    rows = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    # the target (5 nats) is above any entropy of this model: the bonus grows every step
    assert [r["entropy_coef"] for r in rows] == pytest.approx([0.0, 0.01, 0.02])
    Trainer(TrainConfig(max_steps=2, output_dir=str(tmp_path / "b"), **common)).train()
    Trainer(TrainConfig(max_steps=3, output_dir=str(tmp_path / "b"), **common)).train()
    resumed = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert resumed[-1]["entropy_coef"] == pytest.approx(0.02)
    assert resumed[-1]["loss"] == pytest.approx(rows[-1]["loss"], rel=1e-4, abs=1e-6)


def test_dynamic_sampling_run_counts_every_token(tmp_path):
    cfg = TrainConfig(max_steps=2, prompts_per_step=4, num_generations=4, eval_size=4,
                      max_completion_length=6, output_dir=str(tmp_path), progress=False,
                      plots=False, method="dynamic_sampling",
                      dynamic_sampling=DynamicSamplingConfig(max_rounds=2))
    Trainer(cfg).train()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    total = 0
    for r in rows:
        total += r["tokens/generated"] + r["dynamic_sampling/dropped_tokens"]
        assert r["tokens/total"] == total
        if r["dynamic_sampling/kept_groups"] > 0:
            assert r["frac_zero_std_groups"] == 0.0  # only informative groups are trained


@pytest.mark.parametrize("overrides, key", [
    (["entropy.top_quantile=0"], "entropy.top_quantile"),
    (["method=dynamic_sampling+herl"], "method"),
    (["method=dynamic_sampling+e3"], "method"),
    (["dynamic_sampling.max_rounds=-1"], "dynamic_sampling.max_rounds"),
    (["entropy.adaptive=true", "method=e3"], "entropy.adaptive"),
    (["entropy.adaptive=true", "entropy.coef=0.2"], "entropy.coef"),
    (["entropy.coef_step=-1"], "entropy.coef_step"),
])
def test_baseline_settings_are_checked(overrides, key):
    with pytest.raises(UserError, match=f"override '.*': {key}:"):
        load_config(None, overrides)


@pytest.mark.parametrize("override, now", [
    ("top_entropy_quantile=0.2", "entropy.top_quantile"),
    ("use_adaptive_entropy=true", "entropy.adaptive"),
    ("entropy_coef=0.01", "entropy.coef"),
    ("dynamic_sampling=true", "method=dynamic_sampling"),
    ("dynamic_sampling_max_rounds=2", "dynamic_sampling.max_rounds"),
    ("e3.entropy_target=1.0", "entropy.target"),
])
def test_flat_keys_of_earlier_versions_name_their_section(override, now):
    key = override.split("=")[0]
    with pytest.raises(UserError, match=f"unknown config key '{key}' \\(now {now}"):
        load_config(None, [override])


# --- HeRL: both contexts --------------------------------------------------------------------------
def test_both_contexts_put_each_revision_in_two_slots(tok):
    seen = []

    def logprobs(rollout):
        seen.append(rollout)
        return torch.full(rollout.completion_ids.shape, -0.5)

    _, trained, m, calls = run_hindsight(tok, ["71", "71"], logprobs=logprobs,
                                         group_temperature=0.7, temperature=0.5, context="both")
    slots = torch.nonzero(trained.rows["revision"]).flatten().tolist()
    assert len(slots) == 2 and m["herl/replaced"] == 2
    assert all(trained.texts[s] == "71" and trained.rewards[s] == 1.0 for s in slots)
    under = [trained.trained_under[s] for s in slots]
    hindsight_slot = slots[under.index(True) ^ 1]
    original_slot = slots[under.index(True)]
    assert trained.rollout.prompt(original_slot) == PromptCodec(tok).encode("p0:")
    assert float(trained.rollout.temperatures[original_slot]) == pytest.approx(0.7)
    assert trained.rollout.prompt(hindsight_slot) == calls[0]["prompts"][0]
    assert float(trained.rollout.temperatures[hindsight_slot]) == pytest.approx(0.5)
    assert len(seen) == 1 and (trained.behaviour_logps[slots, :3] == -0.5).all()


# --- the rare rubric variant ----------------------------------------------------------------------
def test_rare_variant_hides_a_two_digit_ending():
    train, held = rubric_task.splits(400, 100, "rare")
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held}
    for row in train:
        tag = row["prompt"][1]
        checks = [c["check"] for c in row["rubric"]]
        assert checks[0] == "num_chars" and len(checks) in (3, 4) and checks[-1] == "ends_with"
        assert row["rubric"][-1]["args"]["suffix"] == rubric_task.RARE_TAGS[tag]
        assert "ends" not in row["prompt"]
        assert all(RULES[c["check"]].check(row["solution"], **c["args"]) for c in row["rubric"])
    # a uniformly random answer meets the hidden ending one time in a hundred
    rng = random.Random(0)
    hits = sum(RULES["ends_with"].check("".join(rng.choice("0123456789") for _ in range(5)),
                                        suffix="13") for _ in range(20000))
    assert hits / 20000 == pytest.approx(0.01, abs=0.003)  # 4.3 binomial standard deviations


def test_rare_warm_start_revisions_name_the_ending_only_in_the_unmet_list():
    rng = random.Random(1)
    examples = [rubric_task.rare_sft_example(rng, set(), revise_share=1.0) for _ in range(100)]
    for ex in examples:
        instruction, met, unmet, draft, _ = ex["prompt"].split("\n")
        ending = ex["answer"][-2:]
        assert f"ends {ending}" in unmet and "ends" not in instruction
        assert ex["answer"] != draft[len("draft: "):]
    direct = [rubric_task.rare_sft_example(rng, set(), revise_share=0.0) for _ in range(200)]
    assert all("revise" not in d["prompt"] for d in direct)


def test_a_variant_with_too_few_prompts_is_refused(monkeypatch):
    row = rubric_task.make_row(random.Random(0), "rare")
    monkeypatch.setattr(rubric_task, "make_row", lambda rng, variant: dict(row))
    with pytest.raises(UserError, match="eval_size: 2 distinct held-out prompts .* gave only 1"):
        rubric_task.splits(0, 2, "rare")


def test_rare_warm_start_phase_runs_and_probes(tmp_path):
    from explorl.models.tiny import shipped_path
    from explorl.sft import SFTConfig, run_sft

    out = run_sft(SFTConfig(output_dir=str(tmp_path), init_from=str(shipped_path()),
                            rubric_steps=0, rare_steps=2, batch_size=4, eval_size=8),
                  log=lambda line: None)
    assert out["rubric_rare"]["prompts"] == 8 and "revision_all_met_blank" in out["rubric_rare"]
    assert (tmp_path / "model.safetensors").exists()


def test_on_policy_baseline_keeps_revisions_out_of_the_group_statistics():
    from explorl.algorithms.grpo import GRPO
    from explorl.batch import TrainBatch
    from explorl.config import HeRLConfig
    from explorl.exploration.hindsight import Hindsight, revision_advantages
    from tests.test_herl import make_rollout

    # group 0 failed everywhere, one slot a revision met everything; group 1 is mixed, its
    # revision (0.5) sits at its on-policy mean
    rewards = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.5])
    groups = [0, 0, 0, 0, 1, 1, 1]
    revision = torch.tensor([False, False, False, True, False, False, True])
    assert revision_advantages(rewards, torch.tensor(groups), revision).tolist() == \
        [0, 0, 0, 1.0, 0, 0, 0.0]
    tok = load_tokenizer("tiny")
    rollout = make_rollout(tok, [[5]] * 7, ["1"] * 7, groups)
    batch = TrainBatch(rollout, rewards, ["1"] * 7, rows={"policy": ~revision,
                                                          "revision": revision})
    mask = rollout.completion_mask
    grpo = GRPO(TrainConfig(loss_type="grpo"))
    on_policy = Hindsight(HeRLConfig(baseline="on_policy"), None, "", 8, 0).advantages(
        batch, mask, grpo.advantages).advantages
    std = 2 ** -0.5  # of the on-policy rewards 1 and 0 of group 1
    assert on_policy[:, 0].tolist() == pytest.approx(
        [0, 0, 0, 1.0, 0.5 / (std + 1e-4), -0.5 / (std + 1e-4), 0.0])
    # the reference: one revision among three failures makes their advantages negative
    group = Hindsight(HeRLConfig(), None, "", 8, 0).advantages(batch, mask,
                                                               grpo.advantages).advantages
    assert (group[:3, 0] < 0).all() and group[3, 0] > 1
