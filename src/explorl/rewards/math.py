"""Math answer-equivalence reward built on ``math-verify``."""

from __future__ import annotations

import functools
import inspect
import threading
from typing import Any

import math_verify
from math_verify.errors import TimeoutException

_TIMEOUT_SECONDS = 5
_PARSE_HAS_TIMEOUT = "parsing_timeout" in inspect.signature(math_verify.parse).parameters
_VERIFY_HAS_TIMEOUT = "timeout_seconds" in inspect.signature(math_verify.verify).parameters


def math_verify_reward(
    prompts: list[Any],
    completions: list[Any],
    completion_ids: list[Any] | None = None,
    *,
    ground_truth: list[Any] | None = None,
    solution: list[Any] | None = None,
    answer: list[Any] | None = None,
    **kwargs: Any,
) -> list[float | None]:
    """1.0 when a completion's final answer is mathematically equal to the reference, else 0.0.

    The reference for each row is the first non-None value among ``ground_truth``, ``solution``
    and ``answer``. Rows without any reference, or whose reference cannot be parsed, get None.
    Completions may be strings or conversational message lists (the last message's content is
    used). A completion with no parseable answer scores 0.0.
    """
    columns = [c for c in (ground_truth, solution, answer) if c is not None]
    if not columns:
        raise ValueError(
            "math_verify_reward needs a reference answer column: 'ground_truth', 'solution' "
            "or 'answer'"
        )
    for column in columns:
        if len(column) != len(completions):
            raise ValueError(
                f"math_verify_reward: reference column has {len(column)} values for "
                f"{len(completions)} completions"
            )
    timeout = _TIMEOUT_SECONDS if threading.current_thread() is threading.main_thread() else None
    rewards: list[float | None] = []
    for i, completion in enumerate(completions):
        reference = next((c[i] for c in columns if c[i] is not None), None)
        if reference is None:
            rewards.append(None)
            continue
        gold = _parse_gold(str(reference), timeout)
        if not gold:
            rewards.append(None)
            continue
        rewards.append(_score(gold, _completion_text(completion), timeout))
    return rewards


def _completion_text(completion: Any) -> str:
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        content = completion.get("content")
        return content if isinstance(content, str) else ""
    if isinstance(completion, (list, tuple)) and completion:
        return _completion_text(completion[-1])
    return ""


@functools.lru_cache(maxsize=4096)
def _parse_gold(reference: str, timeout: int | None) -> tuple:
    text = reference.strip()
    if not text:
        return ()
    for candidate in (text, f"${text}$", f"\\boxed{{{text}}}"):
        parsed = _parse(candidate, timeout)
        if parsed:
            return tuple(parsed)
    return ()


def _score(gold: tuple, text: str, timeout: int | None) -> float:
    if not text.strip():
        return 0.0
    try:
        pred = _parse(text, timeout)
        if not pred:
            return 0.0
        kwargs = {"timeout_seconds": timeout} if _VERIFY_HAS_TIMEOUT else {}
        return 1.0 if math_verify.verify(list(gold), pred, **kwargs) else 0.0
    except (Exception, TimeoutException):
        return 0.0


def _parse(text: str, timeout: int | None) -> list:
    kwargs = {"parsing_timeout": timeout} if _PARSE_HAS_TIMEOUT else {}
    try:
        return list(math_verify.parse(text, **kwargs))
    except (Exception, TimeoutException):
        return []
