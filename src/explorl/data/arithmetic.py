"""Built-in arithmetic task: prompts like ``37+48=`` whose difficulty varies a lot.

Levels run from one-digit sums to three-digit sums, borrows and two-digit products, so that a
tiny model solves some prompts always, some sometimes and some never (what per-prompt rollout
budgets need). Splits are generated from fixed seeds, so every run sees the same held-out set;
the held-out split shares no prompt with the train split.

:func:`buggy_answer` gives the answer of a classic procedural "bug" of column addition: each
column is added right, but its carry is never passed on to the next column. The warm start
imitates a mix of correct and buggy demonstrations, so the shipped model holds both habits and
RL has something to choose between.
"""

from __future__ import annotations

import math
import random

# name: (operator, [(low, high) of each operand]); a chain has more than two operands
LEVELS: dict[str, tuple[str, list[tuple[int, int]]]] = {
    "L0": ("+", [(0, 9), (0, 9)]),
    "L1": ("+", [(10, 99), (0, 9)]),
    "L2": ("-", [(10, 99), (0, 9)]),
    "L3": ("+", [(10, 99), (0, 9), (0, 9)]),
    "L4": ("+", [(10, 99), (10, 99)]),
    "L5": ("+", [(100, 999), (0, 9)]),
    "L6": ("+", [(100, 999), (10, 99)]),
    "L7": ("*", [(10, 99), (2, 9)]),
}
TRAIN_SEED, HELDOUT_SEED = 1234, 5678


def _problem(rng: random.Random, level: str) -> tuple[str, str]:
    op, ranges = LEVELS[level]
    xs = [rng.randint(lo, hi) for lo, hi in ranges]
    if op == "-" and xs[1] > xs[0]:
        xs = [xs[1], xs[0]]  # answers stay non-negative
    value = {"+": sum(xs), "-": xs[0] - xs[1], "*": xs[0] * xs[1]}[op]
    return op.join(map(str, xs)) + "=", str(value)


def sample_problem(rng: random.Random, exclude: set[str] = frozenset()) -> tuple[str, str, str]:
    """A fresh (prompt, answer, level) from a uniformly chosen level, not in ``exclude``."""
    while True:
        level = rng.choice(list(LEVELS))
        prompt, answer = _problem(rng, level)
        if prompt not in exclude:
            return prompt, answer, level


def _digits(n: int, width: int) -> list[int]:
    return [int(c) for c in str(n).rjust(width, "0")]


def buggy_answer(prompt: str) -> str:
    """The sum when carries are never passed on: every column but the leftmost keeps only its
    last digit (``37+48`` -> ``75``). Equal to the true sum when no column carries; other
    operations are answered correctly."""
    body = prompt.rstrip("=")
    op = next(c for c in "+-*" if c in body)
    xs = [int(x) for x in body.split(op)]
    if op != "+":
        return str(xs[0] - xs[1] if op == "-" else xs[0] * xs[1])
    width = max(len(str(x)) for x in xs)
    cols = [sum(c) for c in zip(*(_digits(x, width) for x in xs))]
    cols = cols[:1] + [c % 10 for c in cols[1:]]
    return str(int("".join(map(str, cols))))


def _space(level: str) -> int:
    """How many distinct prompts a level has (before ordering operands of ``-``)."""
    return math.prod(hi - lo + 1 for lo, hi in LEVELS[level][1])


def _heldout_quota(size: int) -> dict[str, int]:
    """Equal shares per level, but at most a quarter of a small level's prompts, so that the
    train split keeps most of them; what a small level cannot take goes to the others."""
    quota = {lv: 0 for lv in LEVELS}
    cap = {lv: _space(lv) // 4 for lv in LEVELS}
    left = size
    while left > 0:
        open_levels = [lv for lv in LEVELS if quota[lv] < cap[lv]]
        if not open_levels:
            raise ValueError(f"the arithmetic task has fewer than {size} held-out prompts")
        for lv in open_levels[:left]:
            quota[lv] += 1
            left -= 1
    return quota


def splits(train_size: int, heldout_size: int) -> tuple[list[dict], list[dict]]:
    """Train and held-out rows (prompt, answer, level, prompt_id); no prompt is in both. The
    train split cycles through levels in equal shares and repeats small levels' prompts."""
    rng = random.Random(HELDOUT_SEED)
    heldout: list[dict] = []
    held: set[str] = set()
    for level, n in _heldout_quota(heldout_size).items():
        while n > 0:
            prompt, answer = _problem(rng, level)
            if prompt not in held:
                held.add(prompt)
                heldout.append(_row(prompt, answer, level))
                n -= 1
    rng = random.Random(TRAIN_SEED)
    levels = list(LEVELS)
    train: list[dict] = []
    while len(train) < train_size:
        level = levels[len(train) % len(levels)]
        prompt, answer = _problem(rng, level)
        if prompt not in held:
            train.append(_row(prompt, answer, level))
    return train, heldout


def _row(prompt: str, answer: str, level: str) -> dict:
    return {"prompt": prompt, "answer": answer, "level": level, "prompt_id": prompt}


def exact_match_reward(prompts, completions, completion_ids=None, *, answer, **kwargs):
    """1.0 when the completion, stripped, equals the answer; else 0.0 (TRL signature)."""
    return [float(_text(c).strip() == str(a)) for c, a in zip(completions, answer)]


def _text(completion) -> str:
    if isinstance(completion, list):  # conversational: the last message's content
        return completion[-1]["content"] if completion else ""
    return completion
