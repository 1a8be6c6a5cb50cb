import pytest

pytest.importorskip("reasoning_gym")

from explorl.data.gym import (  # noqa: E402 - after the skip on a missing package
    decode_entry,
    encode_entry,
    extract_answer,
    gym_exact_reward,
    gym_reward,
    gym_rows,
    gym_splits,
    parse_spec,
)
from explorl.data.loaders import columns_of, load_rows  # noqa: E402
from explorl.errors import UserError  # noqa: E402

TASKS = ["countdown", "basic_arithmetic", "leg_counting"]


def rewards(rows, completions):
    return gym_reward([r["prompt"] for r in rows], completions, **columns_of(rows))


@pytest.mark.parametrize("task", TASKS)
def test_true_answer_scores_one_and_a_wrong_one_less(task):
    rows = gym_rows(task, 6, seed=3)
    right = [f"<think>easy</think>\n<answer>{r['answer']}</answer>" for r in rows]
    wrong = ["<answer>1+1</answer>" for _ in rows]
    assert rewards(rows, right) == [1.0] * 6
    scores = rewards(rows, wrong)
    # countdown gives 0.05 to a well-formed wrong expression; the others give nothing
    assert scores == [0.05 if task == "countdown" else 0.0] * 6


def test_exact_reward_drops_partial_credit():
    rows = gym_rows("basic_arithmetic", 1, seed=0, min_terms=2, max_terms=2)
    answer = rows[0]["answer"]
    completions = [f"<answer>{answer}</answer>", f"<answer>{answer} or 12345</answer>"]
    rows = rows * 2
    assert rewards(rows, completions)[0] == 1.0 and 0 < rewards(rows, completions)[1] < 1
    columns = {k: [r[k] for r in rows] for k in rows[0] if k != "prompt"}
    assert gym_exact_reward(None, completions, **columns) == [1.0, 0.0]


def test_rows_are_deterministic_per_seed_and_load_as_they_are():
    first = gym_rows("basic_arithmetic", 20, seed=7)
    assert gym_rows("basic_arithmetic", 20, seed=7) == first
    assert [r["prompt"] for r in gym_rows("basic_arithmetic", 20, seed=8)] != \
        [r["prompt"] for r in first]
    assert load_rows(first) == first
    assert len({r["prompt_id"] for r in first}) == 20


def test_prompt_layouts():
    chat = gym_rows("countdown", 1)[0]["prompt"]
    assert [m["role"] for m in chat] == ["system", "user"]
    assert "<answer>" in chat[0]["content"]
    plain = gym_rows("countdown", 1, system_prompt=None)[0]["prompt"]
    assert plain == chat[1]["content"]
    custom = gym_rows("countdown", 1, system_prompt="Be brief.")[0]["prompt"]
    assert custom[0]["content"] == "Be brief."


def test_task_arguments_reach_the_task():
    rows = gym_rows("basic_arithmetic", 5, seed=0, min_terms=4, max_terms=4, min_digits=1,
                    max_digits=1)
    assert all(r["prompt"][-1]["content"].count(" ") >= 7 for r in rows)
    assert rewards(rows, [r["answer"] for r in rows]) == [1.0] * 5


def test_splits_share_no_question():
    # a small task: one-digit sums of two terms repeat often
    kwargs = dict(min_terms=2, max_terms=2, min_digits=1, max_digits=1)
    train, heldout = gym_splits("basic_arithmetic", 100, 50, seed=1, **kwargs)
    question = lambda r: r["prompt"][-1]["content"]  # noqa: E731
    assert len(heldout) == 50 and 0 < len(train) <= 100
    assert not {question(r) for r in train} & {question(r) for r in heldout}
    assert gym_splits("basic_arithmetic", 100, 50, seed=1, **kwargs) == (train, heldout)


@pytest.mark.parametrize("completion, expected", [
    ("<answer> 42 </answer>", "42"),
    ("<answer>1</answer> then <answer>2</answer>", "2"),
    ("I think\n  7  \n\n", "7"),
    ([{"role": "assistant", "content": "<answer>x</answer>"}], "x"),
    ("", None),
])
def test_extract_answer(completion, expected):
    assert extract_answer(completion) == expected


def test_entries_keep_tuples_sets_and_keys_through_json():
    entry = {"answer": "a", "metadata": {"grid": ((1, 2), (3,)), "seen": {4, 5},
                                         "by_pos": {(0, 1): [1, (2,)]}, "n": None}}
    assert decode_entry(encode_entry(entry)) == entry


def test_parse_spec():
    assert parse_spec("reasoning_gym:countdown") == "countdown"
    assert parse_spec("arithmetic") is None
    assert parse_spec(["not", "a", "spec"]) is None


def test_unknown_task_and_bad_arguments_are_user_errors():
    with pytest.raises(UserError, match="no task 'countdwn'.*countdown"):
        gym_rows("countdwn", 2)
    with pytest.raises(UserError, match="reasoning_gym:countdown: bad task arguments"):
        gym_rows("countdown", 2, no_such_option=1)


def test_rows_without_an_entry_are_not_scored():
    assert gym_reward(["q"], ["<answer>1</answer>"], gym_task=[None], gym_entry=[None]) == [None]
