"""Rubrics: the rule library, parsing with clear errors, dense/strict scores, verdicts for
hindsight, the judge hook; the built-in rubric task; test-time improvement rounds."""

import json
import math
import random

import pytest

from explorl.data import rubric_task
from explorl.errors import UserError
from explorl.rewards.base import compute_rewards
from explorl.rewards.rubric import RULES, Criterion, Grade, RubricReward, parse_rubric


@pytest.mark.parametrize("check, args, met, unmet", [
    ("min_words", {"n": 3}, "one two three", "one two"),
    ("max_words", {"n": 2}, "one two", "one two three"),
    ("min_chars", {"n": 4}, "abcd", "abc"),
    ("max_chars", {"n": 3}, " abc ", "abcd"),
    ("num_chars", {"n": 5}, "12345", "1234"),
    ("include", {"words": ["cat", "Dog"]}, "a dog and a CAT", "a cat"),
    ("avoid", {"words": ["7"]}, "123", "172"),
    ("starts_with", {"prefix": "Yes"}, "Yes, sir", "No. Yes"),
    ("ends_with", {"suffix": "."}, "Done. ", "Done!"),
    ("min_lines", {"n": 2}, "a\nb", "a"),
    ("max_lines", {"n": 1}, "a\n", "a\nb"),
    ("num_items", {"n": 2}, "- a\n* b\ntext", "1. a\n2) b\n- c"),
    ("json", {}, '```json\n{"a": 1}\n```', "{a: 1}"),
    ("lowercase", {}, "all small", "Not"),
    ("uppercase", {}, "LOUD", "Quiet"),
    ("no_comma", {}, "a b", "a, b"),
    ("distinct_chars", {}, "1234", "1231"),
])
def test_rules(check, args, met, unmet):
    c = parse_rubric([{"check": check, "args": args}], "r")[0]
    assert c.description == RULES[check].describe(**args)
    assert c.met(met) and not c.met(unmet)


@pytest.mark.parametrize("rubric, message", [
    ([{"check": "nope"}], r"r\[0\].check: unknown check 'nope'"),
    ([{"check": "max_words", "args": {"m": 3}}], r"r\[0\].args: .* do not fit check"),
    ([{"check": "max_words"}], r"r\[0\].args"),
    ([{"check": "json", "weight": -1}], r"r\[0\].weight: must be a number >= 0"),
    ([{"check": "json", "weight": 0}], r"r: the weights sum to 0"),
    ([{"check": "json", "colour": 1}], r"r\[0\]: unknown key\(s\) colour"),
    ([{"check": "judge"}], r"r\[0\].description: a criterion needs"),
    ([{"check": "no_such_module_x:f", "description": "d"}], r"cannot import"),
    ([], r"r: expected a non-empty list"),
    ("not json", r"r: not a JSON list"),
])
def test_bad_rubrics_name_where_and_what(rubric, message):
    with pytest.raises(UserError, match=message):
        parse_rubric(rubric, "r")


def ends_with_x(text, times=1):
    return text.endswith("x" * times)


def test_dense_strict_and_verdicts_with_weights():
    rubric = [{"check": "include", "args": {"words": ["a"]}, "weight": 2},
              {"check": "ends_with", "args": {"suffix": "!"}, "weight": 1},
              {"description": "two x", "check": f"{__name__}:ends_with_x", "args": {"times": 2},
               "weight": 1},
              {"description": "free", "check": lambda t: False, "weight": 0}]
    reward = RubricReward("dense")
    out = reward(["p"] * 3, ["a!", "axx", "b"], rubric=[rubric] * 3)
    assert list(out) == pytest.approx([0.75, 0.75, 0.0])
    grades = reward.grade(["p"] * 3, ["a!", "axx", "b"], rubric=[rubric] * 3)
    assert [g.verdicts for g in grades] == [[True, True, False, False],
                                            [True, False, True, False], [False] * 4]
    assert [reward.value(g) for g in grades] == list(out)
    strict = RubricReward("strict")(["p", "p"], ["a!", "a"], rubric=[[rubric[0], rubric[3]]] * 2)
    assert list(strict) == [1.0, 1.0]  # a zero-weight criterion does not count
    assert Grade([True, False], [1.0, 3.0]).dense == 0.25


def test_degenerate_repetition_scores_zero():
    out = RubricReward()(["p"], ["ab" * 20], rubric=[[{"check": "min_chars", "args": {"n": 3}}]])
    assert list(out) == [0.0]


def test_grades_reach_the_trainer_through_compute_rewards():
    rubric = [{"check": "include", "args": {"words": ["7"]}}]
    r = compute_rewards([("rubric", RubricReward())], [1.0], ["p", "p"], ["7", "1"], [[], []],
                        {"rubric": [rubric, rubric]})
    assert r.total.tolist() == [1.0, 0.0] and [g.verdicts for g in r.grades] == [[True], [False]]


class ScriptedJudge:
    def __init__(self, answers):
        self.answers, self.items = answers, []

    def verdicts(self, items):
        self.items += items
        return self.answers[: len(items)]


def test_judged_criteria_go_to_the_judge_and_failures_are_masked():
    rubric = parse_rubric([{"check": "include", "args": {"words": ["7"]}},
                           {"description": "is polite", "check": "judge", "weight": 3}], "r")
    judge = ScriptedJudge([[True], None])
    out = RubricReward("dense", judge)(["say 7", "say 7"], ["7 please", "7"],
                                       rubric=[rubric, rubric])
    assert out[0] == 1.0 and math.isnan(out[1])  # unknown, not silently 0
    assert judge.items[0].criteria == [("is polite", 3.0)]
    assert judge.items[0].instruction == "say 7" and judge.items[0].response == "7 please"
    with pytest.raises(UserError, match="no judge is configured"):
        RubricReward()(["p"], ["x"], rubric=[rubric])


def test_rubric_callable_provider():
    reward = RubricReward("strict", rubric_fn=lambda row: [
        Criterion("mentions the animal", 1.0, "include", {"words": [row["animal"]]})])
    assert list(reward(["p", "p"], ["a cat", "a cat"], animal=["cat", "dog"])) == [1.0, 0.0]


# --- the built-in task --------------------------------------------------------------------------
def test_task_rows_hidden_and_stated():
    train, held = rubric_task.splits(300, 100, "hidden")
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held}
    reward = RubricReward("strict")
    for row in held:
        assert reward(["p"], [row["solution"]], rubric=[row["rubric"]])[0] == 1.0
        end = row["rubric"][-1]
        assert end["description"] == f"ends {rubric_task.TAGS[row['prompt'][1]]}"
        assert "ends" not in row["prompt"]
    _, stated = rubric_task.splits(0, 50, "stated")
    assert all(r["rubric"][-1]["description"] in r["prompt"] for r in stated)


def test_sft_revisions_repair_drafts_and_name_the_ending():
    rng = random.Random(0)
    examples = [rubric_task.sft_example(rng, set(), revise_share=1.0) for _ in range(200)]
    assert all(e["prompt"].startswith("revise [") for e in examples)
    assert all("unmet: " in e["prompt"] for e in examples)
    # the ending digit is random in revisions: the tag does not predict it
    tags_to_end = {(e["prompt"][8], e["answer"][-1]) for e in examples}
    assert len({end for tag, end in tags_to_end if tag == "a"}) > 3


# --- test-time improvement ----------------------------------------------------------------------
def test_improve_keeps_the_best_answer_and_reports_each_round(monkeypatch):
    import explorl.improve as improve_module
    from explorl.models.policy import load_model, load_tokenizer

    rows = [{"prompt": "p:", "rubric": [{"check": "include", "args": {"words": ["7"]}},
                                        {"check": "ends_with", "args": {"suffix": "1"}}]},
            {"prompt": "q:", "rubric": [{"check": "include", "args": {"words": ["5"]}}]}]
    script = [["72", "5"], ["33"], ["71"]]  # round 0 both prompts; then only the failing one
    seen = []

    def fake_answer(model, tokenizer, codec, rows, encoded, max_new_tokens, temperature,
                    episodes=None):
        seen.append([tokenizer.decode(e) for e in encoded])
        texts = script.pop(0)
        return texts, texts

    monkeypatch.setattr(improve_module, "_answer", fake_answer)
    out = improve_module.improve(load_model("tiny"), load_tokenizer("tiny"), rows,
                                 rubric_task.REVISE_TEMPLATE, rounds=3)
    assert out["success_by_round"] == [0.5, 0.5, 1.0, 1.0]
    assert out["dense_by_round"] == [0.75, 0.75, 1.0, 1.0]
    assert out["answers"] == ["71", "5"]
    assert seen[1] == ["revise p:\nmet: mentions '7'\nunmet: ends with '1'\ndraft: 72\nfix:"]
    assert seen[2] == ["revise p:\nmet: \nunmet: mentions '7', ends with '1'\ndraft: 33\nfix:"]


def test_improve_cli_json(capsys):
    from explorl.cli import main

    assert main(["improve", "tiny", "--rounds", "2", "--size", "30", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["success_by_round"]) == 3 and out["n"] == 30
    assert out["success_by_round"] == sorted(out["success_by_round"])  # the best is kept
