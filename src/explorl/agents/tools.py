"""Tools and environments in TRL's contract, and calling them safely.

``tools`` are plain functions; ``environment_factory`` is a class (or any callable without
arguments) whose instances have ``reset(**row)`` (its return, a string, is an observation added
to the prompt), any number of public methods (the tools of that episode) and optionally
``get_reward()`` (the episode's reward, a float). One instance per episode. A tool's schema, for
chat templates that render tools, comes from its signature and docstring (transformers'
``get_json_schema``).

A call runs in a worker thread: what it raises becomes the observation (``error: ...``,
counted); a call that outlives ``timeout``, or raises :class:`EpisodeFailed`, ends its episode,
which is masked and counted (a hung thread is left to finish on its own: Python cannot stop
it), so the step goes on.
"""

from __future__ import annotations

import concurrent.futures as cf
import inspect
from collections.abc import Callable
from dataclasses import dataclass

from explorl.errors import UserError

NOT_TOOLS = ("reset", "get_reward", "close")


def check_environment(factory) -> None:
    """One line naming the factory when it cannot make environments of the contract."""
    name = getattr(factory, "__name__", repr(factory))
    if not callable(factory):
        raise UserError(f"environment_factory: {name} is not a class or a callable")
    if inspect.isclass(factory):
        if not callable(getattr(factory, "reset", None)):
            raise UserError(f"environment_factory: {name} has no reset() method (the contract: "
                            "reset(**row), public methods as tools, optional get_reward())")
        if not any(True for _ in public_methods(factory)):
            raise UserError(f"environment_factory: {name} has no public method to serve as a "
                            "tool")


def public_methods(obj) -> list[tuple[str, Callable]]:
    """``obj``'s public methods other than the contract's own: the tools it offers."""
    return [(name, fn) for name, fn in inspect.getmembers(obj, callable)
            if not name.startswith("_") and name not in NOT_TOOLS
            and (inspect.ismethod(fn) or inspect.isfunction(fn))]


def tools_of(functions: list[Callable], environment=None) -> dict[str, Callable]:
    """The tools of one episode by name: the plain functions and the environment's methods."""
    tools = {fn.__name__: fn for fn in functions}
    if environment is not None:
        tools.update(public_methods(environment))
    return tools


def schemas(tools: dict[str, Callable]) -> list[dict]:
    """JSON schemas of the tools, as chat templates take them."""
    from transformers.utils import get_json_schema

    return [get_json_schema(fn) for fn in tools.values()]


class EpisodeFailed(Exception):
    """Raised by a tool (or ``reset``) when its episode cannot go on: the environment is gone.
    The episode ends, masked and counted."""


@dataclass
class CallResult:
    """What a tool call gave: the observation text, whether it failed, and whether its episode
    must end without a reward (the call hung, or raised :class:`EpisodeFailed`)."""

    text: str
    error: bool = False
    fatal: bool = False


def error_text(message: str) -> str:
    return f"error: {message}"


class ToolRunner:
    """Runs the calls of a turn concurrently, each at most ``timeout`` seconds."""

    def __init__(self, timeout: float | None = 30.0, workers: int = 16):
        self.timeout = timeout
        self.pool = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tool")

    def run(self, calls: list[tuple[Callable | None, str, dict]]) -> list[CallResult]:
        """``(function, name, arguments)`` per call (function None: no such tool); results
        in order. The turn waits for the slowest call, at most ``timeout``."""
        futures = [self.pool.submit(fn, **args) if fn is not None else None
                   for fn, _, args in calls]
        done = cf.wait([f for f in futures if f is not None], timeout=self.timeout)[0]
        out = []
        for (_, name, _), future in zip(calls, futures):
            if future is None:
                out.append(CallResult(error_text(f"unknown tool {name!r}"), error=True))
            elif future not in done:
                out.append(CallResult(error_text(f"{name} timed out"), error=True, fatal=True))
            elif isinstance(future.exception(), EpisodeFailed):
                out.append(CallResult(error_text(str(future.exception())), error=True,
                                      fatal=True))
            elif future.exception() is not None:
                out.append(CallResult(error_text(str(future.exception())), error=True))
            else:
                out.append(CallResult(str(future.result())))
        return out


def load_object(field: str, spec):
    """``spec`` itself when it is callable, else the object a ``module:name`` string names."""
    import importlib

    if callable(spec):
        return spec
    if not isinstance(spec, str) or ":" not in spec:
        raise UserError(f"{field}: {spec!r}: expected a callable or a 'module:name' string")
    module_name, attr = spec.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - any import failure is the user's to fix
        raise UserError(f"{field}: cannot import {module_name!r} ({type(e).__name__}: {e})") \
            from None
    obj = getattr(module, attr, None)
    if not callable(obj):
        raise UserError(f"{field}: {module_name!r} has no callable {attr!r}")
    return obj
