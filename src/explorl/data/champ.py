"""CHAMP (Mao et al. 2024): 270 competition math problems with hints and concepts, as rows.

The ``champ-dataset`` package ships the problems as one JSON file and reads it offline. Its
reference answers are free text ("C(10, 5), or equivalently 252", "0 is the only possible
value", "No integer solutions"), which the paper grades with GPT-4. Here each answer gets a kind:

* ``math``: the answer reduces to one expression (numbers, ``n(n+1)/2``, ``2^floor(n/2)``,
  ``C(n, k)``, ...); ``ground_truth`` is its LaTeX in ``\\boxed{}``, checked by math-verify.
* ``yes_no``: the answer is exactly "Yes" or "No"; the completion's final answer must agree.
* ``free``: anything else (solution sets, prose); the reward is None (does not apply), which
  leaves these to a judge.

Rows: ``prompt`` (CHAMP's problem prompt plus "put the final answer in \\boxed{}", optionally
with the problem's hints and concepts as in the paper's "w/ H" prompts), ``answer`` (CHAMP's
text), ``answer_kind``, ``ground_truth``, ``category``, ``hints``, ``concepts`` (lists of text)
and ``prompt_id`` (CHAMP's identifier, e.g. ``P_Combinatorics_1``).
"""

from __future__ import annotations

import functools
import re
from typing import Any

import math_verify
import sympy
from sympy.parsing.sympy_parser import (
    convert_xor,
    implicit_multiplication_application,
    parse_expr,
    standard_transformations,
)

from explorl.data.prompts import completion_text
from explorl.errors import UserError
from explorl.rewards.math import math_verify_reward

KINDS = ("math", "yes_no", "free")
INSTRUCTION = ("Solve the following problem. Make sure to show your work before giving the "
               "final answer.")
ANSWER_FORMAT = "Put the final answer within \\boxed{}."
_TRAILING_NOTE = re.compile(r"\s+\((?:i\.e\.|none\b|no\b).*$")  # "100 (i.e., all values)"
_COUNT = re.compile(r"^(?:At most )?(-?\d+)(?: [A-Za-z-]+)+$")  # "0 is the only possible value"
_IS_VALUE = re.compile(
    r"^(?:The limit exists and is equal to|The only possible value for the limit is) (.+)$")
_WORD = re.compile(r"[A-Za-z]{2,}")
_FUNCTIONS = {"sqrt": "sqrt", "floor": "floor", "ceil": "ceiling"}
_NOT_ONE_EXPRESSION = ("=", "<", ">", "≥", "≤", "±", "...", "[", "%")
_BOXED = re.compile(r"\\boxed\s*\{")


def champ_rows(kinds: tuple[str, ...] = ("math",), with_hints: bool = False,
               with_concepts: bool = False) -> list[dict]:
    """CHAMP's problems whose answer kind is in ``kinds`` (default ``("math",)``: 180 of 270,
    the ones a rule can check). ``with_hints`` / ``with_concepts`` (default False) list the
    problem's hints / concepts in the prompt, numbered, as the paper's prompts do."""
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise UserError(f"champ: unknown answer kinds {sorted(unknown)} (known: {KINDS})")
    dataset = _load()
    rows = []
    for problem in dataset.problems.values():
        kind, ground_truth = classify_answer(problem.answer)
        if kind not in kinds:
            continue
        hints = [dataset[i].text for i in problem.ch_list if i.startswith("H_")]
        concepts = [dataset[i].text for i in problem.ch_list if i.startswith("C_")]
        shown = [dataset[i].text for i in problem.ch_list
                 if (with_hints and i.startswith("H_")) or (with_concepts and i.startswith("C_"))]
        rows.append({
            "prompt": _prompt(problem.text, shown),
            "answer": problem.answer,
            "answer_kind": kind,
            "ground_truth": ground_truth,
            "category": problem.category,
            "hints": hints,
            "concepts": concepts,
            "prompt_id": problem.identifier,
        })
    return rows


def classify_answer(answer: str) -> tuple[str, str | None]:
    """``(kind, ground_truth)`` of a CHAMP reference answer: ``("math", "\\boxed{<latex>}")``,
    ``("yes_no", "Yes" | "No")`` or ``("free", None)``."""
    text = answer.strip()
    if text in ("Yes", "No"):
        return "yes_no", text
    for candidate in _candidates(text):
        latex = _to_latex(candidate)
        if latex is not None:
            return "math", f"\\boxed{{{latex}}}"
    return "free", None


def champ_reward(prompts, completions, completion_ids=None, *, answer_kind: list[str],
                 ground_truth: list[str | None], **columns) -> list[float | None]:
    """1.0 when a completion's final answer matches, else 0.0 (TRL signature). ``math`` rows:
    math-verify equivalence with ``ground_truth``; ``yes_no`` rows: the last ``\\boxed{}`` (or,
    without one, the last non-empty line) must start with the same yes/no; ``free`` rows: None."""
    math_truth = [g if k == "math" else None for k, g in zip(answer_kind, ground_truth)]
    rewards = [None] * len(completions)
    if any(math_truth):
        rewards = math_verify_reward(prompts, completions, ground_truth=math_truth)
    for i, (kind, truth) in enumerate(zip(answer_kind, ground_truth)):
        if kind == "yes_no":
            rewards[i] = float(final_yes_no(completions[i]) == truth.lower())
    return rewards


def final_yes_no(completion: Any) -> str | None:
    """``"yes"`` / ``"no"`` from the last ``\\boxed{}`` of a completion or, without one, its last
    non-empty line; None when that does not start with either word."""
    text = completion_text(completion)
    boxed = _last_boxed(text)
    if boxed is None:
        lines = [line for line in text.splitlines() if line.strip()]
        boxed = lines[-1] if lines else ""
    words = re.findall(r"[a-z]+", boxed.lower().replace("\\text", " "))
    return words[0] if words and words[0] in ("yes", "no") else None


@functools.lru_cache(maxsize=1)
def _load():
    try:
        import champ_dataset
    except ImportError:
        raise UserError("dataset: champ needs the champ-dataset package (pip install "
                        "champ-dataset, or EXTRAS=champ bash scripts/setup.sh)") from None
    return champ_dataset.load("v0")


def _prompt(problem: str, shown: list[str]) -> str:
    parts = [INSTRUCTION, problem]
    if shown:
        parts += ["You may find the following information useful:",
                  "\n".join(f"{i + 1}. {text}" for i, text in enumerate(shown))]
    return "\n\n".join(parts + [ANSWER_FORMAT])


def _candidates(text: str) -> list[str]:
    text = _TRAILING_NOTE.sub("", text.replace("−", "-")).strip()
    for pattern in (_COUNT, _IS_VALUE):
        match = pattern.match(text)
        if match:
            return [match.group(1)]
    # "C(10, 5), or equivalently 252": either form will do, the first that parses is used.
    return [part.strip() for part in re.split(r",\s+or\b[^0-9(]*", text)]


def _to_latex(expression: str) -> str | None:
    if any(mark in expression for mark in _NOT_ONE_EXPRESSION):
        return None
    if any(word not in _FUNCTIONS for word in _WORD.findall(expression)):
        return None  # prose, or a function the grader does not know (sum_, ...)
    names = {"C": sympy.binomial, **{k: getattr(sympy, v) for k, v in _FUNCTIONS.items()}}
    transformations = standard_transformations + (implicit_multiplication_application,
                                                  convert_xor)
    try:
        value = parse_expr(expression, local_dict=names, transformations=transformations)
    except Exception:  # noqa: BLE001 - sympy raises many kinds; any means "not an expression"
        return None
    if not isinstance(value, sympy.Expr):
        return None
    latex = sympy.latex(value)
    if latex.startswith("{") and latex.endswith("}"):
        latex = latex[1:-1]  # sympy wraps binomials in braces, which would read as a set
    return latex if math_verify.parse(f"\\boxed{{{latex}}}") else None


def _last_boxed(text: str) -> str | None:
    starts = [m.end() for m in _BOXED.finditer(text)]
    if not starts:
        return None
    depth, start = 1, starts[-1]
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i]
    return text[start:]

