"""Reward functions with TRL's signature, and calling several of them safely.

``fn(prompts, completions, completion_ids=None, **columns) -> list[float | None]``. As in TRL, a
``None`` means the function does not apply to that sample; the weighted sum skips it. A function
that raises, returns the wrong number of values, or returns NaN/inf makes the affected samples'
rewards unknown: they are masked out of the advantage and the loss, and counted.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from explorl.errors import UserError

BUILTIN = {
    "arithmetic": "explorl.data.arithmetic:exact_match_reward",
    "math_verify": "explorl.rewards.math:math_verify_reward",
    "code": "explorl.rewards.code:code_reward",
    "gym": "explorl.data.gym:gym_reward",
    "gym_exact": "explorl.data.gym:gym_exact_reward",
    "champ": "explorl.data.champ:champ_reward",
}


def resolve(spec) -> tuple[str, Callable]:
    """A callable, a built-in name or ``module:function`` -> (name, callable)."""
    if callable(spec):
        return getattr(spec, "__name__", type(spec).__name__), spec
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


@dataclass
class Rewards:
    total: torch.Tensor  # [N] weighted sum; NaN where the reward is unknown (masked)
    per_func: dict[str, torch.Tensor]  # name -> [N], NaN where None or failed
    masked: int  # samples whose reward is unknown (a function failed, or none applied)
    errors: list[str]  # one line per failure, for the log
    grades: list | None = None  # per-criterion grades of the first rubric reward, if any
    failed: int = 0  # samples where a function raised or gave a non-finite/unusable value


def compute_rewards(funcs: list[tuple[str, Callable]], weights: list[float], prompts: list,
                    completions: list, completion_ids: list[list[int]],
                    columns: dict[str, list]) -> Rewards:
    n = len(completions)
    total = torch.zeros(n, dtype=torch.float64)
    applies = torch.zeros(n, dtype=torch.bool)
    bad = torch.zeros(n, dtype=torch.bool)
    per_func, errors, grades = {}, [], None
    for (name, fn), w in zip(funcs, weights):
        values = torch.full((n,), math.nan, dtype=torch.float64)
        try:
            out = fn(prompts=prompts, completions=completions, completion_ids=completion_ids,
                     **columns)
            if grades is None and getattr(out, "grades", None) is not None:
                grades = out.grades if len(out.grades) == n else None
            out = list(out)
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
                   int(masked.sum()), errors, grades, int(bad.sum()))
