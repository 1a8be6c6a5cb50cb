import threading

import pytest

from explorl.rewards.math import math_verify_reward


def score(completion, **columns):
    return math_verify_reward(["q"], [completion], **{k: [v] for k, v in columns.items()})[0]


def test_boxed_answer_matches():
    assert score("so \\boxed{42}", ground_truth="42") == 1.0


def test_wrong_answer():
    assert score("The answer is 41", ground_truth="42") == 0.0


def test_fraction_equals_decimal():
    assert score("1/2", ground_truth="0.5") == 1.0
    assert score("The answer is $\\frac{1}{2}$", ground_truth="0.5") == 1.0


def test_bare_latex_gold_is_wrapped():
    assert score("\\boxed{1+x}", ground_truth="x+1") == 1.0
    assert score("\\boxed{\\sqrt{2}}", answer="\\sqrt{2}") == 1.0


def test_conversational_completion():
    completion = [{"role": "assistant", "content": "It is \\boxed{6}."}]
    assert score(completion, solution="6") == 1.0


@pytest.mark.parametrize("completion", ["", "   ", "no idea!!", "\\boxed{", "}}}{{", None, [], 3])
def test_garbage_completion(completion):
    assert score(completion, ground_truth="42") == 0.0


def test_reference_column_priority_and_missing_rows():
    rewards = math_verify_reward(
        ["q"] * 3,
        ["\\boxed{1}", "\\boxed{2}", "\\boxed{3}"],
        ground_truth=["1", None, None],
        solution=["9", "2", None],
        answer=None,
    )
    assert rewards == [1.0, 1.0, None]


def test_numeric_reference():
    assert score("\\boxed{7}", ground_truth=7) == 1.0


def test_missing_reference_raises():
    with pytest.raises(ValueError, match="ground_truth"):
        math_verify_reward(["q"], ["\\boxed{1}"])


def test_length_mismatch_raises():
    with pytest.raises(ValueError):
        math_verify_reward(["q", "q"], ["1", "2"], ground_truth=["1"])


def test_works_off_main_thread():
    result = []
    worker = threading.Thread(
        target=lambda: result.append(
            math_verify_reward(["q"], ["\\boxed{42}"], ground_truth=["42"])
        )
    )
    worker.start()
    worker.join()
    assert result == [[1.0]]
