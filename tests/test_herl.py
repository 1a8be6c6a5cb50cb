"""HeRL: hand-built groups for each step of the method (driven through its own interface with a
scripted engine, no trainer), each knob shown to take effect, the revision-token loss and its
gradient, and an end-to-end run that revises and updates."""

import json
import math

import pytest
import torch

from explorl import TrainConfig, Trainer
from explorl.batch import TrainBatch
from explorl.config import HeRLConfig
from explorl.data.prompts import PromptCodec
from explorl.distributed import Parallel
from explorl.exploration import hindsight as herl
from explorl.exploration.hindsight import DEFAULT_TEMPLATE, Hindsight, shaped_surrogate
from explorl.models.policy import load_tokenizer
from explorl.rewards.base import Scorer
from explorl.rewards.rubric import RubricReward, parse_rubric
from explorl.rollout.collect import Collector
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
    assert out.sampling_logps is None
    # the engine's log-probs stay with the rows they were sampled for; a written row has none
    rollout.sampling_logps = torch.tensor([[-0.5, -0.25, 0.0], [-1.0, -2.0, -3.0]])
    out = herl.splice(rollout, {1: written}, pad_id=0)
    assert out.sampling_logps[0].tolist() == [-0.5, -0.25]
    assert out.sampling_logps[1].isnan().all()


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


# --- HeRL's step on hand-built groups, driven with a scripted engine -----------------------------
RUBRIC = [{"description": "has 7", "check": "include", "args": {"words": ["7"]}},
          {"description": "ends 1", "check": "ends_with", "args": {"suffix": "1"}}]
ROWS = [{"prompt": "p0:", "rubric": parse_rubric(RUBRIC, "r")},
        {"prompt": "p1:", "rubric": parse_rubric(RUBRIC, "r")}]


class FakeEngine:
    """Returns the given texts in order (EOS appended) and records each request."""

    def __init__(self, tokenizer, texts):
        self.tok, self.texts, self.calls = tokenizer, list(texts), []

    def generate(self, prompts, counts, temperatures, max_new_tokens):
        self.calls.append(dict(prompts=prompts, counts=counts, temperatures=temperatures,
                               max_new_tokens=max_new_tokens))
        groups = [g for g, n in enumerate(counts) for _ in range(n)]
        return make_rollout(self.tok, [prompts[g] for g in groups],
                            [self.texts.pop(0) for _ in groups], groups,
                            [temperatures[g] for g in groups])


def make_rollout(tok, prompts, texts, groups, temperatures=None):
    ids, mask = left_pad(prompts, tok.pad_token_id)
    comps = [tok(t, add_special_tokens=False).input_ids + [tok.eos_token_id] for t in texts]
    width = max(len(c) for c in comps)
    cids = torch.full((len(comps), width), tok.pad_token_id)
    cmask = torch.zeros_like(cids)
    for i, c in enumerate(comps):
        cids[i, : len(c)], cmask[i, : len(c)] = torch.tensor(c), 1
    temps = torch.tensor(temperatures or [1.0] * len(comps), dtype=torch.float32)
    return Rollout(ids, mask, cids, cmask, temps, torch.tensor(groups),
                   torch.zeros(len(comps), dtype=torch.bool))


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny")


def collector(tok, texts, mode="dense"):
    codec = PromptCodec(tok)
    scorer = Scorer([("rubric", RubricReward(mode))], [1.0], codec)
    return Collector(FakeEngine(tok, texts), scorer, tok, Parallel())


def run_hindsight(tok, revised, texts=None, groups=None, logprobs=None,
                  group_temperature=1.0, mode="dense", **knobs):
    """Score ``texts`` (one group per prompt of ROWS, as ``groups`` says, sampled at
    ``group_temperature``) with a scripted engine, then run HeRL (``knobs``: HeRLConfig) whose
    revisions are ``revised``."""
    texts, groups = texts or SAMPLES, groups or GROUPS
    codec = PromptCodec(tok)
    prompts = [codec.encode(r["prompt"]) for r in ROWS]
    counts = [groups.count(g) for g in range(len(ROWS))]
    batch = collector(tok, texts, mode)(ROWS, prompts, counts,
                                        [group_temperature] * len(ROWS), 8)
    herl = Hindsight(HeRLConfig(**{"teach": "revise", **knobs}), codec, DEFAULT_TEMPLATE, 8,
                     seed=0)
    collect = collector(tok, revised, mode)
    logprobs = logprobs or (lambda rollout: -torch.ones(rollout.completion_ids.shape))
    plan = herl.plan(batch)
    revisions = collect(*plan.request) if plan.request else None
    trained, metrics = herl.merge(batch, plan, revisions, logprobs)
    return batch, trained, metrics, collect.engine.calls


# Group 0 (3 samples) fails: best 0.5 ("7" met, "ends 1" not). Group 1 (2 samples) succeeds.
SAMPLES = ["72", "47", "33", "71", "9"]
GROUPS = [0, 0, 0, 1, 1]


def test_failed_group_is_revised_with_hindsight_and_replaced(tok):
    batch, trained, m, calls = run_hindsight(tok, ["71", "71"])
    call = calls[0]
    assert call["counts"] == [1, 1]  # drafts "72" and "47", tied at 0.5
    context = tok.decode(call["prompts"][0])
    expected = herl.render_hindsight(herl.DEFAULT_TEMPLATE, "p0:", "72", ["has 7"], ["ends 1"])
    assert context == expected
    assert m["herl/failed_groups"] == 0.5 and m["herl/drafts"] == 2
    assert m["herl/replaced"] == 1 and m["herl/beat_group"] == 1.0
    assert m["herl/revision_gain"] == pytest.approx(0.5)
    assert trained.rollout.group_ids.tolist() == GROUPS and len(trained) == 5
    slot = int(torch.nonzero(trained.rows["revision"]))
    assert GROUPS[slot] == 0 and trained.rewards[slot] == 1.0 and trained.texts[slot] == "71"
    assert trained.rollout.prompt(slot) == call["prompts"][0]  # under the hindsight prompt
    # the completions table names revisions and the hindsight prompt they were written under
    assert trained.trained_under == [expected if i == slot else False for i in range(5)]
    for d in {0, 1} - {slot}:  # bonus: 0.5 + 0.05 * (1.0 - 0.5)
        assert trained.rewards[d] == pytest.approx(0.525)
    for i in {2, 3, 4} - {slot}:
        assert trained.rewards[i] == batch.rewards.total[i]
    assert trained.behaviour_logps is None
    assert m["herl/revision_token_fraction"] == pytest.approx(
        3 / int(trained.rollout.completion_mask.sum()))
    assert m["herl/tokens"] == 6 and m["herl/revisions"] == 2


def test_threshold_candidate_limit_and_revisions_per_draft(tok):
    *_, m, calls = run_hindsight(tok, [], threshold=0.5)
    assert m["herl/drafts"] == 0 and calls == []
    *_, calls = run_hindsight(tok, ["1", "2", "3"], candidate_limit=1, revisions=3)
    assert calls[0]["counts"] == [3]


def test_guided_temperature_and_length_take_effect(tok):
    _, trained, _, calls = run_hindsight(tok, ["71", "71"], max_length=5)
    assert calls[0]["max_new_tokens"] == 5
    _, trained, _, calls = run_hindsight(tok, ["71", "71"], temperature=0.3)
    assert calls[0]["temperatures"] == [0.3, 0.3]
    assert trained.rollout.temperatures[trained.rows["revision"]].tolist() == pytest.approx([0.3])
    assert trained.rollout.temperatures[~trained.rows["revision"]].tolist() == [1.0] * 4


def test_bonus_alpha_and_replace_top_n(tok):
    *_, m, _ = run_hindsight(tok, ["71", "7"], bonus_alpha=0.5, replace_top_n=2)
    assert m["herl/replaced"] == 1  # only one revision beats the group
    _, trained, m, _ = run_hindsight(tok, ["71", "771"], bonus_alpha=0.5, replace_top_n=2)
    assert m["herl/replaced"] == 2 and int(trained.rows["revision"].sum()) == 2
    _, trained, _, _ = run_hindsight(tok, ["71", "3"], bonus_alpha=0.5, replace_top_n=1)
    expected = {0: 0.5 + 0.5 * 0.5, 1: 0.5 + 0.5 * (0.0 - 0.5)}  # "3" meets nothing
    for i in (i for i in (0, 1) if not trained.rows["revision"][i]):
        assert trained.rewards[i] == pytest.approx(expected[i])


def test_accept_mode_and_fallback(tok):
    worse = ["33", "33"]
    batch, trained, m, _ = run_hindsight(tok, worse)
    assert m["herl/replaced"] == 0
    assert torch.equal(trained.rollout.completion_ids, batch.rollout.completion_ids)
    batch, trained, _, _ = run_hindsight(tok, worse, fallback=True)
    changed = [i for i in range(5) if not torch.equal(trained.rollout.completion_ids[i],
                                                      batch.rollout.completion_ids[i])]
    assert len(changed) == 1 and GROUPS[changed[0]] == 0 and not trained.rows["revision"].any()
    assert trained.texts[changed[0]] == "72"  # a copy of the best draft
    *_, m, _ = run_hindsight(tok, ["27", "33"], accept="equal")  # equal to the group's best
    assert m["herl/replaced"] == 1


def test_original_context_keeps_the_groups_temperature(tok):
    """A revision trained under the original prompt x: the numerator of its ratio is
    pi_T(z | x) at the temperature T that x's rollouts use, the denominator the behaviour
    log-probs of z under the hindsight prompt at the revision temperature."""
    seen = []

    def logprobs(rollout):
        seen.append(rollout)
        return torch.arange(rollout.completion_ids.numel(), dtype=torch.float32).view(
            rollout.completion_ids.shape) - 100

    _, trained, _, calls = run_hindsight(tok, ["71", "71"], logprobs=logprobs,
                                         group_temperature=0.7, temperature=0.5,
                                         context="original")
    assert calls[0]["temperatures"] == [0.5, 0.5]  # sampled at the revision temperature
    slot = int(torch.nonzero(trained.rows["revision"]))
    assert trained.rollout.prompt(slot) == PromptCodec(tok).encode("p0:")
    assert float(trained.rollout.temperatures[slot]) == pytest.approx(0.7)  # trained at x's T
    assert trained.trained_under[slot] is True
    # the behaviour log-probs were taken under the hindsight prompt, at the revision temperature
    (sampled,) = seen
    assert sampled.prompt(0) == calls[0]["prompts"][0]
    assert float(sampled.temperatures[0]) == pytest.approx(0.5)
    n = int(trained.rollout.lengths[slot])
    assert trained.behaviour_logps[slot, :n].tolist() == [-100.0, -99.0, -98.0][:n]
    assert (trained.behaviour_logps[~trained.rows["revision"]] == 0).all()


def test_template_and_blank_lists(tok):
    codec = PromptCodec(tok)
    row = ROWS[0]
    fix = herl.hindsight_prompt(codec, "FIX {draft} / {unmet_list} ->", row, "72", [True, False])
    assert tok.decode(fix) == "FIX 72 / ends 1 ->"
    *_, calls = run_hindsight(tok, ["71", "71"], blank_hindsight=True)
    context = tok.decode(calls[0]["prompts"][0])
    assert "has 7" not in context and "ends 1" not in context and "72" in context
    tok.chat_template = "{% for m in messages %}<{{ m['content'] }}>{% endfor %}"
    try:
        chat = PromptCodec(tok)
        assert chat.has_template
        ids = herl.hindsight_prompt(chat, "{draft}|{unmet_list}", row, "72", [True, False])
        assert tok.decode(ids) == "<72|ends 1>"
    finally:
        tok.chat_template = None


def test_strict_rubric_groups_tie_and_most_criteria_met_go_first(tok):
    batch, trained, m, calls = run_hindsight(tok, ["71", "3", "3"], mode="strict")
    assert batch.rewards.total.tolist() == [0.0, 0.0, 0.0, 1.0, 0.0]  # strict
    # the whole failed group ties at 0; most criteria met first ("72", "47", then "33")
    assert m["herl/drafts"] == 3 and m["herl/failed_groups"] == 0.5
    assert tok.decode(calls[0]["prompts"][2]).count("33") == 1
    assert int(trained.rows["revision"].sum()) == 1


def test_gamma_shapes_the_revision_loss(tmp_path):
    """At rho = 1 (one update per batch) a revision token's loss is -A / (1 + gamma)."""
    losses = {}
    for gamma in (1.0, 0.1):
        t = Trainer(TrainConfig(output_dir=str(tmp_path / "run"), method="herl",
                                dataset=[dict(r, rubric=RUBRIC) for r in ROWS],
                                reward_funcs=["rubric"], progress=False, plots=False,
                                herl=HeRLConfig(gamma=gamma, teach="revise")))
        rollout = make_rollout(t.tokenizer, [t.prompt_ids[g] for g in GROUPS], SAMPLES, GROUPS)
        revision = torch.tensor([False, True, False, False, False])
        rewards = torch.tensor([0.5, 1.0, 0.0, 1.0, 0.0])
        trained = TrainBatch(rollout, rewards, SAMPLES, rows={"policy": ~revision,
                                                              "revision": revision})
        mask = trained.loss_mask(False)
        estimate = t.algorithm.advantages(trained, mask)
        out = t.update.step(t.update.prepare(trained, estimate, mask), lr=1e-5)
        adv = estimate.advantages
        expected = float(-(adv * mask)[revision].sum() / mask.sum()) / (1 + gamma)
        assert out["loss/revision"] == pytest.approx(expected, rel=1e-5)
        assert out["loss"] == pytest.approx(out["loss/policy"] + out["loss/revision"],
                                            abs=1e-6)
        losses[gamma] = out["loss/revision"]
    assert losses[1.0] != pytest.approx(losses[0.1])


def test_herl_needs_a_rubric_reward(tmp_path):
    from explorl.errors import UserError

    with pytest.raises(UserError, match="herl needs the 'rubric' reward"):
        Trainer(TrainConfig(output_dir=str(tmp_path / "r"), method="herl", dataset="arithmetic"))


# --- end to end ---------------------------------------------------------------------------------
def test_herl_run_revises_and_updates(tmp_path):
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), method="herl", max_steps=4,
                      prompts_per_step=8, num_generations=4, eval_size=20, task_train_size=100,
                      learning_rate=1e-3, herl=HeRLConfig(accept="equal", teach="revise"),
                      progress=False,
                      plots=False,
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
    assert "loss/revision" in rows[-1]
    table = [json.loads(x) for x in
             (tmp_path / "run" / "completions.jsonl").read_text().splitlines()]
    for r in rows:  # one line per trained sample; the revisions are the replaced slots
        lines = [x for x in table if x["step"] == r["step"]]
        assert len(lines) == 32
        assert sum(x["revision"] for x in lines) == r["herl/replaced"]
    revised = [x for x in table if x["revision"]]
    assert revised and all(x["hindsight"].startswith("revise " + x["prompt"])
                           and "\nunmet: " in x["hindsight"] for x in revised)


def test_a_graded_reward_from_python_turns_hindsight_on(tmp_path):
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), method="herl",
                      dataset=[dict(r, rubric=RUBRIC) for r in ROWS],
                      reward_funcs=[RubricReward("strict")], progress=False, plots=False)
    t = Trainer(cfg)
    assert t.hindsight is not None and t.scorer.graded
