"""Built-in multi-turn task: the arithmetic prompts with a calculator tool (``dataset=
calculator``).

The model may answer at once (``12*7=84``) or call the tool in the tagged format and then answer
(``12*7=[calc:12*7]`` + the tool's ``84`` and a newline + ``84``). :func:`calculator_reward` is 1
when the episode's last message is the model's and equals the answer; :func:`tool_cost` takes
``COST`` off for each call, so that answering at once is worth more where the model is sure of
itself, and calling pays where it is not. The prompts and the held-out split are arithmetic's;
each row also carries the answer check as a one-criterion ``rubric`` (:func:`with_rubric`), which
HeRL grades with in place of :func:`calculator_reward`.
"""

from __future__ import annotations

import random

from explorl.data import arithmetic

COST = 0.1
ALLOWED = set("0123456789+-* ")


def calc(expression: str) -> str:
    """Evaluates an arithmetic expression of integers with + - and *.

    Args:
        expression: the expression, e.g. 37*8
    """
    if not expression or not set(expression) <= ALLOWED:
        raise ValueError(f"not an expression of integers with + - *: {expression!r}")
    total, term, sign = 0, 1, 1
    for part in _tokens(expression):
        if part in "+-":
            total, term, sign = total + sign * term, 1, 1 if part == "+" else -1
        elif part != "*":
            term *= int(part)
    return str(total + sign * term)


def _tokens(expression: str) -> list[str]:
    """Numbers and operators; a malformed expression (``3+``, ``*4``) raises."""
    out, number = [], ""
    for c in expression.replace(" ", ""):
        if c.isdigit():
            number += c
            continue
        if not number:
            raise ValueError(f"malformed expression: {expression!r}")
        out += [number, c]
        number = ""
    if not number:
        raise ValueError(f"malformed expression: {expression!r}")
    return out + [number]


def calculator_reward(prompts, completions, completion_ids=None, *, answer, **_) -> list[float]:
    """1.0 when the last message is the model's and, stripped, equals the answer."""
    out = []
    for messages, a in zip(completions, answer):
        last = messages[-1] if isinstance(messages, list) and messages else {}
        out.append(float(last.get("role") == "assistant"
                         and last.get("content", "").strip() == str(a)))
    return out


def tool_cost(prompts, completions, **_) -> list[float]:
    """``-COST`` for each tool call of the episode."""
    return [-COST * sum(m.get("role") == "tool" for m in messages) for messages in completions]


def answers(text: str, answer: str) -> bool:
    """The model's last line (its final message) is the answer: the rubric form of
    :func:`calculator_reward`."""
    lines = text.strip().splitlines()
    return bool(lines) and lines[-1].strip() == answer


def with_rubric(row: dict) -> dict:
    """``row`` with its one-criterion rubric, for HeRL's hindsight: the criterion says what
    was asked, not the answer."""
    criterion = {"description": f"answers with the value of {row['prompt'].rstrip('=')}",
                 "check": "explorl.data.calculator:answers", "args": {"answer": row["answer"]}}
    return {**row, "rubric": [criterion]}


def splits(train_size: int, eval_size: int) -> tuple[list[dict], list[dict]]:
    train, held = arithmetic.splits(train_size, eval_size)
    return [with_rubric(r) for r in train], [with_rubric(r) for r in held]


def sft_example(rng: random.Random, held: set[str], tool_share: float,
                bug_rate: float) -> dict:
    """A warm-start demonstration: ``turns`` of (text, trained) after the prompt. With
    probability ``tool_share`` a call, the tool's answer (not trained: the model never writes
    it) and the answer; else a direct answer, buggy with probability ``bug_rate`` as in the
    arithmetic warm start."""
    prompt, answer, _ = arithmetic.sample_problem(rng, held)
    if rng.random() < tool_share:
        expression = prompt.rstrip("=")
        return {"prompt": prompt, "turns": [(f"[calc:{expression}]", True),
                                            (f"{calc(expression)}\n", False), (answer, True)]}
    if rng.random() < bug_rate:
        answer = arithmetic.buggy_answer(prompt)
    return {"prompt": prompt, "turns": [(answer, True)]}
