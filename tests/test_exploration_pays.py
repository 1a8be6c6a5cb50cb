"""Guidance that teaches the unguided policy, and E3 budgets from the first step: the new
revision losses, the supervised term and its buffer, the guide, hindsight self-distillation and
the pilot allocation, each against hand-worked numbers; their settings refused when they cannot
apply."""

import math

import numpy as np
import pytest
import torch

from explorl.algorithms.losses import support_divergence, with_tail
from explorl.algorithms.terms import DistillationTerm, SupervisedTerm, TermInputs
from explorl.batch import Normalizer, Rollout, TrainBatch, UpdateBatch
from explorl.config import load_config
from explorl.errors import UserError
from explorl.exploration.budget import RolloutBudget, mixed_after, pilot_allocation
from explorl.exploration.guide import Guide
from explorl.exploration.hindsight import RevisionSurrogate
from explorl.exploration.revisions import RevisionBuffer


def micro(logps: torch.Tensor, **fields) -> TermInputs:
    n, width = logps.shape
    support = fields.pop("support", None)
    ids = torch.zeros(n, width, dtype=torch.long)
    rollout = Rollout(ids, torch.ones_like(ids), ids, torch.ones_like(ids), torch.ones(n),
                      torch.arange(n), torch.zeros(n, dtype=torch.bool))
    batch = UpdateBatch(rollout, fields.pop("advantages", torch.zeros(n, width)),
                        torch.ones(n, width, dtype=torch.long), Normalizer(n, n * width, width),
                        n * width, **fields)
    return TermInputs(logps, None, batch, batch.loss_mask, support)


# --- the revision term in LUFFY's form ------------------------------------------------------------
def test_luffy_form_shapes_the_current_probability():
    """Behaviour probability 1: the loss of a token of probability p is -A p / (p + gamma) and
    its gradient in log p is -A gamma p / (p + gamma)^2; at gamma 0.1 a token of p = 0.01 gets
    0.01 * 0.1 / 0.11^2 = 0.0826 of A, against 0.01 * 1 / 1.01^2 = 0.0098 at gamma 1."""
    logps = torch.log(torch.tensor([[0.01, 0.5]])).requires_grad_()
    x = micro(logps, advantages=torch.tensor([[2.0, 2.0]]),
              behaviour_logps=torch.full((1, 2), -9.0))  # ignored in this form
    out = RevisionSurrogate(0.1, behaviour_one=True)(x, 1.0).per_token
    assert out.tolist()[0] == pytest.approx([-2 * 0.01 / 0.11, -2 * 0.5 / 0.6])
    out.sum().backward()
    assert logps.grad.tolist()[0] == pytest.approx([-2 * 0.1 * 0.01 / 0.11 ** 2,
                                                    -2 * 0.1 * 0.5 / 0.6 ** 2])
    weight = {g: g * 0.01 / (0.01 + g) ** 2 for g in (0.1, 1.0)}
    assert weight[0.1] / weight[1.0] == pytest.approx(8.43, abs=0.01)  # an eighth


def test_the_reference_form_uses_the_behaviour_log_probs():
    logps = torch.log(torch.tensor([[0.2]]))
    x = micro(logps, advantages=torch.tensor([[1.0]]),
              behaviour_logps=torch.log(torch.tensor([[0.4]])))
    rho = 0.5  # 0.2 / 0.4
    assert float(RevisionSurrogate(1.0)(x, 1.0).per_token) == pytest.approx(-rho / (rho + 1))


# --- the supervised term and its buffer -----------------------------------------------------------
def test_supervised_term_is_the_weighted_negative_log_likelihood():
    logps = torch.log(torch.tensor([[0.5, 0.25]]))
    out = SupervisedTerm(0.3)(micro(logps), 0.3).per_token
    assert out.tolist()[0] == pytest.approx([0.3 * math.log(2), 0.3 * math.log(4)])


def test_buffer_replays_revisions_as_rows_of_their_own():
    ids = torch.tensor([[7, 8], [7, 8]])
    rollout = Rollout(ids, torch.ones_like(ids), torch.tensor([[3, 1], [4, 1]]),
                      torch.ones_like(ids), torch.ones(2), torch.tensor([0, 0]),
                      torch.zeros(2, dtype=torch.bool))
    sft = torch.tensor([False, True])
    batch = TrainBatch(rollout, torch.tensor([0.0, 1.0]), ["3", "4"],
                       rows={"policy": ~sft, "revision": sft, "sft": sft},
                       trained_under=[False, True])
    buffer = RevisionBuffer(size=1)
    assert buffer.replay(batch, 0) is batch  # nothing kept yet
    buffer.add(batch, sft)
    replayed = buffer.replay(batch, 0)
    assert len(replayed) == 3 and replayed.texts == ["3", "4", "4"]
    assert replayed.rollout.group_ids.tolist() == [0, 0, 1]  # a group of its own: no baseline
    assert replayed.rows["sft"].tolist() == [False, True, True]
    assert replayed.rows["policy"].tolist() == [True, False, False]
    assert replayed.rows["revision"].tolist() == [False, True, False]
    again = RevisionBuffer(1)
    again.load(buffer.state())
    assert again.replay(batch, 0).rollout.completion_ids.tolist() == \
        replayed.rollout.completion_ids.tolist()


# --- self-distillation ----------------------------------------------------------------------------
def test_divergences_on_a_support_with_a_tail_bucket():
    student = torch.tensor([0.5, 0.3, 0.2])
    teacher = torch.tensor([0.2, 0.2, 0.6])
    kl = float((student * (student / teacher).log()).sum())  # 0.36006
    m = (student + teacher) / 2
    jsd = float(0.5 * (teacher * (teacher / m).log()).sum()
                + 0.5 * (student * (student / m).log()).sum())  # 0.09057
    s, t = student.log(), teacher.log()
    assert float(support_divergence(s, t, "reverse_kl")) == pytest.approx(kl, rel=1e-5)
    assert float(support_divergence(s, t, "jsd")) == pytest.approx(jsd, rel=1e-5)
    # the teacher's top 2 tokens: the third token's mass is the tail bucket, nothing is lost
    assert float(support_divergence(s[:2], t[:2], "reverse_kl")) == pytest.approx(kl, rel=1e-5)
    assert with_tail(s[:2]).exp().tolist() == pytest.approx([0.5, 0.3, 0.2], abs=1e-6)


def test_distillation_term_covers_only_valid_distill_tokens():
    support = torch.log(torch.tensor([[[0.5, 0.3], [0.9, 0.05]]]))
    teacher = torch.log(torch.tensor([[[0.2, 0.2], [0.0 + 1e-9, 1e-9]]]))
    x = micro(torch.zeros(1, 2), support=support.requires_grad_(),
              teacher_logps=teacher, rows={"distill": torch.tensor([True])})
    x.mask[0, 1] = 0  # the second position is padding: no divergence, no gradient
    out = DistillationTerm(2.0, "reverse_kl")(x, 2.0)
    s, t = torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0.2, 0.2, 0.6])
    want = 2 * float((s * (s / t).log()).sum())
    assert float(out.per_token[0, 0].detach()) == pytest.approx(want, rel=1e-5)
    assert float(out.per_token[0, 1]) == 0
    out.per_token.sum().backward()
    assert torch.isfinite(support.grad).all() and (support.grad[0, 1] == 0).all()


def test_ema_guide_follows_the_policy_and_a_frozen_one_does_not():
    policy = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.constant_(policy.weight, 1.0)
    ema, frozen = Guide("ema", policy, rate=0.25), Guide("initial", policy)
    assert Guide("policy", policy).model is policy
    with torch.no_grad():
        policy.weight.fill_(3.0)
    ema.observe(policy)
    frozen.observe(policy)
    assert float(ema.model.weight) == pytest.approx(1.5)  # 0.75 * 1 + 0.25 * 3
    assert float(frozen.model.weight) == 1.0
    again = Guide("ema", policy, rate=0.25)
    again.load(ema.tensors())
    assert float(again.model.weight) == pytest.approx(1.5)


# --- E3: the pilot --------------------------------------------------------------------------------
def test_mixed_after_a_pilot():
    assert mixed_after([True, False], 0, 0.3) == 1.0  # mixed already
    assert mixed_after([False, False], 2, 0.1) == pytest.approx(1 - 0.9 ** 2)  # needs a success
    assert mixed_after([True, True], 1, 0.8) == pytest.approx(0.2)  # needs a failure
    assert mixed_after([], 2, 0.5) == pytest.approx(0.5)  # nothing known: 1 - p^2 - (1-p)^2


def test_pilot_allocation_by_hand():
    """After a pilot of 2: prompt 0 is mixed, 1 all wrong (p = 0.1), 2 all right (p = 0.9).
    Six extra samples within [1, 4] each. Gains of the k-th extra for prompt 1: 0.1 * 0.9^(k-1)
    = 0.1, 0.09, 0.081, ...; the same for prompt 2; prompt 0 gains nothing. Greedy: one each
    to start (the lower bounds), then 1, 2, 1, 2 (ties at random, alternating as the gains
    fall): 1 + 3 + 2 or 1 + 2 + 3."""
    passes = [[True, False], [False, False], [True, True]]
    out = pilot_allocation(passes, 6, [1, 1, 1], [4, 4, 4], [0.5, 0.1, 0.9],
                           np.random.default_rng(0))
    assert sum(out) == 6 and out[0] == 1 and sorted(out[1:]) == [2, 3]
    # an all-wrong prompt that is rarely right gains more from the next sample than one that is
    # never right
    out = pilot_allocation([[False, False], [False, False]], 3, [0, 0], [4, 4], [0.2, 0.01],
                           np.random.default_rng(0))
    assert out == [3, 0]
    with pytest.raises(ValueError):
        pilot_allocation(passes, 20, [1, 1, 1], [4, 4, 4], [0.5] * 3, np.random.default_rng(0))


def test_budget_pilots_in_the_first_pass_and_keeps_the_total():
    budget = RolloutBudget(8, 4, 12, rule="rank", pilot=2, seed=0)
    assert budget.piloting(epoch=0)
    extra = budget.after_pilot(["a", "b", "c"], [[True, False], [False, False], [True, True]], 1)
    assert sum(extra) == 3 * 6 and all(2 <= e <= 10 for e in extra)
    assert extra[0] == 2  # the mixed prompt gets only what its lower bound asks
    assert not budget.piloting(epoch=1)  # the paper's rank rule from the second pass on
    assert not RolloutBudget(8, 4, 12, rule="rank", pilot=0).piloting(epoch=0)
    assert RolloutBudget(8, 4, 12, rule="pilot", pilot=2).piloting(epoch=3)


# --- settings that cannot apply -------------------------------------------------------------------
@pytest.mark.parametrize("overrides, key", [
    (["method=herl", "herl.guide_ema=0"], "herl.guide_ema"),
    (["method=herl", "herl.guide_ema=1.5"], "herl.guide_ema"),
    (["method=herl", "herl.sft_coef=-1", "herl.context=original"], "herl.sft_coef"),
    (["method=herl", "herl.teach=revise", "herl.sft_coef=0.5"], "herl.sft_coef"),  # hindsight
    (["method=herl", "herl.sft_coef=0.5", "herl.context=original"], "herl.sft_coef"),  # distil
    (["method=herl", "herl.sft_buffer=8"], "herl.sft_buffer"),  # nothing to replay into
    (["method=herl", "herl.distill_beta=1"], "herl.distill_beta"),
    (["method=herl", "herl.revisions=0"], "herl.revisions"),
    (["method=herl", "herl.distill_coef=0"], "herl.distill_coef"),  # teach=distill: a teacher
    (["method=e3", "e3.pilot_samples=8"], "e3.pilot_samples"),  # the pilot is the budget
    (["method=e3", "e3.budget_rule=pilot", "e3.pilot_samples=0"], "e3.pilot_samples"),
])
def test_settings_that_cannot_apply_are_refused(overrides, key):
    with pytest.raises(UserError, match=f"override '.*': {key}:"):
        load_config(None, overrides)


# --- through the update and the trainer -----------------------------------------------------------
def test_supervised_term_weighs_a_mean_over_its_own_rows(tmp_path):
    """Whatever the batch's size, the term's share is coef times the mean negative
    log-likelihood of the marked rows' tokens."""
    from explorl.batch import Advantages
    from tests.helpers import distributed_update as du

    trainer = du.trainer_for("grpo", str(tmp_path / "run"))
    trainer.update.terms.append(SupervisedTerm(0.7))
    batch, advantages, mask = du.fixed_batch(trainer)
    batch.rows["sft"] = batch.rows["revision"].clone()
    logps = trainer.logprobs.policy(batch.rollout)
    rows = batch.rows["sft"]
    want = 0.7 * float(-(logps * mask)[rows].sum() / mask[rows].sum())
    metrics = trainer.update.step(trainer.update.prepare(batch, Advantages(advantages), mask),
                                  lr=1e-5)
    assert metrics["loss/sft"] == pytest.approx(want, rel=1e-5)
    assert metrics["grad/sft/up"] > 0 and metrics["grad/sft/down"] == 0


def rare_trainer(tmp_path, name: str, **herl):
    from explorl import TrainConfig, Trainer
    from explorl.config import HeRLConfig

    return Trainer(TrainConfig(output_dir=str(tmp_path / name), dataset="rubric_rare",
                               model="tiny-rare", rubric_reward="strict", method="herl",
                               prompts_per_step=4, num_generations=4, max_completion_length=12,
                               eval_size=8, task_train_size=64, progress=False, plots=False,
                               save_every=2, herl=HeRLConfig(candidate_limit=2, **herl)))


def test_distillation_moves_the_student_towards_its_teacher(tmp_path):
    """A few updates with the distillation term alone lower the divergence between the policy
    given the prompt and the frozen teacher given its hindsight, on the same failed samples."""
    from explorl.batch import TrainBatch
    from explorl.exploration.distill import distillation_targets

    trainer = rare_trainer(tmp_path, "d", teach="distill")
    trainer.update.terms = [t for t in trainer.update.terms if t.name == "distill"]
    torch.manual_seed(0)
    batch = trainer._collect(1, list(range(4)), [4] * 4, 1.0)
    train, taught = distillation_targets(trainer.hindsight, batch, TrainBatch.of(batch),
                                         trainer.guide_logprobs)
    assert taught["herl/distilled"] >= 8 and taught["herl/teacher_tokens"] > 0
    mask = train.loss_mask(False)
    from explorl.batch import Advantages

    divergences = []
    for _ in range(20):
        shard = trainer.update.prepare(train, Advantages(torch.zeros(mask.shape)), mask)
        divergences.append(trainer.update.step(shard, lr=2e-3)["distill/divergence"])
    assert divergences[-1] < 0.7 * divergences[0], divergences  # 0.26 -> 0.12 here


def test_herl_variants_run_resume_exactly_and_count_their_work(tmp_path):
    """An EMA guide, a replay buffer and the supervised term: the run resumes bit for bit (the
    guide's weights and the buffer are in the checkpoint)."""
    import json

    knobs = dict(teach="both", guide="ema", guide_ema=0.5, context="original",
                 revision_loss="luffy", gamma=0.1, sft_coef=1.0, sft_buffer=4, distill_coef=1.0)
    from dataclasses import replace

    straight = rare_trainer(tmp_path, "a", **knobs)
    straight.cfg = replace(straight.cfg, max_steps=4)
    straight.settings.max_steps = 4
    straight.train()
    for steps in (2, 4):
        t = rare_trainer(tmp_path, "b", **knobs)
        t.settings.max_steps = steps
        t.train()

    def rows(name):
        return [{k: v for k, v in json.loads(x).items() if not k.startswith(("time/", "eval/"))}
                for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]

    assert rows("a") == rows("b")
    assert sum(r["herl/replayed"] for r in rows("a")) > 0
    assert all(r["herl/distilled"] > 0 for r in rows("a"))
    for p, q in zip(straight.guide.model.parameters(), t.guide.model.parameters()):
        assert torch.equal(p, q)


def test_pilot_budget_in_a_run(tmp_path):
    """A pilot of 2, then the rest of 8 per prompt by the pilot's outcome; every sample's tokens
    count."""
    import json

    from explorl import TrainConfig, Trainer
    from explorl.config import E3Config

    Trainer(TrainConfig(output_dir=str(tmp_path / "run"), method="e3", max_steps=2,
                        e3=E3Config(adaptive_temperature=False), eval_size=8,
                        task_train_size=64, progress=False, plots=False)).train()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        assert sum(r["samples_per_prompt"]) == 16 * 8
        assert min(r["samples_per_prompt"]) >= 4 and max(r["samples_per_prompt"]) <= 12
        assert len(set(r["samples_per_prompt"])) > 1  # the budget acts in the first pass
    assert rows[-1]["tokens/total"] == sum(r["tokens/generated"] for r in rows)
