"""The calculator task: its tool, its rewards, its warm-start demonstrations."""

import random

import pytest

from explorl.data import calculator
from explorl.models.tiny import char_tokenizer
from explorl.sft import _batch


@pytest.mark.parametrize("expression,value", [("37*8", "296"), ("12+7", "19"),
                                              ("50-60", "-10"), ("2+3*4", "14"),
                                              (" 9 * 9 ", "81"), ("7", "7")])
def test_calc_hand_worked(expression, value):
    assert calculator.calc(expression) == value


@pytest.mark.parametrize("expression", ["", "3+", "*4", "1/0", "2**3", "import os", "1e3"])
def test_calc_refuses_what_is_not_an_expression(expression):
    with pytest.raises(ValueError):
        calculator.calc(expression)


def test_rewards_read_the_models_last_message():
    answered = [{"role": "assistant", "content": "[calc:6*7]"},
                {"role": "tool", "name": "calc", "content": "42"},
                {"role": "assistant", "content": "42"}]
    cut_off = answered[:2]  # ended on the tool's answer: the model never said it
    direct = [{"role": "assistant", "content": " 42 "}]
    got = calculator.calculator_reward(None, [answered, cut_off, direct], answer=["42"] * 3)
    assert got == [1.0, 0.0, 1.0]
    assert calculator.tool_cost(None, [answered, cut_off, direct]) == [-0.1, -0.1, 0.0]


def test_demonstrations_train_the_call_and_the_answer_not_the_tools_answer():
    tok = char_tokenizer()
    rng = random.Random(0)
    demos = [calculator.sft_example(rng, set(), tool_share=1.0, bug_rate=0.0)
             for _ in range(4)]
    ids, mask, labels = _batch(tok, demos)
    for i, demo in enumerate(demos):
        call, answer, reply = (t for t, _ in demo["turns"])
        assert call == f"[calc:{demo['prompt'].rstrip('=')}]"
        assert answer == calculator.calc(call[6:-1]) + "\n" and reply == answer.strip()
        text = tok.decode([t for t, keep in zip(ids[i].tolist(), mask[i].tolist()) if keep])
        trained = tok.decode([t for t in labels[i].tolist() if t != -100])
        assert text == demo["prompt"] + call + answer + reply + "<eos>"
        assert trained == call + reply + "<eos>"  # the tool's answer is not the model's
    direct = calculator.sft_example(random.Random(1), set(), tool_share=0.0, bug_rate=0.0)
    assert len(direct["turns"]) == 1 and direct["turns"][0][1]
