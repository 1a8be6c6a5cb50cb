"""Rubrics: per-prompt lists of weighted criteria, checked by rules or by an LLM judge.

A criterion is ``{description, weight, check, args}``. ``check`` names a rule from
:data:`RULES` (IFEval-style checks over the response text), a ``module:function`` predicate
``fn(text, **args) -> bool``, a Python callable, or ``"judge"`` (an LLM gives the verdict).
The reward is the weighted fraction of criteria met (``dense``) or 1 when all are met
(``strict``). Grades keep the per-criterion verdicts: hindsight needs to name what was missed.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from explorl.errors import UserError


# --- the rule library ---------------------------------------------------------------------------
def _words(text: str) -> list[str]:
    return re.findall(r"\b\w+\b", text)


def _items(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if re.match(r"\s*([-*\u2022]|\d+[.)])\s+", ln)]


def _json(text: str) -> bool:
    body = re.sub(r"^```(?:json)?\s*|\s*```$", "", text.strip())
    try:
        json.loads(body)
    except ValueError:
        return False
    return True


def _has(text: str, word: str) -> bool:
    return word.lower() in text.lower()


@dataclass(frozen=True)
class Rule:
    check: Callable[..., bool]  # (text, **args) -> met
    describe: Callable[..., str]  # (**args) -> a sentence a model can read


RULES: dict[str, Rule] = {
    "min_words": Rule(lambda t, n: len(_words(t)) >= n, lambda n: f"has at least {n} words"),
    "max_words": Rule(lambda t, n: len(_words(t)) <= n, lambda n: f"has at most {n} words"),
    "min_chars": Rule(lambda t, n: len(t.strip()) >= n,
                      lambda n: f"has at least {n} characters"),
    "max_chars": Rule(lambda t, n: len(t.strip()) <= n, lambda n: f"has at most {n} characters"),
    "num_chars": Rule(lambda t, n: len(t.strip()) == n, lambda n: f"has exactly {n} characters"),
    "include": Rule(lambda t, words: all(_has(t, w) for w in words),
                    lambda words: "mentions " + ", ".join(map(repr, words))),
    "avoid": Rule(lambda t, words: not any(_has(t, w) for w in words),
                  lambda words: "does not mention " + ", ".join(map(repr, words))),
    "starts_with": Rule(lambda t, prefix: t.strip().startswith(prefix),
                        lambda prefix: f"starts with {prefix!r}"),
    "ends_with": Rule(lambda t, suffix: t.strip().endswith(suffix),
                      lambda suffix: f"ends with {suffix!r}"),
    "min_lines": Rule(lambda t, n: len(t.strip().splitlines()) >= n,
                      lambda n: f"has at least {n} lines"),
    "max_lines": Rule(lambda t, n: len(t.strip().splitlines()) <= n,
                      lambda n: f"has at most {n} lines"),
    "num_items": Rule(lambda t, n: len(_items(t)) == n,
                      lambda n: f"is a list of exactly {n} items"),
    "json": Rule(lambda t: _json(t), lambda: "is valid JSON"),
    "lowercase": Rule(lambda t: t == t.lower(), lambda: "is all lowercase"),
    "uppercase": Rule(lambda t: t == t.upper(), lambda: "is all uppercase"),
    "no_comma": Rule(lambda t: "," not in t, lambda: "uses no commas"),
    "distinct_chars": Rule(lambda t: len(set(t.strip())) == len(t.strip()),
                           lambda: "repeats no character"),
}
JUDGE = "judge"


# --- criteria -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Criterion:
    description: str
    weight: float = 1.0
    check: str | Callable = JUDGE
    args: dict = field(default_factory=dict, hash=False)

    @property
    def judged(self) -> bool:
        return self.check == JUDGE

    def met(self, text: str) -> bool:
        return bool(_resolve_check(self.check, "check")(text, **self.args))


def parse_criterion(obj, where: str) -> Criterion:
    """A dict (or :class:`Criterion`) -> a checked :class:`Criterion`; errors name ``where``."""
    if isinstance(obj, Criterion):
        obj = {"description": obj.description, "weight": obj.weight, "check": obj.check,
               "args": obj.args}
    if not isinstance(obj, dict):
        raise UserError(f"{where}: expected a mapping with description, weight, check, args")
    unknown = set(obj) - {"description", "weight", "check", "args"}
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    check = obj.get("check", JUDGE)
    args = obj.get("args") or {}
    if not isinstance(args, dict):
        raise UserError(f"{where}.args: expected a mapping, got {type(args).__name__}")
    weight = obj.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) \
            or not math.isfinite(weight) or weight < 0:
        raise UserError(f"{where}.weight: must be a number >= 0, got {weight!r}")
    fn = _resolve_check(check, f"{where}.check")
    if fn is not None:
        try:
            inspect.signature(fn).bind("", **args)
        except TypeError as e:
            raise UserError(f"{where}.args: {args!r} do not fit check {check!r} ({e})") from None
    description = obj.get("description")
    if description is None and isinstance(check, str) and check in RULES:
        description = RULES[check].describe(**args)
    if not isinstance(description, str) or not description.strip():
        raise UserError(f"{where}.description: a criterion needs a non-empty description")
    return Criterion(description, float(weight), check, dict(args))


def _resolve_check(check, where: str) -> Callable | None:
    if callable(check):
        return check
    if not isinstance(check, str):
        raise UserError(f"{where}: expected a rule name, 'module:function' or 'judge'")
    if check == JUDGE:
        return None
    if check in RULES:
        return RULES[check].check
    if ":" not in check:
        raise UserError(f"{where}: unknown check {check!r} (rules: {', '.join(RULES)}; "
                        "or 'module:function', or 'judge')")
    module_name, attr = check.split(":", 1)
    try:
        fn = getattr(importlib.import_module(module_name), attr, None)
    except Exception as e:  # noqa: BLE001 - any import failure is the user's to fix
        raise UserError(f"{where}: cannot import {module_name!r} ({type(e).__name__}: {e})") \
            from None
    if not callable(fn):
        raise UserError(f"{where}: {module_name!r} has no function {attr!r}")
    return fn


def parse_rubric(obj, where: str) -> list[Criterion]:
    if isinstance(obj, str):
        try:
            obj = json.loads(obj)
        except ValueError:
            raise UserError(f"{where}: not a JSON list of criteria") from None
    if not isinstance(obj, list) or not obj:
        raise UserError(f"{where}: expected a non-empty list of criteria")
    rubric = [parse_criterion(c, f"{where}[{i}]") for i, c in enumerate(obj)]
    if sum(c.weight for c in rubric) <= 0:
        raise UserError(f"{where}: the weights sum to 0")
    return rubric


# --- grading ------------------------------------------------------------------------------------
@dataclass
class Grade:
    verdicts: list[bool]
    weights: list[float]

    @property
    def dense(self) -> float:
        return sum(w for w, v in zip(self.weights, self.verdicts) if v) / sum(self.weights)

    @property
    def strict(self) -> float:
        return float(all(v for w, v in zip(self.weights, self.verdicts) if w > 0))

    @property
    def num_met(self) -> int:
        return sum(self.verdicts)


class RubricReward:
    """A TRL-signature reward over a ``rubric`` column (or ``rubric_fn(row) -> criteria``),
    and a :class:`explorl.rewards.base.GradedReward`: :meth:`grade` keeps the per-criterion
    verdicts that hindsight needs.

    ``mode``: ``dense`` (weighted fraction met, default) or ``strict`` (1 if all met). Judged
    criteria go to ``judge`` (an object with ``verdicts(items)``, see
    :mod:`explorl.rewards.judge`); a sample the judge could not grade gets ``NaN`` (masked).
    Completions that repeat themselves degenerately score 0, as the reference verifier does.
    """

    __name__ = "rubric"

    def __init__(self, mode: str = "dense", judge=None, rubric_fn: Callable | None = None):
        self.mode, self.judge, self.rubric_fn = mode, judge, rubric_fn

    def rubrics_of(self, n: int, columns: dict) -> list[list[Criterion] | None]:
        if self.rubric_fn is not None:
            rows = [{k: v[i] for k, v in columns.items()} for i in range(n)]
            return [parse_rubric(self.rubric_fn(r), "rubric_fn") for r in rows]
        raw = columns.get("rubric") or [None] * n
        return [r if r is None or _is_parsed(r) else parse_rubric(r, "rubric") for r in raw]

    def grade(self, prompts: list, completions: list, completion_ids=None,
              **columns) -> list[Grade | None]:
        """Per completion, its :class:`Grade` against its row's rubric (``None``: no rubric, or
        the judge could not grade it)."""
        rubrics = self.rubrics_of(len(completions), columns)
        texts = [_written(c) for c in completions]
        grades: list[Grade | None] = []
        judged: list[tuple[int, list[int]]] = []
        for i, (text, rubric) in enumerate(zip(texts, rubrics)):
            if rubric is None:
                grades.append(None)
                continue
            verdicts = [False if c.judged else c.met(text) for c in rubric]
            if degenerate(text):
                verdicts = [False] * len(rubric)
            elif any(c.judged for c in rubric):
                judged.append((i, [j for j, c in enumerate(rubric) if c.judged]))
            grades.append(Grade(verdicts, [c.weight for c in rubric]))
        if judged:
            self._ask_judge(prompts, texts, rubrics, grades, judged)
        return grades

    def _ask_judge(self, prompts, texts, rubrics, grades, judged) -> None:
        if self.judge is None:
            raise UserError("rubric: a criterion has check 'judge' but no judge is configured "
                            "(set judge.url and judge.model, or judge.local_model)")
        from explorl.rewards.judge import JudgeItem

        items = [JudgeItem(_text(prompts[i]), texts[i],
                           [(rubrics[i][j].description, rubrics[i][j].weight) for j in js])
                 for i, js in judged]
        for (i, js), verdicts in zip(judged, self.judge.verdicts(items)):
            if verdicts is None:
                grades[i] = None  # unknown: masked, not silently 0
                continue
            for j, v in zip(js, verdicts):
                grades[i].verdicts[j] = bool(v)

    def value(self, grade: Grade | None) -> float:
        if grade is None:
            return math.nan
        return grade.strict if self.mode == "strict" else grade.dense

    def __call__(self, prompts, completions, completion_ids=None, **columns) -> list[float]:
        return [self.value(g) for g in self.grade(prompts, completions, **columns)]


def _is_parsed(rubric) -> bool:
    return isinstance(rubric, list) and all(isinstance(c, Criterion) for c in rubric)


def _text(x) -> str:
    """Plain text of a prompt or completion in either TRL layout."""
    if isinstance(x, list):
        return "\n".join(m["content"] for m in x)
    return x


def _written(completion) -> str:
    """What the model wrote: a completion's text, or its assistant messages' (an episode's
    tool answers are not the model's to be graded on)."""
    if isinstance(completion, list):
        return "\n".join(m["content"] for m in completion if m.get("role") == "assistant")
    return completion


def degenerate(text: str, max_repeats: int = 8) -> bool:
    """A unit of 1-4 characters repeated back to back more than ``max_repeats`` times."""
    return re.search(rf"(.{{1,4}}?)\1{{{max_repeats},}}", text, re.S) is not None


__all__ = ["RULES", "Criterion", "Grade", "RubricReward", "parse_rubric"]
