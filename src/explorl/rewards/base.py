"""Reward functions with TRL's signature, and calling several of them safely.

``fn(prompts, completions, completion_ids=None, **columns) -> list[float | None]``. As in TRL, a
``None`` means the function does not apply to that sample; the weighted sum skips it. A function
that raises, returns the wrong number of values, or returns NaN/inf makes the affected samples'
rewards unknown: they are masked out of the advantage and the loss, and counted.

A graded reward (:class:`GradedReward`, e.g. a rubric) also says which criteria each completion
met; the first one's grades travel with the rewards, for hindsight.
"""

from __future__ import annotations

import importlib
import inspect
import math
import threading
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import torch

from explorl.batch import Rewards
from explorl.data.loaders import columns_of
from explorl.errors import UserError

BUILTIN = {
    "arithmetic": "explorl.data.arithmetic:exact_match_reward",
    "math_verify": "explorl.rewards.math:math_verify_reward",
    "code": "explorl.rewards.code:code_reward",
    "gym": "explorl.data.gym:gym_reward",
    "gym_exact": "explorl.data.gym:gym_exact_reward",
    "champ": "explorl.data.champ:champ_reward",
    "calculator": "explorl.data.calculator:calculator_reward",
    "tool_cost": "explorl.data.calculator:tool_cost",
}


def resolve(spec, device: str | torch.device = "cpu") -> tuple[str, Callable]:
    """A callable, a built-in name, ``module:function`` or a reward model's folder ->
    (name, callable); a reward model runs on ``device`` (the policy's)."""
    if callable(spec):
        return getattr(spec, "__name__", type(spec).__name__), spec
    from explorl.rewards.reward_model import RewardModel, is_reward_model_path

    if is_reward_model_path(spec):
        return "reward_model", RewardModel(spec, device=device)
    if not isinstance(spec, str):
        raise UserError(f"reward_funcs: {spec!r} is not a callable or a 'module:function' string")
    target = BUILTIN.get(spec, spec)
    if ":" not in target:
        raise UserError(f"reward_funcs: {spec!r}: expected 'module:function' or one of "
                        f"{', '.join(BUILTIN)}")
    module_name, attr = target.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - any import failure is the user's to fix
        raise UserError(f"reward_funcs: cannot import {module_name!r} "
                        f"({type(e).__name__}: {e})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise UserError(f"reward_funcs: {module_name!r} has no function {attr!r}")
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # not introspectable: its first call will tell
        return (spec if spec in BUILTIN else attr), fn
    positional = [p for p in params.values() if p.kind in (p.POSITIONAL_ONLY,
                                                            p.POSITIONAL_OR_KEYWORD)]
    if len(positional) < 2 and not any(
            p.kind == p.VAR_POSITIONAL for p in params.values()):
        raise UserError(f"reward_funcs: {spec}: expected fn(prompts, completions, "
                        "completion_ids=None, **columns)")
    return (spec if spec in BUILTIN else attr), fn


@runtime_checkable
class GradedReward(Protocol):
    """A reward that also grades each completion criterion by criterion."""

    def grade(self, prompts: list, completions: list, completion_ids: list | None = None,
              **columns) -> list[Any]:
        """Per completion, a grade with ``verdicts`` (one bool per criterion) and ``num_met``,
        or ``None`` where it could not be graded."""
        ...

    def value(self, grade: Any) -> float:
        """The scalar reward of a grade (NaN for ``None``)."""
        ...


def _call(fn: Callable, n: int, kwargs: dict,
          timeout: float | None = None) -> tuple[list, list | None]:
    """The values of one reward function, and its grades if it is a graded reward. With a
    ``timeout`` the call runs in a daemon thread: past it, :class:`TimeoutError` is raised and
    the call is left to finish (or not) on its own; a hung function never hangs the run."""
    if timeout is None:
        return _values(fn, n, kwargs)
    box: dict = {}

    def run() -> None:
        try:
            box["out"] = _values(fn, n, kwargs)
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = e

    worker = threading.Thread(target=run, daemon=True, name="explorl-reward")
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise TimeoutError(f"no answer within reward_timeout={timeout:g} s (left running)")
    if "error" in box:
        raise box["error"]
    return box["out"]


def _values(fn: Callable, n: int, kwargs: dict) -> tuple[list, list | None]:
    if isinstance(fn, GradedReward):
        grades = list(fn.grade(**kwargs))
        if len(grades) != n:
            raise ValueError(f"graded {len(grades)} of {n} completions")
        return [fn.value(g) for g in grades], grades
    return list(fn(**kwargs)), None


def compute_rewards(funcs: list[tuple[str, Callable]], weights: list[float], prompts: list,
                    completions: list, completion_ids: list[list[int]],
                    columns: dict[str, list], timeout: float | None = None) -> Rewards:
    """Weighted rewards of ``completions``; each function's call may take ``timeout`` seconds."""
    n = len(completions)
    total = torch.zeros(n, dtype=torch.float64)
    applies = torch.zeros(n, dtype=torch.bool)
    bad = torch.zeros(n, dtype=torch.bool)
    per_func, errors, grades, graded_by = {}, [], None, None
    kwargs = dict(prompts=prompts, completions=completions, completion_ids=completion_ids,
                  **columns)
    for (name, fn), w in zip(funcs, weights):
        values = torch.full((n,), math.nan, dtype=torch.float64)
        try:
            out, graded = _call(fn, n, kwargs, timeout)
            if grades is None and graded is not None:
                grades, graded_by = graded, name
            if len(out) != n:
                raise ValueError(f"returned {len(out)} values for {n} completions")
        except Exception as e:  # noqa: BLE001 - a faulty reward must not kill the run
            errors.append(f"{name}: {type(e).__name__}: {e}")
            bad[:] = True
            per_func[name] = values
            continue
        broken = 0
        for i, v in enumerate(out):
            if v is None:
                continue
            try:
                v = float(v)
            except (TypeError, ValueError):
                v = math.nan
            if math.isfinite(v):
                values[i] = v
                total[i] += w * v
                applies[i] = True
            else:
                bad[i] = True
                broken += 1
        if broken:
            errors.append(f"{name}: {broken} non-finite or non-numeric rewards")
        per_func[name] = values
    masked = bad | ~applies
    total[masked] = math.nan
    return Rewards(total.float(), {k: v.float() for k, v in per_func.items()},
                   int(masked.sum()), errors, grades, int(bad.sum()), graded_by)


class Scorer:
    """The run's reward: weighted reward functions over completions, and which samples pass.

    ``funcs`` are (name, function) pairs, ``weights`` one per function; ``codec`` shapes each
    completion as its prompt's layout wants (plain text or a message list); a sample passes when
    the first function gives at least ``threshold``; a call may take ``timeout`` seconds."""

    def __init__(self, funcs: list[tuple[str, Callable]], weights: list[float], codec,
                 threshold: float = 1.0, timeout: float | None = None):
        self.funcs, self.weights, self.codec, self.threshold = funcs, weights, codec, threshold
        self.timeout = timeout

    @property
    def graded(self) -> bool:
        return any(isinstance(fn, GradedReward) for _, fn in self.funcs)

    def __call__(self, rows: list[dict], texts: list[str],
                 completion_ids: list[list[int]]) -> Rewards:
        """Rewards of ``texts``, the completions of ``rows`` (one data row per sample)."""
        prompts = [r["prompt"] for r in rows]
        completions = [self.codec.completion(p, t) for p, t in zip(prompts, texts)]
        return compute_rewards(self.funcs, self.weights, prompts, completions, completion_ids,
                               columns_of(rows), self.timeout)

    def passed(self, rewards: Rewards) -> torch.Tensor:
        """Correct samples: the first reward function at or above the threshold."""
        first = next(iter(rewards.per_func.values()))
        return (first >= self.threshold) & ~first.isnan()
