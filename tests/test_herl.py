"""HeRL: hand-built groups for each step of the method, each knob shown to take effect, the
revision-token loss and its gradient, and an end-to-end run that revises and updates."""

import json
import math

import pytest
import torch

from explorl import TrainConfig, Trainer
from explorl.algorithms.losses import shaped_surrogate
from explorl.exploration import hindsight as herl
from explorl.rollout.engine import Rollout, left_pad

NAN = math.nan


# --- pure functions -----------------------------------------------------------------------------
def test_failed_groups_any_size_and_unknown_rewards():
    rewards = torch.tensor([0.2, 0.5, 0.4, 1.0, 0.3, NAN, NAN, 0.9])
    groups = torch.tensor([0, 0, 0, 1, 1, 2, 2, 3])
    assert herl.failed_groups(rewards, groups, 1.0) == [0, 3]  # group 2: nothing known
    assert herl.failed_groups(rewards, groups, 0.6) == [0]
    assert herl.failed_groups(rewards, groups, 0.0) == []


def test_candidates_are_tied_at_best_most_criteria_first_then_row_order():
    rewards = torch.tensor([0.5, 0.5, 0.2, 0.5, NAN, 0.5])
    num_met = torch.tensor([2, 3, 4, 3, 5, 2])
    groups = torch.zeros(6, dtype=torch.long)
    assert herl.choose_candidates(rewards, num_met, groups, 0, 16) == [1, 3, 0, 5]
    assert herl.choose_candidates(rewards, num_met, groups, 0, 2) == [1, 3]


def test_render_numbered_and_inline_lists():
    template = "{instruction}|{draft}|{met}|{unmet}|{met_list}|{unmet_list}"
    text = herl.render_hindsight(template, "I", "D", ["a", "b"], [])
    assert text == "I|D|1. a\n2. b|(none)|a, b|"


@pytest.mark.parametrize("draft, revisions, alpha, expected", [
    (0.4, [0.6, 1.0], 0.05, 0.4 + 0.05 * 0.6),
    (0.6, [0.2], 0.05, 0.6 - 0.05 * 0.4),  # a draft that revises badly loses
    (0.0, [NAN, 1.0], 0.5, 0.5),  # unknown revision rewards are ignored
    (0.3, [NAN], 0.5, 0.3),
    (0.3, [0.9], 0.0, 0.3),
])
def test_draft_bonus(draft, revisions, alpha, expected):
    assert herl.draft_bonus(draft, revisions, alpha) == pytest.approx(expected)


def test_accept_modes():
    revisions, drafts = [0.4, 0.9, 0.6, NAN, 0.5], [0.2, 0.5, 0.5, 0.5, 0.5]
    assert herl.accept(revisions, drafts, 0.5, "better", 1) == [1]
    assert herl.accept(revisions, drafts, 0.5, "better", 3) == [1, 2]
    assert herl.accept([0.4, 0.5], [0.1, 0.1], 0.5, "better", 2) == []
    assert herl.accept([0.4, 0.5], [0.1, 0.1], 0.5, "equal", 2) == [1]
    assert herl.accept([0.4, 0.5], [0.1, 0.1], 0.5, "draft", 2) == [1, 0]


def test_splice_keeps_group_ids_and_row_count():
    prompts, pmask = left_pad([[5, 6], [7]], 0)
    rollout = Rollout(prompts, pmask, torch.tensor([[9, 1, 0], [8, 8, 1]]),
                      torch.tensor([[1, 1, 0], [1, 1, 1]]), torch.tensor([1.0, 1.0]),
                      torch.tensor([3, 3]), torch.tensor([False, False]))
    written = herl.Sample([4, 4, 4, 4], [2, 1], 0.3, False)
    out = herl.splice(rollout, {1: written}, pad_id=0)
    assert out.group_ids.tolist() == [3, 3] and len(out) == 2
    assert out.prompt_ids.tolist() == [[0, 0, 5, 6], [4, 4, 4, 4]]
    assert out.completion_ids[1, :2].tolist() == [2, 1] and out.lengths.tolist() == [2, 2]
    assert out.temperatures.tolist() == pytest.approx([1.0, 0.3])
    assert herl.sample_at(out, 0) == herl.Sample([5, 6], [9, 1], 1.0, False)


@pytest.mark.parametrize("gamma", [1.0, 0.1])
def test_shaped_loss_value_and_gradient(gamma):
    logp = torch.tensor([-1.0, -2.0], requires_grad=True)
    old = torch.tensor([-1.0, -1.5])
    adv = torch.tensor([2.0, -1.0])
    loss = shaped_surrogate(logp, old, adv, gamma)
    rho = torch.exp(logp.detach() - old)
    assert torch.allclose(loss, -adv * rho / (rho + gamma))
    loss.sum().backward()
    # d/dlogp [-A rho / (rho + g)] = -A * g * rho / (rho + g)^2
    assert torch.allclose(logp.grad, -adv * gamma * rho / (rho + gamma) ** 2)
    assert logp.grad[0] == pytest.approx(-2.0 * gamma / (1 + gamma) ** 2)  # rho = 1


def test_shaped_loss_without_shaping_is_plain_ratio():
    logp = torch.tensor([-0.5])
    assert shaped_surrogate(logp, torch.tensor([-1.0]), torch.tensor([1.0]), 0.0).item() \
        == pytest.approx(-math.exp(0.5))


# --- the trainer's HeRL step on hand-built groups ----------------------------------------------
RUBRIC = [{"description": "has 7", "check": "include", "args": {"words": ["7"]}},
          {"description": "ends 1", "check": "ends_with", "args": {"suffix": "1"}}]
DATA = [{"prompt": "p0:", "rubric": RUBRIC}, {"prompt": "p1:", "rubric": RUBRIC}]


class FakeEngine:
    """Returns the given revision texts in order and records each request."""

    def __init__(self, tokenizer, texts):
        self.tok, self.texts, self.calls = tokenizer, list(texts), []

    def generate(self, prompts, counts, temperatures, max_new_tokens):
        self.calls.append(dict(prompts=prompts, counts=counts, temperatures=temperatures,
                               max_new_tokens=max_new_tokens))
        groups = [g for g, n in enumerate(counts) for _ in range(n)]
        texts = [self.texts.pop(0) for _ in groups]
        return make_rollout(self.tok, [prompts[g] for g in groups], texts, groups,
                            temperatures[0])


def make_rollout(tok, prompts, texts, groups, temperature=1.0):
    ids, mask = left_pad(prompts, tok.pad_token_id)
    comps = [tok(t, add_special_tokens=False).input_ids + [tok.eos_token_id] for t in texts]
    width = max(len(c) for c in comps)
    cids = torch.full((len(comps), width), tok.pad_token_id)
    cmask = torch.zeros_like(cids)
    for i, c in enumerate(comps):
        cids[i, : len(c)], cmask[i, : len(c)] = torch.tensor(c), 1
    return Rollout(ids, mask, cids, cmask, torch.full((len(comps),), temperature),
                   torch.tensor(groups), torch.zeros(len(comps), dtype=torch.bool))


def herl_trainer(tmp_path, **overrides):
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), method="herl", dataset=DATA,
                      reward_funcs=["rubric"], progress=False, plots=False, **overrides)
    return Trainer(cfg)


def run_hindsight(trainer, texts, groups, revisions):
    """Score the given samples of DATA's prompts, then run HeRL with scripted revisions."""
    rows = trainer.train_rows
    prompts = trainer.prompt_ids
    rollout = make_rollout(trainer.tokenizer, [prompts[g] for g in groups], texts, groups)
    rewards = trainer.score(rows, rollout)
    trainer.engine = FakeEngine(trainer.tokenizer, revisions)
    out = trainer.hindsight(rows, prompts, rollout, rewards)
    return rollout, rewards, out


# Group 0 (3 samples) fails: best 0.5 ("7" met, "ends 1" not). Group 1 (2 samples) succeeds.
SAMPLES = ["72", "33", "47", "71", "9"]
GROUPS = [0, 0, 0, 1, 1]


def test_failed_group_is_revised_with_hindsight_and_replaced(tmp_path):
    trainer = herl_trainer(tmp_path)
    rollout, rewards, (trained, total, revision, old, m) = run_hindsight(
        trainer, SAMPLES, GROUPS, ["71", "71"])
    call = trainer.engine.calls[0]
    assert call["counts"] == [1, 1]  # drafts "72" and "47", tied at 0.5
    context = trainer.tokenizer.decode(call["prompts"][0])
    expected = herl.render_hindsight(herl.DEFAULT_TEMPLATE, "p0:", "72", ["has 7"], ["ends 1"])
    assert context == expected
    assert m["herl/failed_groups"] == 0.5 and m["herl/drafts"] == 2
    assert m["herl/replaced"] == 1 and m["herl/beat_group"] == 1.0
    assert m["herl/revision_gain"] == pytest.approx(0.5)
    assert trained.group_ids.tolist() == GROUPS and len(trained) == 5
    slot = int(torch.nonzero(revision))
    assert GROUPS[slot] == 0 and total[slot] == 1.0
    assert trained.prompt_ids[slot][trained.prompt_mask[slot].bool()].tolist() == \
        call["prompts"][0]  # trained under the hindsight prompt, the reference's default
    # the completions table names revisions and the hindsight prompt they were written under
    assert trainer.revisions(trained, revision) == [expected if i == slot else False
                                                    for i in range(5)]
    drafts = [i for i in (0, 2) if i != slot]
    for d in drafts:  # bonus: 0.5 + 0.05 * (1.0 - 0.5)
        assert total[d] == pytest.approx(0.525)
    for i in {1, 3, 4} - {slot}:
        assert total[i] == rewards.total[i]
    assert old is None
    assert m["herl/revision_token_fraction"] == pytest.approx(
        3 / int(trained.completion_mask.sum()))


def test_threshold_candidate_limit_and_revisions_per_draft(tmp_path):
    t = herl_trainer(tmp_path, herl_threshold=0.5)
    *_, (_, _, _, _, m) = run_hindsight(t, SAMPLES, GROUPS, [])
    assert m["herl/drafts"] == 0 and t.engine.calls == []
    t = herl_trainer(tmp_path, herl_candidate_limit=1, herl_revisions=3)
    run_hindsight(t, SAMPLES, GROUPS, ["1", "2", "3"])
    assert t.engine.calls[0]["counts"] == [3]


def test_guided_temperature_and_length_take_effect(tmp_path):
    t = herl_trainer(tmp_path, herl_temperature=0.3, herl_max_length=5,
                     max_completion_length=9)
    *_, (trained, _, revision, _, _) = run_hindsight(t, SAMPLES, GROUPS, ["71", "71"])
    assert t.engine.calls[0]["temperatures"] == [0.3, 0.3]
    assert t.engine.calls[0]["max_new_tokens"] == 5
    assert trained.temperatures[revision].tolist() == pytest.approx([0.3])
    assert trained.temperatures[~revision].tolist() == [1.0] * 4


def test_bonus_alpha_and_replace_top_n(tmp_path):
    t = herl_trainer(tmp_path, herl_bonus_alpha=0.5, herl_replace_top_n=2)
    *_, (_, total, revision, _, m) = run_hindsight(t, SAMPLES, GROUPS, ["71", "7"])
    assert m["herl/replaced"] == 1  # only one revision beats the group
    t = herl_trainer(tmp_path, herl_bonus_alpha=0.5, herl_replace_top_n=2)
    *_, (_, total, revision, _, m) = run_hindsight(t, SAMPLES, GROUPS, ["71", "771"])
    assert m["herl/replaced"] == 2 and int(revision.sum()) == 2
    t = herl_trainer(tmp_path, herl_bonus_alpha=0.5, herl_replace_top_n=1)
    *_, (_, total, revision, _, _) = run_hindsight(t, SAMPLES, GROUPS, ["71", "3"])
    kept = [i for i in (0, 2) if not revision[i]]
    expected = {0: 0.5 + 0.5 * 0.5, 2: 0.5 + 0.5 * (0.0 - 0.5)}  # "3" meets nothing
    for i in kept:
        assert total[i] == pytest.approx(expected[i])


def test_accept_mode_and_fallback(tmp_path):
    worse = ["33", "33"]
    t = herl_trainer(tmp_path)
    rollout, _, (trained, total, revision, _, m) = run_hindsight(t, SAMPLES, GROUPS, worse)
    assert m["herl/replaced"] == 0 and torch.equal(trained.completion_ids, rollout.completion_ids)
    t = herl_trainer(tmp_path, herl_fallback=True)
    rollout, rewards, (trained, total, revision, _, _) = run_hindsight(t, SAMPLES, GROUPS, worse)
    changed = [i for i in range(5) if not torch.equal(trained.completion_ids[i],
                                                      rollout.completion_ids[i])]
    assert len(changed) == 1 and GROUPS[changed[0]] == 0 and not revision.any()
    assert t.decode(trained)[changed[0]] == "72"  # a copy of the best draft
    t = herl_trainer(tmp_path, herl_accept="equal")
    *_, (_, _, _, _, m) = run_hindsight(t, SAMPLES, GROUPS, ["27", "33"])  # equal to best
    assert m["herl/replaced"] == 1


def test_original_context_and_behaviour_logps(tmp_path):
    t = herl_trainer(tmp_path, herl_context="original")
    *_, (trained, _, revision, old, _) = run_hindsight(t, SAMPLES, GROUPS, ["71", "71"])
    slot = int(torch.nonzero(revision))
    assert trained.prompt_ids[slot][trained.prompt_mask[slot].bool()].tolist() == \
        t.prompt_ids[0]
    assert old is not None and (old[slot, :2] < 0).all() and (old[~revision] == 0).all()


def test_template_blank_lists_and_chat_template(tmp_path):
    t = herl_trainer(tmp_path, herl_revise_template="FIX {draft} / {unmet_list} ->")
    run_hindsight(t, SAMPLES, GROUPS, ["71", "71"])
    assert t.tokenizer.decode(t.engine.calls[0]["prompts"][0]) == "FIX 72 / ends 1 ->"
    t = herl_trainer(tmp_path, herl_blank_hindsight=True)
    run_hindsight(t, SAMPLES, GROUPS, ["71", "71"])
    context = t.tokenizer.decode(t.engine.calls[0]["prompts"][0])
    assert "has 7" not in context and "ends 1" not in context and "72" in context
    t = herl_trainer(tmp_path, herl_revise_template="{draft}|{unmet_list}")
    t.tokenizer.chat_template = "{% for m in messages %}<{{ m['content'] }}>{% endfor %}"
    t.codec.has_template = True
    run_hindsight(t, SAMPLES, GROUPS, ["71", "71"])
    assert t.tokenizer.decode(t.engine.calls[0]["prompts"][0]) == "<72|ends 1>"


def test_gamma_shapes_the_revision_loss(tmp_path):
    losses = {}
    for gamma in (1.0, 0.1):
        t = herl_trainer(tmp_path, herl_gamma=gamma, seed=0)
        rows, prompts = t.train_rows, t.prompt_ids
        rollout = make_rollout(t.tokenizer, [prompts[g] for g in GROUPS], SAMPLES, GROUPS)
        rewards = t.score(rows, rollout)
        t.engine = FakeEngine(t.tokenizer, ["71", "71"])
        t.herl_rng.seed(0)
        trained, total, revision, old, _ = t.hindsight(rows, prompts, rollout, rewards)
        from explorl.algorithms.advantages import AdvantageInputs, compute_advantages
        from explorl.trainer import Batch

        mask = trained.completion_mask.clone()
        adv = compute_advantages("grpo", AdvantageInputs(total, trained.group_ids, mask), "group")
        out = t.update(Batch(trained, adv, mask, None, None, revision, old))
        # rho = 1 on the single update: the off-policy loss is -A/(1 + gamma) per token
        expected = float(-(adv * mask)[revision].sum() / mask.sum()) / (1 + gamma)
        assert out["loss/off_policy"] == pytest.approx(expected, rel=1e-5)
        assert out["loss"] == pytest.approx(out["loss/on_policy"] + out["loss/off_policy"],
                                            abs=1e-6)
        losses[gamma] = out["loss/off_policy"]
    assert losses[1.0] != pytest.approx(losses[0.1])


def test_herl_needs_a_rubric_reward(tmp_path):
    from explorl.errors import UserError

    with pytest.raises(UserError, match="herl needs the 'rubric' reward"):
        Trainer(TrainConfig(output_dir=str(tmp_path / "r"), method="herl", dataset="arithmetic"))


# --- end to end ---------------------------------------------------------------------------------
def test_herl_run_revises_and_updates(tmp_path):
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), method="herl", max_steps=4,
                      prompts_per_step=8, num_generations=4, eval_size=20, task_train_size=100,
                      learning_rate=1e-3, herl_accept="equal", progress=False, plots=False,
                      save_every=2, log_completions_every=1)
    trainer = Trainer(cfg)
    assert cfg.dataset is None and trainer.cfg.dataset == "rubric"
    before = [p.detach().clone() for p in trainer.model.parameters()]
    summary = trainer.train()
    assert any(not torch.equal(a, b) for a, b in zip(trainer.model.parameters(), before))
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["herl/revisions"] for r in rows) > 0
    assert sum(r["herl/replaced"] for r in rows) > 0
    assert all(r["tokens/total"] > 0 for r in rows)
    assert rows[-1]["tokens/total"] == summary["tokens_generated"]
    assert "loss/off_policy" in rows[-1]
    table = [json.loads(x) for x in
             (tmp_path / "run" / "completions.jsonl").read_text().splitlines()]
    for r in rows:  # one line per trained sample; the revisions are the replaced slots
        lines = [x for x in table if x["step"] == r["step"]]
        assert len(lines) == 32
        assert sum(x["revision"] for x in lines) == r["herl/replaced"]
    revised = [x for x in table if x["revision"]]
    assert revised and all(x["hindsight"].startswith("revise " + x["prompt"])
                           and "\nunmet: " in x["hindsight"] for x in revised)


def test_a_rubric_reward_from_python_drives_hindsight(tmp_path):
    from explorl.rewards.rubric import RubricReward

    cfg = TrainConfig(output_dir=str(tmp_path / "run"), method="herl", dataset=DATA,
                      reward_funcs=[RubricReward("strict")], progress=False, plots=False)
    t = Trainer(cfg)
    _, rewards, (_, _, revision, _, m) = run_hindsight(t, SAMPLES, GROUPS, ["71", "3", "3"])
    assert rewards.total.tolist() == [0.0, 0.0, 0.0, 1.0, 0.0]  # strict
    # strict: the whole failed group ties at 0; most criteria met first ("72", "47", then "33")
    assert m["herl/drafts"] == 3 and m["herl/failed_groups"] == 0.5
    assert t.tokenizer.decode(t.engine.calls[0]["prompts"][2]).count("33") == 1
    assert int(revision.sum()) == 1
